"""One real answer from a checkpoint through ``onellm serve``'s vLLM engine, without the HTTP server.

    serve_once(checkpoint, "shape.png", "What colour is the shape?")  ->  "The shape is red."

The same path as a chat request to ``onellm serve`` (default engine): the image goes in as a ``file:`` URL part,
:func:`~onellm.serving.chat.parse_chat` decodes and preprocesses it once with the checkpoint's processor and
renders the prompt, the vLLM engine (``AsyncLLM`` + the onellm plugin, which loads the checkpoint) answers
greedily, and the engine stops. ``onellm demo`` ends with it on its final checkpoint: train -> evaluate -> serve.
Costs one engine start (~45 s on 2 CPU cores).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from onellm.processing import OneLLMProcessor
from onellm.serving.engines import Engine, EngineSettings, GenerationRequest, SamplingSettings, build_engine
from onellm.serving.errors import APIError

# vLLM's CPU backend otherwise reserves most of the machine's RAM for its KV cache (and refuses to start when other
# processes hold it); 1 GiB holds thousands of short prompts. Only a default: a value in the environment wins.
CPU_KVCACHE_GIB = "1"


def serve_once(
    checkpoint: str | Path, image_path: str | Path, question: str, max_tokens: int = 32, dtype: str = "auto"
) -> str:
    """Start the vLLM engine on ``checkpoint``, answer ``question`` about the image at ``image_path`` (greedy, at
    most ``max_tokens`` tokens), stop the engine and return the answer's text.

    ``dtype``: as ``onellm serve --dtype`` (``auto``: vLLM's choice, bfloat16 for a float32 checkpoint on the CPU,
    except where bf16 is emulated: ``vllm_engine.serving_dtype``).
    Raises ``FileNotFoundError`` for a missing checkpoint or image, ``ValueError`` naming the image when it cannot be
    used (not an image, too large).
    """
    from transformers import AutoProcessor

    import onellm  # noqa: F401  (Auto-class registration)

    checkpoint, image = Path(checkpoint).resolve(), Path(image_path).resolve()
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"serve_once: {checkpoint} is not a checkpoint folder (no config.json)")
    if not image.is_file():
        raise FileNotFoundError(f"serve_once: image {image} does not exist")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    engine = build_engine("vllm", EngineSettings(checkpoint=checkpoint, dtype=dtype, max_inputs_per_request=1))
    return asyncio.run(answer_image(engine, processor, image, question, max_tokens))


async def answer_image(engine: Engine, processor: OneLLMProcessor, image: Path, question: str, max_tokens: int) -> str:
    """``question`` about ``image`` on ``engine`` (any registered engine, not started): parse as ``onellm serve``
    does, start, answer greedily, stop. ``serve_once`` runs it on the vLLM engine; the tests on the hf engine too."""
    from onellm.serving.chat import parse_chat
    from onellm.serving.media import MediaFetcher, MediaPolicy

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image.as_uri()}},
                {"type": "text", "text": question},
            ],
        }
    ]
    try:
        chat = await parse_chat(messages, processor, MediaFetcher(MediaPolicy(allowed_local_path=image.parent)), 1)
    except APIError as exc:
        raise ValueError(f"serve_once: {image}: {exc.message}") from None
    request = GenerationRequest("serve-once", chat, SamplingSettings(max_tokens=max_tokens, temperature=0.0))
    await engine.start()
    try:
        pieces = [delta.text async for deltas in engine.generate(request) for delta in deltas]
    finally:
        await engine.stop()
    return "".join(pieces)


__all__ = ["answer_image", "serve_once"]
