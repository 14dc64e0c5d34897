"""In-process backend: the checkpoint loaded with transformers, batched ``model.generate``.

This is the reference path (the vLLM and HTTP backends must agree with it): ``OneLLMProcessor`` renders the chat
template, preprocesses every input and expands each marker to its placeholder tokens; the batch is left-padded so
every row's generated tokens start at the same position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from onellm.eval.backends.base import Backend, GenerationConfig, Request, checkpoint_dir, register_backend

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_backend("hf")
class HFBackend(Backend):
    """Args:
    model: checkpoint folder (``save_pretrained`` output: config.json, model.safetensors, processor files).
    dtype: ``auto`` (float32 on CPU, bfloat16 on CUDA), ``float32``, ``bfloat16`` or ``float16``.
    device: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
    """

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import onellm  # noqa: F401  (registers the onellm classes with the transformers Auto classes)

        path = checkpoint_dir(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
        self.model_path, self.dtype = str(path), dtype
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype]).to(self.device).eval()
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_path, "dtype": self.dtype, "device": str(self.device)}

    @torch.inference_mode()
    def generate(self, requests: Sequence[Request], generation: GenerationConfig) -> list[str]:
        if not requests:
            return []
        prompts = [self.processor.apply_chat_template(request.messages()) for request in requests]
        media: dict[str, list[Any]] = {}
        for request in requests:  # the processor wants each modality's inputs in marker order, sample by sample
            for item in request.media:
                media.setdefault(item.modality, []).append(item.processor_item())
        batch = self.processor(text=prompts, padding_side="left", **media)
        mm_inputs = {m: t.to(self.device, self.model.dtype) for m, t in batch["mm_inputs"].items()}
        sampling: dict[str, Any] = {"do_sample": False}
        if not generation.greedy:
            sampling = {"do_sample": True, "temperature": generation.temperature, "top_p": generation.top_p}
        output = self.model.generate(
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
            mm_inputs=mm_inputs,
            max_new_tokens=generation.max_new_tokens,
            pad_token_id=self.pad_token_id,
            **sampling,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
