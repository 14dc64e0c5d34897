"""OpenAI chat messages -> one prompt (token ids, one marker per input) + each input preprocessed once.

Content parts, by ``type`` (docs/api.md has the JSON of each):

| part type           | modality | payload                                                      |
|---------------------|----------|--------------------------------------------------------------|
| text                | -        | ``{"text": str}``                                            |
| image_url           | image    | ``{"url": data:/http(s):/file: URL}``                        |
| input_audio         | audio    | ``{"data": base64, "format": "wav"|"mp3"|...}``              |
| audio_url           | audio    | ``{"url": ...}``                                             |
| video_url           | video    | ``{"url": ...}``                                             |
| input_point_cloud   | point    | ``{"data": base64 .npy/.ply}`` or ``{"url": ...}``           |
| input_depth         | depth    | ``{"data": base64 .png/.npy}`` or ``{"url": ...}``           |
| input_normal        | normal   | ``{"data": base64 .png/.npy}`` or ``{"url": ...}``           |
| input_imu           | imu      | ``{"data": base64 .npy/.csv, "format", "sample_rate"}``      |
| input_fmri          | fmri     | ``{"data": base64 .npy}`` or ``{"url": ...}``                |

Every input is fetched/decoded and preprocessed exactly once, here, by ``OneLLMProcessor.preprocess``; the engines
receive the tensors. The bytes go to the modality as they came: nothing here parses a file format, so a part is read
by the same code as the file on disk (a ``"format": "csv"`` part as a ``.csv`` file, see :func:`_preprocess`).
Errors are 4xx :class:`APIError` naming the field (``messages[0].content[1].image_url``).
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onellm.modalities import MediaError, get_modality, modality_names
from onellm.processing import OneLLMProcessor
from onellm.serving.engines import ParsedChat
from onellm.serving.errors import APIError, bad_request
from onellm.serving.media import MediaFetcher, decode_base64


def part_types() -> dict[str, str]:
    """Content part type -> modality, from the registered modalities' ``part_types`` (a modality file declares the
    parts it arrives in; nothing here lists them)."""
    return {part: m for m in modality_names() for part in get_modality(m).content_parts}


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class _PendingInput:
    modality: str
    param: str
    payload: dict[str, Any]


def _payload(part: dict, part_type: str, param: str) -> dict[str, Any]:
    payload = part.get(part_type)
    if isinstance(payload, str) and part_type.endswith("_url"):
        payload = {"url": payload}  # some clients send image_url as a bare string
    if not isinstance(payload, dict):
        raise bad_request(f"{param}: expected an object with 'url' or 'data'", param)
    if ("url" in payload) == ("data" in payload):
        raise bad_request(f"{param}: give exactly one of 'url' or 'data'", param)
    return payload


async def _load(pending: _PendingInput, fetcher: MediaFetcher, processor: OneLLMProcessor) -> torch.Tensor:
    payload, param, modality = pending.payload, pending.param, pending.modality
    policy = fetcher.policy
    if "url" in payload:
        data = await fetcher.fetch(payload["url"], f"{param}.url")
    else:
        if not isinstance(payload["data"], str):
            raise bad_request(f"{param}.data: expected a base64 string", f"{param}.data")
        data = decode_base64(payload["data"], f"{param}.data", policy.max_bytes)
    problem = get_modality(modality).precheck(data, policy.limits())
    if problem:
        raise bad_request(f"{param}: {problem}", param)
    extras = {}
    if "sample_rate" in payload and "sample_rate" not in get_modality(modality).extra_keys:
        raise bad_request(f"{param}.sample_rate: {modality} inputs take no sample rate", f"{param}.sample_rate")
    if "sample_rate" in payload:
        rate = payload["sample_rate"]
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
            raise bad_request(f"{param}.sample_rate: expected a positive number, got {rate!r}", f"{param}.sample_rate")
        extras["sample_rate"] = float(rate)
    fmt = str(payload.get("format", "")).lower() or _url_format(payload.get("url"))

    try:
        tensor = await asyncio.to_thread(_preprocess, processor, modality, data, fmt, extras or None)
    except MediaError as exc:
        raise bad_request(f"{param}: {exc.problem}", param) from None
    except (ValueError, TypeError) as exc:
        raise bad_request(f"{param}: unusable {modality} input ({exc})", param) from None
    if not torch.isfinite(
        tensor
    ).all():  # e.g. float32 statistics of values near 3e38 overflow; NaN would reach the LLM
        raise bad_request(f"{param}: the {modality} input gives non-finite values after preprocessing", param)
    return tensor


def _url_format(url: Any) -> str:
    """The format a URL announces when the part gives none: ``csv`` for ``data:text/csv`` or a path ending in
    ``.csv`` (CSV has no signature in its bytes), else "" (binary formats are recognised from their bytes)."""
    if not isinstance(url, str):
        return ""
    if url[:5].lower() == "data:":
        mime = url[5:].split(",", 1)[0].split(";", 1)[0].strip().lower()
        return "csv" if mime in ("text/csv", "application/csv") else ""
    return "csv" if urllib.parse.urlparse(url).path.lower().endswith(".csv") else ""


def _preprocess(processor: OneLLMProcessor, modality: str, data: bytes, fmt: str, extras: dict | None) -> torch.Tensor:
    """``processor.preprocess`` of one part's bytes; ``fmt`` is the part's ``format`` (lower case, "" if none).

    The modality reads its formats itself (its header row, its one-row table, its timestamp column). Binary formats
    announce themselves in their first bytes (PNG, WAV, ``.npy``), so the bytes are handed over as they are. CSV
    has no such signature: a modality tells a CSV from its other formats by the file's suffix, so a CSV part is
    handed over as a ``.csv`` file in a private temporary folder, removed once read (a :class:`MediaError` is
    answered with its ``problem``, which names the part's fault, not that folder)."""
    if fmt != "csv":
        return processor.preprocess(modality, data, extras)
    with tempfile.TemporaryDirectory(prefix="onellm-part-") as folder:
        path = Path(folder) / "input.csv"
        path.write_bytes(data)
        return processor.preprocess(modality, path, extras)


async def parse_chat(
    messages: list[dict[str, Any]],
    processor: OneLLMProcessor,
    fetcher: MediaFetcher,
    max_inputs: int,
) -> ParsedChat:
    """Validate ``messages``, load and preprocess every media input once, render and tokenise the prompt."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: expected a non-empty list", "messages")
    markers = {get_modality(m).marker: m for m in processor.modalities}
    known = part_types()
    rendered: list[dict[str, Any]] = []
    pending: list[_PendingInput] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where}: expected an object with 'role' and 'content'", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"{where}.role: unsupported role {role!r}; supported: {sorted(ROLES)}", f"{where}.role")
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            _check_text(content, markers, f"{where}.content")
            rendered.append({"role": ROLES[role], "content": content})
            continue
        if not isinstance(content, list):
            raise bad_request(f"{where}.content: expected a string or a list of parts", f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            param = f"{where}.content[{j}]"
            part_type = part.get("type") if isinstance(part, dict) else None
            if part_type == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"{param}.text: expected a string", f"{param}.text")
                _check_text(text, markers, f"{param}.text")
                parts.append({"type": "text", "text": text})
                continue
            if not isinstance(part_type, str) or part_type not in known:
                raise bad_request(
                    f"{param}.type: unknown content part type {part_type!r}; supported: {['text', *known]}",
                    f"{param}.type",
                )
            modality = known[part_type]
            if modality not in processor.modalities:
                raise bad_request(
                    f"{param}: this model does not take {modality} inputs ({part_type}); it takes: {processor.modalities}",
                    param,
                )
            pending.append(
                _PendingInput(modality, f"{param}.{part_type}", _payload(part, part_type, f"{param}.{part_type}"))
            )
            parts.append({"type": modality})
        rendered.append({"role": ROLES[role], "content": parts})
    if len(pending) > max_inputs:
        raise bad_request(
            f"messages: {len(pending)} media inputs, the server accepts at most {max_inputs} per request", "messages"
        )
    # Fetch and preprocess concurrently; the first failure (in part order) is the one reported.
    results = await asyncio.gather(*(_load(p, fetcher, processor) for p in pending), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    prompt = processor.apply_chat_template(rendered)
    prompt_ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    counts = processor.count_markers(prompt_ids)
    for modality in processor.modalities:
        given = sum(1 for p in pending if p.modality == modality)
        if counts[modality] != given:  # the template must place exactly one marker per input
            raise APIError(500, f"prompt holds {counts[modality]} {modality} marker(s) for {given} input(s)")
    return ParsedChat(
        prompt_ids=list(prompt_ids),
        expanded_ids=processor.expand_placeholders(prompt_ids),
        inputs=[(p.modality, t) for p, t in zip(pending, results, strict=True)],
    )


def _check_text(text: str, markers: dict[str, str], param: str) -> None:
    for marker in markers:
        if marker in text:
            raise bad_request(
                f"{param}: text contains {marker!r}, which is reserved for {markers[marker]} inputs; "
                f"send media as content parts",
                param,
            )
