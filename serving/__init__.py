"""Serving: the vLLM plugin (model + processor classes), the OpenAI-compatible server, and its engines (vllm, hf).

- :mod:`onellm.serving.plugin` — vLLM ``general_plugins`` entry point (registers the architecture).
- :mod:`onellm.serving.vllm_model` — the vLLM model, processing info, dummy inputs, data parser, processor.
- :mod:`onellm.serving.cli` — ``onellm serve``: routes in :mod:`.app`, the chat service they and the chat page
  (:mod:`.ui`) call in :mod:`.service`, request and response models in :mod:`.protocol`, engines in :mod:`.engines`.
"""
