"""Real answers from a checkpoint through ``onellm serve``'s vLLM engine, without the HTTP server.

    serve_once(checkpoint, "shape.png", "What colour is the shape?")  ->  "The shape is red."
    serve_questions(checkpoint, [Ask("image", png, q1), Ask("audio", wav, q2)])  ->  [answer 1, answer 2]
    serve_answers(checkpoint, asks, top=2)  ->  [Answer(text, tokens with the engine's two likeliest at each), ...]

The same path as a chat request to ``onellm serve`` (default engine): each input goes in as the content part a
client sends for its modality (a ``file:`` URL for images and video, the file inline as ``{"data", "format"}`` for
audio and the rest), :func:`~onellm.serving.chat.parse_chat` decodes and preprocesses it with the checkpoint's
processor and renders the prompt, the vLLM engine (``AsyncLLM`` + the onellm plugin, which loads the checkpoint)
answers greedily, and the engine stops. ``onellm demo`` ends with it on its final checkpoint: train -> evaluate ->
serve. Costs one engine start (~45 s on 2 CPU cores) for all the questions.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onellm.processing import OneLLMProcessor
from onellm.serving.engines import (
    Engine,
    EngineSettings,
    GenerationRequest,
    SamplingSettings,
    TokenLogprob,
    build_engine,
)
from onellm.serving.errors import APIError

# vLLM's CPU backend otherwise reserves most of the machine's RAM for its KV cache (and refuses to start when other
# processes hold it); 1 GiB holds thousands of short prompts. Only a default: a value in the environment wins.
CPU_KVCACHE_GIB = "1"


def serve_once(
    checkpoint: str | Path, image_path: str | Path, question: str, max_tokens: int = 32, dtype: str = "auto"
) -> str:
    """Start the vLLM engine on ``checkpoint``, answer ``question`` about the image at ``image_path`` (greedy, at
    most ``max_tokens`` tokens), stop the engine and return the answer's text (:func:`serve_questions` for one
    image).

    ``dtype``: as ``onellm serve --dtype`` (``auto``: vLLM's choice, bfloat16 for a float32 checkpoint on the CPU,
    except where bf16 is emulated: ``vllm_engine.serving_dtype``).
    Raises ``FileNotFoundError`` for a missing checkpoint or image, ``ValueError`` naming the image when it cannot be
    used (not an image, too large).
    """
    return serve_questions(checkpoint, [Ask("image", Path(image_path), question)], max_tokens, dtype)[0]


@dataclass(frozen=True)
class Ask:
    """One question about one input file of ``modality`` (an image, a WAV file, a point cloud's ``.npy``, ...)."""

    modality: str
    path: Path
    question: str
    sample_rate: float | None = None  # for the modalities that take one (IMU, time series) from a headerless file


@dataclass(frozen=True)
class Answer:
    """A greedy answer's text and, when asked for, each generated token with the engine's likeliest alternatives."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()


def serve_questions(
    checkpoint: str | Path, asks: Sequence[Ask], max_tokens: int = 32, dtype: str = "auto"
) -> list[str]:
    """:func:`serve_once` for several questions, each about one input of any modality, on one engine start: the
    answers in the order of ``asks``. A missing file raises ``FileNotFoundError`` and an unusable one ``ValueError``
    naming it, both before the engine starts."""
    return [answer.text for answer in serve_answers(checkpoint, asks, max_tokens, dtype)]


def serve_answers(
    checkpoint: str | Path, asks: Sequence[Ask], max_tokens: int = 32, dtype: str = "auto", top: int | None = None
) -> list[Answer]:
    """:func:`serve_questions` with each answer's tokens and, for each, the engine's ``top`` likeliest tokens and
    their log-probabilities (``top=None``: the texts alone)."""
    from transformers import AutoProcessor

    import onellm  # noqa: F401  (Auto-class registration)

    checkpoint = Path(checkpoint).resolve()
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"serve_once: {checkpoint} is not a checkpoint folder (no config.json)")
    asks = [Ask(a.modality, Path(a.path).resolve(), a.question, a.sample_rate) for a in asks]
    for ask in asks:
        if not ask.path.is_file():
            raise FileNotFoundError(f"serve_once: {ask.modality} {ask.path} does not exist")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    engine = build_engine("vllm", EngineSettings(checkpoint=checkpoint, dtype=dtype, max_inputs_per_request=1))
    return asyncio.run(answer_tokens(engine, processor, asks, max_tokens, top))


async def answer_image(engine: Engine, processor: OneLLMProcessor, image: Path, question: str, max_tokens: int) -> str:
    """``question`` about ``image`` on ``engine`` (any registered engine, not started): :func:`answer_all`."""
    return (await answer_all(engine, processor, [Ask("image", image, question)], max_tokens))[0]


def content_part(ask: Ask) -> dict:
    """The chat content part a client sends for ``ask``'s file: its modality's first part type, a ``file:`` URL for
    URL parts (``image_url``, ``video_url``), else the file inline (``{"data": base64, "format": suffix}``)."""
    from onellm.modalities import get_modality

    modality = get_modality(ask.modality)
    part = modality.content_parts[0]
    if modality.url_part:
        return {"type": part, part: {"url": ask.path.as_uri()}}
    body = {
        "data": base64.b64encode(ask.path.read_bytes()).decode("ascii"),
        "format": ask.path.suffix.lstrip(".").lower(),
    }
    if ask.sample_rate is not None and "sample_rate" in modality.extra_keys:
        body["sample_rate"] = ask.sample_rate
    return {"type": part, part: body}


async def answer_all(engine: Engine, processor: OneLLMProcessor, asks: Sequence[Ask], max_tokens: int) -> list[str]:
    """Each of ``asks`` on ``engine`` (any registered engine, not started), parsed as ``onellm serve`` parses a chat
    request; start, answer greedily one after the other, stop. ``serve_questions`` runs it on the vLLM engine; the
    tests on the hf engine too."""
    return [answer.text for answer in await answer_tokens(engine, processor, asks, max_tokens)]


async def answer_tokens(
    engine: Engine, processor: OneLLMProcessor, asks: Sequence[Ask], max_tokens: int, top: int | None = None
) -> list[Answer]:
    """:func:`answer_all` with each generated token and the engine's ``top`` likeliest tokens at its position."""
    from onellm.serving.chat import parse_chat
    from onellm.serving.media import MediaFetcher, MediaPolicy

    requests = []
    for n, ask in enumerate(asks):
        messages = [{"role": "user", "content": [content_part(ask), {"type": "text", "text": ask.question}]}]
        fetcher = MediaFetcher(MediaPolicy(allowed_local_path=ask.path.parent))
        try:
            chat = await parse_chat(messages, processor, fetcher, 1)
        except APIError as exc:
            raise ValueError(f"serve_once: {ask.path}: {exc.message}") from None
        requests.append(
            GenerationRequest(
                f"serve-once-{n}", chat, SamplingSettings(max_tokens=max_tokens, temperature=0.0, logprobs=top)
            )
        )
    await engine.start()
    try:
        answers = []
        for request in requests:
            deltas = [delta async for batch in engine.generate(request) for delta in batch]
            text = "".join(delta.text for delta in deltas)
            answers.append(Answer(text, tuple(token for delta in deltas for token in delta.logprobs)))
    finally:
        await engine.stop()
    return answers
