"""Generation backends for evaluation, registered by name.

    from onellm.eval.backends import get_backend
    backend = get_backend("hf", model="ckpt")          # in-process transformers
    backend = get_backend("vllm", model="ckpt")        # vLLM offline engine (onellm plugin)
    backend = get_backend("openai", api="http://127.0.0.1:8000/v1", api_key="...")   # any OpenAI-compatible server

Every module in this folder is imported here, so a backend registers itself by existing (heavy dependencies such
as vLLM are imported only when a backend is constructed).
"""

import importlib
import pkgutil

from onellm.eval.backends.base import (
    Backend,
    BackendError,
    GenerationConfig,
    MediaItem,
    Request,
    backend_names,
    get_backend,
    register_backend,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Backend",
    "BackendError",
    "GenerationConfig",
    "MediaItem",
    "Request",
    "backend_names",
    "get_backend",
    "register_backend",
]
