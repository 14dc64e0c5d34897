"""The backend contract, its registry, and the request types every backend receives.

A backend turns a batch of :class:`Request` (media + one user text) into one generated string each. It knows
nothing about tasks, prompts or metrics: the runner renders the prompt from the task YAML, batches the requests
and scores what comes back. Backends register by name (``@register_backend("hf")``); the CLI picks one with
``--model`` (``hf`` or ``--backend vllm``) or ``--api`` (``openai``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from onellm.registry import Registry


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings of a task (the ``generation:`` block of its YAML).

    ``temperature == 0`` means greedy decoding (the default: benchmark numbers must be reproducible).
    ``stop`` strings end the answer; every backend also cuts its output at the first of them, so a backend
    that ignores them server-side still yields the same prediction.
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(self.stop),
        }


@dataclass(frozen=True)
class MediaItem:
    """One modality input of a request: an absolute file path or an inline array, plus per-input facts.

    ``extras`` carries what the modality's preprocessing needs besides the data (e.g. ``sample_rate`` of an
    IMU array); the processor receives it as ``{"source": ..., **extras}``.
    """

    modality: str
    source: str | np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)

    def processor_item(self) -> Any:
        """The item as ``OneLLMProcessor.__call__`` (and the vLLM plugin) accept it."""
        return {"source": self.source, **self.extras} if self.extras else self.source

    def describe(self) -> str:
        if isinstance(self.source, np.ndarray):
            return f"<{self.modality} array {list(self.source.shape)}>"
        return str(self.source)


@dataclass(frozen=True)
class Request:
    """One generation request: the inputs, placed before the text in the user turn (``<image>\\n{text}``),
    after a system turn when ``system`` is set (``onellm eval --system-instruction``)."""

    id: str
    text: str
    media: tuple[MediaItem, ...] = ()
    system: str | None = None

    def messages(self) -> list[dict[str, Any]]:
        """The request as HF-style chat turns: the system turn if any, then one user turn holding a part per input
        (``{"type": "image"}``), then the text."""
        parts: list[dict[str, Any]] = [{"type": item.modality} for item in self.media]
        parts.append({"type": "text", "text": self.text})
        return [*self.system_turn(), {"role": "user", "content": parts}]

    def system_turn(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system is not None else []


class BackendError(RuntimeError):
    """A backend could not produce an answer (server error after retries, engine failure, ...)."""


class Backend(ABC):
    """Generates answers for batches of requests. Subclasses register with ``@register_backend(name)``."""

    name: ClassVar[str] = ""

    @abstractmethod
    def generate(self, requests: Sequence[Request], generation: GenerationConfig) -> list[str]:
        """One raw answer per request, in order (stop strings may still be present; the runner cuts them)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What produced the answers, for results.json: ``{"backend": ..., "model": ..., **arguments}``."""

    def close(self) -> None:  # noqa: B027  (optional hook: most backends hold nothing to release)
        """Release the model / engine / connection pool. Idempotent."""


_REGISTRY: Registry[type[Backend]] = Registry("backend")

BackendT = TypeVar("BackendT", bound=type[Backend])


def register_backend(name: str) -> Callable[[BackendT], BackendT]:
    """Class decorator: make ``cls`` available as ``get_backend(name)``; a second class under one name is an error."""

    def decorate(cls: BackendT) -> BackendT:
        _REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return decorate


def get_backend(name: str, **options: Any) -> Backend:
    """Instantiate the backend registered as ``name`` (options go to its constructor)."""
    return _REGISTRY[name](**options)


def backend_names() -> list[str]:
    return _REGISTRY.names()


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (the whole text when none occurs)."""
    cut = len(text)
    for marker in stop:
        if marker:
            index = text.find(marker)
            if index != -1:
                cut = min(cut, index)
    return text[:cut]


def checkpoint_dir(model: str | Path) -> Path:
    """A local checkpoint folder, or a clear error (nothing is downloaded: there is no hub access)."""
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {str(model)!r} is not a checkpoint folder (no config.json there); "
            "pass a folder written by `onellm build` or `save_pretrained`"
        )
    return path
