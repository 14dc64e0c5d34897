"""In-process backend: the checkpoint loaded with transformers, batched ``model.generate``.

This is the reference path (the vLLM and HTTP backends must agree with it): ``OneLLMProcessor`` renders the chat
template, preprocesses every input and expands each marker to its placeholder tokens; the batch is left-padded so
every row's generated tokens start at the same position.

Encoder features are reused across requests: a caption task and the questions about the same inputs, or several
questions about one input in a QA task, run the encoder once per distinct input. How much that saves depends on the
encoder's share of a prefill: on the small preset (DINOv2 ViT-S/14 at 112 px, SmolLM2-135M) the demo's caption and
QA tasks generated in 0.90x the time, most for video (0.71x, several frames per input) (``bench/eval_reuse.py``).
Entries are keyed by the preprocessed tensor's content (never by path), held in memory up to ``feature_cache_mb``
and dropped oldest first.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from onellm.eval.backends.base import Backend, GenerationConfig, Request, checkpoint_dir, register_backend
from onellm.hardware import auto_dtype

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_backend("hf")
class HFBackend(Backend):
    """Args:
    model: checkpoint folder (``save_pretrained`` output: config.json, model.safetensors, processor files).
    dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``. ``auto`` is bfloat16 where bf16 runs natively (a
        GPU that supports it, a CPU with AVX512-BF16 or AMX: what ``onellm serve --dtype auto`` serves there), else
        float32, for a float32 checkpoint (:func:`onellm.hardware.auto_dtype`).
    device: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
    feature_cache_mb: memory for reused encoder features (0: encode every request's inputs afresh).
    """

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None, feature_cache_mb: float = 256):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import onellm  # noqa: F401  (registers the onellm classes with the transformers Auto classes)

        path = checkpoint_dir(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            stored = json.loads((Path(path) / "config.json").read_text()).get("dtype") or "float32"
            dtype = auto_dtype(self.device.type, str(stored))
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
        self.model_path, self.dtype = str(path), dtype
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype]).to(self.device).eval()
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if feature_cache_mb < 0:
            raise ValueError(f"feature_cache_mb must be >= 0, got {feature_cache_mb}")
        self.features = EncoderFeatures(self.model, int(feature_cache_mb * 2**20))

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
        mm_features = {m: self.features(m, values) for m, values in mm_inputs.items()}
        sampling: dict[str, Any] = {"do_sample": False}
        if not generation.greedy:
            sampling = {"do_sample": True, "temperature": generation.temperature, "top_p": generation.top_p}
        output = self.model.generate(
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
            mm_features=mm_features,
            max_new_tokens=generation.max_new_tokens,
            pad_token_id=self.pad_token_id,
            **sampling,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self.features.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class EncoderFeatures:
    """``model.encode`` with reuse: each distinct preprocessed input is encoded once while its features fit in
    ``max_bytes`` (least recently used dropped first). ``hits``/``misses`` count inputs served from memory or
    encoded."""

    def __init__(self, model: torch.nn.Module, max_bytes: int):
        self.model, self.max_bytes = model, max_bytes
        self.entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.bytes = self.hits = self.misses = 0

    @torch.inference_mode()
    def __call__(self, modality: str, values: torch.Tensor) -> torch.Tensor:
        """Preprocessed inputs ``[n, *shape]`` -> encoder features ``[n, 1+L, C]``, as ``model.encode`` gives."""
        if self.max_bytes == 0:
            self.misses += values.shape[0]
            return self.model.encode(modality, values)
        keys = [(modality, _digest(row)) for row in values]
        new: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key not in self.entries and key not in new:
                new[key] = i
        fresh = self.model.encode(modality, values[list(new.values())]) if new else None
        found = {key: fresh[j] for j, key in enumerate(new)} if fresh is not None else {}
        for key in keys:
            if key not in found:
                found[key] = self.entries[key]
                self.entries.move_to_end(key)
        self.hits += len(keys) - len(new)
        self.misses += len(new)
        out = torch.stack([found[key] for key in keys])
        for key in new:
            self._keep(key, found[key])
        return out

    def _keep(self, key: tuple[str, str], features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes:
            return
        self.entries[key] = features.clone()  # own the storage: a view would pin the whole batch's tensor
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


def _digest(row: torch.Tensor) -> str:
    data = row.detach().contiguous().cpu()
    digest = hashlib.blake2b(f"{data.dtype}:{tuple(data.shape)}".encode(), digest_size=16)
    digest.update(data.view(torch.uint8).numpy().tobytes())  # bytes of any dtype, bfloat16 included
    return digest.hexdigest()
