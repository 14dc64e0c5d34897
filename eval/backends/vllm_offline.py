"""vLLM offline engine backend: ``vllm.LLM`` on the checkpoint, through the onellm vLLM plugin.

The plugin (``onellm.serving.plugin``, entry point ``vllm.general_plugins``) registers the architecture and its
multimodal processor in every vLLM process. Prompts are rendered here with the checkpoint's own chat template (one
marker per input) and sent with ``multi_modal_data = {modality: [item, ...]}``; the plugin preprocesses each item
with the checkpoint's processor and expands the markers, so the prompt tokens equal the HF backend's.

vLLM spawns its engine and worker processes: a script that constructs this backend needs an
``if __name__ == "__main__":`` guard (``onellm eval`` and ``python -m onellm.eval.cli`` have one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from onellm.eval.backends.base import Backend, GenerationConfig, Request, checkpoint_dir, register_backend

# vLLM's CPU backend otherwise reserves most of the machine's RAM for its KV cache; 1 GiB holds thousands of
# short evaluation prompts. Only a default: a value in the environment wins.
CPU_KVCACHE_GIB = "1"


@register_backend("vllm")
class VLLMBackend(Backend):
    """Args:
    model: checkpoint folder.
    dtype: passed to ``vllm.LLM`` (``auto``, ``float32``, ``bfloat16``...); ``auto`` as ``onellm serve`` resolves it
        (:func:`onellm.serving.vllm_engine.serving_dtype`: float32 checkpoints stay float32 on CPUs without native
        bf16).
    max_model_len: context length of the engine; default the checkpoint's.
    seed: sampling seed (only matters when a task samples, temperature > 0).
    """

    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None, seed: int = 0):
        path = checkpoint_dir(model)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        from transformers import AutoConfig, AutoProcessor
        from vllm import LLM
        from vllm.platforms import current_platform

        import onellm  # noqa: F401  (AutoProcessor must know the onellm processor class)
        from onellm.serving.plugin import register
        from onellm.serving.vllm_engine import rpc_folder_while_starting, serving_dtype

        register()  # the entry point does this in vLLM's processes; here it also covers a non-installed checkout
        self.model_path, self.dtype, self.max_model_len, self.seed = str(path), dtype, max_model_len, seed
        self.processor = AutoProcessor.from_pretrained(path)
        stored = str(getattr(AutoConfig.from_pretrained(path), "dtype", ""))
        engine_dtype = serving_dtype(dtype, stored, current_platform.is_cpu())
        options: dict[str, Any] = {"model": str(path), "dtype": engine_dtype, "seed": seed}
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        with rpc_folder_while_starting() as self.rpc_folder:  # its sockets go at close() or at exit
            self.llm = LLM(**options)

    def info(self) -> dict[str, Any]:
        import vllm

        return {
            "backend": self.name,
            "model": self.model_path,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "seed": self.seed,
            "vllm_version": vllm.__version__,
        }

    def prompts(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """vLLM prompt dicts: the rendered text + ``multi_modal_data`` (inputs of a modality in marker order)."""
        out = []
        for request in requests:
            media: dict[str, list[Any]] = {}
            for item in request.media:
                media.setdefault(item.modality, []).append(item.processor_item())
            prompt: dict[str, Any] = {"prompt": self.processor.apply_chat_template(request.messages())}
            if media:
                prompt["multi_modal_data"] = media
            out.append(prompt)
        return out

    def generate(self, requests: Sequence[Request], generation: GenerationConfig) -> list[str]:
        from vllm import SamplingParams

        if not requests:
            return []
        params = SamplingParams(
            max_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            stop=list(generation.stop) or None,
            seed=self.seed,
        )
        outputs = self.llm.generate(self.prompts(requests), params, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def close(self) -> None:
        from onellm.serving.vllm_engine import remove_rpc_folder

        llm = getattr(self, "llm", None)
        if llm is not None:
            self.llm = None
            del llm
        remove_rpc_folder(getattr(self, "rpc_folder", None))
        self.rpc_folder = None
