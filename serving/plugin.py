"""vLLM general plugin (entry point group ``vllm.general_plugins``, see pyproject): registers onellm with vLLM.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers), so it must be cheap
and idempotent. The model class is registered lazily by its import path: importing it pulls in vLLM's model
executor, which must not happen before vLLM has picked its platform.
"""

from __future__ import annotations

ARCHITECTURE = "OneLLMForConditionalGeneration"
MODEL_CLASS = "onellm.serving.vllm_model:OneLLMForConditionalGeneration"


def register() -> None:
    """Register the onellm architecture with vLLM's model registry (idempotent)."""
    from vllm import ModelRegistry

    import onellm  # noqa: F401  (the Auto-class registration lets vLLM load config.json with model_type "onellm")

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
