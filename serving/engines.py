"""Generation engines behind ``onellm serve``, registered by name: ``vllm`` (AsyncLLM) and ``hf`` (transformers).

An engine takes a :class:`GenerationRequest` (prompt ids with one marker per input + the preprocessed inputs) and
yields :class:`Delta` s: new text and token ids per choice, and a finish reason at the end. Cancelling the
consuming task aborts the request in the engine (client disconnects, timeouts). An engine whose worker is gone
raises :class:`EngineFailed` and says so in :meth:`Engine.failure` (the server then exits: docs/api.md, Faults).

The types here are all an engine sees; the HTTP layer (:mod:`.chat`, :mod:`.service`) builds them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class ParsedChat:
    """A request's prompt and its inputs, in prompt order (:func:`onellm.serving.chat.parse_chat` builds it)."""

    prompt_ids: list[int]  # one marker token per input (vLLM's processor expands them itself)
    expanded_ids: list[int]  # each marker expanded to N+2 placeholder positions (what the LLM sees)
    inputs: list[tuple[str, torch.Tensor]]  # (modality, preprocessed tensor [*input_shape])

    @property
    def prompt_tokens(self) -> int:
        return len(self.expanded_ids)

    def mm_inputs(self) -> dict[str, torch.Tensor]:
        """``{modality: [n_m, *input_shape]}`` in prompt order, as ``OneLLMForConditionalGeneration`` takes it."""
        grouped: dict[str, list[torch.Tensor]] = {}
        for modality, tensor in self.inputs:
            grouped.setdefault(modality, []).append(tensor)
        return {m: torch.stack(ts) for m, ts in grouped.items()}


@dataclass(frozen=True)
class SamplingSettings:
    """OpenAI's sampling fields, validated. ``temperature == 0`` means greedy, otherwise it is at least 0.01."""

    max_tokens: int
    min_tokens: int = 0  # no end-of-sequence token before this many
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and the k most likely tokens


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model's raw output distribution (before temperature and
    top-p, as vLLM's ``raw_logprobs``) and the ``top`` most likely tokens at its position, most likely first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class GenerationRequest:
    request_id: str
    chat: ParsedChat
    sampling: SamplingSettings
    adapter: str | None = None  # a LoRA adapter name given with --lora, or None for the base model


@dataclass
class Delta:
    """New output of one choice since the previous delta."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" once the choice is done
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token id when the request asked for them


@dataclass(frozen=True)
class EngineSettings:
    """What every engine is built from (the CLI's flags)."""

    checkpoint: Path
    adapters: dict[str, Path] = field(default_factory=dict)  # name -> PEFT adapter folder
    dtype: str = "auto"
    max_model_len: int | None = None
    max_inputs_per_request: int = 8
    seed: int = 0


class EngineFailed(RuntimeError):
    """The engine can no longer generate (its worker process died); only a restart of the server helps."""


class Engine(Protocol):
    name: str

    @property
    def max_model_len(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def num_unfinished(self) -> int:
        """Requests the engine holds (queued or generating); aborted ones must leave promptly."""
        ...

    def failure(self) -> str | None:
        """Why the engine can no longer generate (its worker process died), or None while it can."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[list[Delta]]: ...


_ENGINES: dict[str, str] = {
    "vllm": "onellm.serving.vllm_engine:VLLMEngine",
    "hf": "onellm.serving.hf_engine:HFEngine",
}


def engine_names() -> list[str]:
    return list(_ENGINES)


def default_engine() -> str:
    """``vllm`` when vLLM is importable, otherwise ``hf``."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def build_engine(name: str, settings: EngineSettings) -> Engine:
    """The engine registered as ``name``, built lazily (importing vLLM is slow and optional)."""
    if name not in _ENGINES:
        raise ValueError(f"unknown engine {name!r}; known: {engine_names()}")
    module, cls = _ENGINES[name].split(":")
    factory: Callable[[EngineSettings], Engine] = getattr(importlib.import_module(module), cls)
    return factory(settings)


def adapter_rank(path: Path) -> int:
    """The LoRA rank ``r`` of a PEFT adapter folder (vLLM sizes its LoRA buffers by the largest)."""
    import json

    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"--lora: {path} is not a PEFT adapter folder (no adapter_config.json)")
    config: dict[str, Any] = json.loads(config_file.read_text())
    return int(config.get("r", 8))


def adapter_targets_whole_model(path: Path) -> bool:
    """True when the adapter was trained on the whole onellm model (its weight names hold ``language_model.``),
    False when it was trained on the bare LLM."""
    from safetensors import safe_open

    weights = Path(path) / "adapter_model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), "pt") as handle:
            return any(".language_model." in f".{key}" for key in handle.keys())
    state = torch.load(Path(path) / "adapter_model.bin", map_location="cpu", weights_only=True)
    return any(".language_model." in f".{key}" for key in state)
