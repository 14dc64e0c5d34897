"""Any OpenAI-compatible chat endpoint (``onellm serve``, vLLM's server, a hosted API) as a backend.

Each request is one ``POST {api}/chat/completions`` with a single user message whose content lists the inputs
(before the text, as in the other backends) as base64 data, never as file URLs: the server needs no access to
this machine's files. Content parts, one per modality:

| modality | part |
|---|---|
| image  | ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` (OpenAI) |
| audio  | ``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}`` (OpenAI) |
| video  | ``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`` (vLLM's extension) |
| any other | ``{"type": "input_<name>", "input_<name>": {"data": "<base64>", "format": "npy"}}`` (the file's own format: png, csv, json, ...) |

(``input_point_cloud`` for point clouds; IMU parts also carry ``sample_rate`` when the record has one.) Each part
type comes from the modality's file (``Modality.part_types``); the ``input_*`` parts are onellm's extension parts,
served by ``onellm serve``. Requests run concurrently (``concurrency`` at a
time); 429 and 5xx answers and connection errors are retried with exponential backoff, honouring Retry-After.
"""

from __future__ import annotations

import base64
import mimetypes
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from onellm.eval.backends.base import (
    Backend,
    BackendError,
    GenerationConfig,
    MediaItem,
    Request,
    register_backend,
)
from onellm.modalities import get_modality, modality_names

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0  # cap of one wait; with the default 5 retries a request gives up after ~1 minute


def encode_media(item: MediaItem) -> tuple[bytes, str]:
    """``(file bytes, format)`` of one input: the file as it is on disk, or an inline array encoded by its modality
    (:meth:`Modality.encode_array`: images as PNG, audio as 16-bit WAV, everything else as ``.npy``)."""
    if isinstance(item.source, np.ndarray):
        return get_modality(item.modality).encode_array(item.source, item.extras)
    path = Path(item.source)
    return path.read_bytes(), path.suffix.lstrip(".").lower()


def content_part(item: MediaItem) -> dict[str, Any]:
    """The chat content part of one input: the first part type its modality file declares
    (``Modality.part_types``), as a data URL for URL parts, else ``{"data": base64, "format": ext}``."""
    if item.modality not in modality_names():
        raise BackendError(f"no OpenAI content part is defined for modality {item.modality!r}")
    modality = get_modality(item.modality)
    part_type = modality.content_parts[0]
    data, fmt = encode_media(item)
    encoded = base64.b64encode(data).decode("ascii")
    if modality.url_part:
        mime = mimetypes.guess_type(f"x.{fmt}")[0] or f"{item.modality}/{fmt}"
        return {"type": part_type, part_type: {"url": f"data:{mime};base64,{encoded}"}}
    body: dict[str, Any] = {"data": encoded, "format": fmt}
    # Only the modalities that take a sample rate send it; audio files carry theirs in the header.
    if "sample_rate" in item.extras and "sample_rate" in modality.extra_keys and fmt != "wav":
        body["sample_rate"] = item.extras["sample_rate"]
    return {"type": part_type, part_type: body}


def api_base(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a URL with a path (``.../v1``, ``.../openai/v1``) is kept."""
    url = url.rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


@register_backend("openai")
class OpenAIBackend(Backend):
    """Args:
    api: base URL of the endpoint (``http://127.0.0.1:8000/v1``; a bare host gets ``/v1``).
    api_key: sent as ``Authorization: Bearer``; none when empty.
    model: the model name in requests; default the first one ``GET /models`` lists.
    concurrency: requests in flight at once.
    max_retries: retries of one request on 429 / 5xx / connection errors before the run fails.
    backoff_s: first retry wait; doubled on each retry (capped at 30 s). A Retry-After header wins.
    timeout_s: timeout of one HTTP request.
    """

    def __init__(
        self,
        api: str,
        api_key: str | None = None,
        model: str | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 120.0,
    ):
        if concurrency < 1 or max_retries < 0:
            raise ValueError(f"concurrency must be >= 1 and max_retries >= 0, got {concurrency}, {max_retries}")
        self.api = api_base(api)
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.api,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency),
            follow_redirects=False,
        )
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="onellm-eval-api")
        self.retries = 0  # total retries so far (reported in results.json)
        self._lock = threading.Lock()
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        response = self._send("GET", "/models", None, "list the models")
        models = response.json().get("data") or []
        if not models or not models[0].get("id"):
            raise BackendError(f"{self.api}/models lists no model; pass the model name with --api-model")
        return str(models[0]["id"])

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "api": self.api,
            "model": self.model,
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "retries": self.retries,
        }

    def payload(self, request: Request, generation: GenerationConfig) -> dict[str, Any]:
        """The chat-completions body of one request."""
        content = [content_part(item) for item in request.media]
        content.append({"type": "text", "text": request.text})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [*request.system_turn(), {"role": "user", "content": content}],
            "max_tokens": generation.max_new_tokens,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
        }
        if generation.stop:
            body["stop"] = list(generation.stop)
        return body

    def _send(self, method: str, path: str, body: dict[str, Any] | None, what: str) -> httpx.Response:
        """One HTTP call with retries; a final failure raises :class:`BackendError` naming ``what``."""
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self.client.request(method, path, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may be restarting
                if last:
                    raise BackendError(
                        f"{what}: {method} {self.api}{path} failed: {type(exc).__name__}: {exc}"
                    ) from exc
                self._wait(attempt, None)
                continue
            if response.status_code < 400:
                return response
            if response.status_code not in RETRY_STATUS or last:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise BackendError(
                    f"{what}: {method} {self.api}{path} answered HTTP {response.status_code}{tries}: "
                    f"{response.text[:500]}"
                )
            self._wait(attempt, response.headers.get("retry-after"))
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
        if retry_after is not None:
            try:
                delay = min(max(float(retry_after), 0.0), MAX_BACKOFF_S)
            except ValueError:  # an HTTP date instead of seconds: keep the exponential delay
                pass
        with self._lock:
            self.retries += 1
        time.sleep(delay)

    def _complete(self, request: Request, generation: GenerationConfig) -> str:
        response = self._send("POST", "/chat/completions", self.payload(request, generation), f"request {request.id}")
        try:
            message = response.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(
                f"request {request.id}: {self.api}/chat/completions answered without choices[0].message: "
                f"{response.text[:500]}"
            ) from None
        return message.get("content") or ""

    def generate(self, requests: Sequence[Request], generation: GenerationConfig) -> list[str]:
        return list(self.pool.map(lambda request: self._complete(request, generation), requests))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()
