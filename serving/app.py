"""The OpenAI-compatible HTTP server: ``POST /v1/chat/completions``, ``GET /v1/models``, ``/health``, ``/metrics``.

The routes are the HTTP side of :class:`~onellm.serving.service.ChatService`, which owns the request path (body
parsing, checks, admission, generation, response bodies). What is left here: the API key, the body-size cap, status
codes, server-sent-event framing, and clients that disconnect (their request is cancelled, which aborts it in the
engine). Every error has OpenAI's shape (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from onellm.processing import OneLLMProcessor
from onellm.serving.engines import Engine
from onellm.serving.errors import APIError, error_body
from onellm.serving.media import MiB
from onellm.serving.metrics import Metrics
from onellm.serving.openapi import chat_openapi, chat_responses, health_responses, models_responses
from onellm.serving.protocol import ChatCompletionChunk, wire
from onellm.serving.service import ChatCall, ChatService, ServiceSettings

logger = logging.getLogger("onellm.serve")


@dataclass(frozen=True)
class ServerSettings(ServiceSettings):
    """The chat service's settings and the HTTP server's own."""

    api_key: str | None = None
    max_body_bytes: int = 64 * MiB  # base64 media inflate by 4/3; this admits a few 10 MB inputs


_ROUTES = {"/v1/chat/completions", "/v1/models", "/health", "/metrics"}


class _BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed), and response counting."""

    def __init__(self, app: Any, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in _ROUTES else "other"  # bounded label values

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.response(path, message["status"])
            await send(message)

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(
                counting_send,
                413,
                error_body(413, f"request body is {int(declared)} bytes, above the {self.limit}-byte limit"),
            )
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise APIError(413, f"request body exceeds the {self.limit}-byte limit")
            return message

        await self.app(scope, limited_receive, counting_send)


async def _send_json(send: Any, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def build_app(engine: Engine, processor: OneLLMProcessor, settings: ServerSettings) -> FastAPI:
    """The FastAPI app around a (not yet started) engine; the service's lifespan starts and stops it. The service is
    ``app.state.service``."""
    service = ChatService(engine, processor, settings)
    app = FastAPI(title="onellm", lifespan=service.lifespan)
    app.state.service, app.state.settings = service, settings
    chat_body, components = chat_openapi([settings.served_model_name, *settings.adapters], settings.max_n)
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # the request body's schemas join the generated components once
            default_openapi().setdefault("components", {}).setdefault("schemas", {}).update(components)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes, metrics=service.metrics)
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    add_health_route(app, service)
    app.add_api_route("/metrics", get_metrics, methods=["GET"], response_class=PlainTextResponse)
    app.add_api_route("/v1/models", models, methods=["GET"], response_model=None, responses=models_responses())
    app.add_api_route(
        "/v1/chat/completions",
        chat_completions,
        methods=["POST"],
        response_model=None,
        responses=chat_responses(),
        openapi_extra=chat_body,
    )
    return app


def add_health_route(app: FastAPI, service: ChatService) -> None:
    """``GET /health`` (of this server and of the chat page): 200 once the engine is up, 503 while it starts and
    after it failed, with :meth:`ChatService.health`'s body."""

    async def health() -> Response:
        report = service.health()
        return JSONResponse(wire(report), status_code=200 if report.status == "ok" else 503)

    app.add_api_route("/health", health, methods=["GET"], response_model=None, responses=health_responses())


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _service(request: Request) -> ChatService:
    return request.app.state.service


def check_key(request: Request) -> None:
    """401 unless the request carries the server's API key (compared in constant time); no key set: open."""
    api_key = request.app.state.settings.api_key
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key")


async def get_metrics(request: Request) -> Response:
    return PlainTextResponse(_service(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def models(request: Request) -> Response:
    check_key(request)
    return JSONResponse(wire(_service(request).models()))


async def chat_completions(request: Request) -> Response:
    check_key(request)
    service = _service(request)
    body = service.parse_body(await request.body())
    call = await service.prepare(body)
    if body.stream:
        return await _stream_response(request, service, call)
    try:
        completion = await until_disconnected(request, service.complete(call))
    except ClientGone:
        service.metrics.disconnected()
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    return JSONResponse(wire(completion))


async def _stream_response(request: Request, service: ChatService, call: ChatCall) -> Response:
    """Waits for the first tokens before answering, so that errors before them still get their HTTP status."""
    try:
        chunks = await until_disconnected(request, service.stream(call))
    except ClientGone:  # gone before the first token
        service.metrics.disconnected()
        return Response(status_code=499)
    return StreamingResponse(
        _events(service, chunks), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def _events(service: ChatService, chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[str]:
    """Each chunk as a server-sent event, then ``[DONE]``. The response has started: an error from here on is sent
    as an event in OpenAI's error shape before ``[DONE]``."""
    try:
        async with aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                yield _event(wire(chunk))
    except (asyncio.CancelledError, GeneratorExit):  # the client left mid-stream; the engine's stream is closed
        service.metrics.disconnected()
        raise
    except APIError as exc:  # timeout, failed engine
        yield _event(exc.body())
    except Exception as exc:
        if isinstance(exc.__context__, (asyncio.CancelledError, GeneratorExit)):
            # The client left and closing the engine's stream then failed (an abort can raise): still a departed
            # client, and nothing more may be sent; end quietly so the close completes.
            logger.warning("closing the stream of a departed client failed: %s: %s", type(exc).__name__, exc)
            service.metrics.disconnected()
            return
        logger.exception("generation failed mid-stream")
        yield _event(error_body(500, f"generation failed: {type(exc).__name__}: {exc}"))
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class ClientGone(Exception):
    """The client closed the connection while its request was being served."""


async def until_disconnected(request: Request, work: Any, poll: float = 0.25) -> Any:
    """Await ``work``; cancel it (which aborts generation) and raise :class:`ClientGone` if the client leaves."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                logger.info("client disconnected; request cancelled")
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


__all__ = ["ServerSettings", "add_health_route", "build_app"]
