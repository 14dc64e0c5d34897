"""The OpenAI-compatible HTTP server: ``POST /v1/chat/completions``, ``GET /v1/models``, ``/health``, ``/metrics``.

Request path: API key -> body-size cap -> JSON + field validation -> model/adapter name -> admission (429 when
``max_queue`` requests are in flight) -> every media input fetched and preprocessed once (:mod:`.chat`) -> engine
(streamed as server-sent events, or collected) under the per-request timeout. A client that disconnects cancels
the request, which aborts it in the engine. Every error has OpenAI's shape (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from onellm.processing import OneLLMProcessor
from onellm.serving.chat import ParsedChat, parse_chat
from onellm.serving.engines import (
    Delta,
    Engine,
    GenerationRequest,
    SamplingSettings,
    TokenLogprob,
    engine_lifespan,
)
from onellm.serving.errors import APIError, bad_request, error_body
from onellm.serving.media import MediaFetcher, MediaPolicy
from onellm.serving.metrics import Metrics
from onellm.serving.openapi import (
    STOP_SCHEMA,
    chat_openapi,
    chat_responses,
    health_responses,
    messages_schema,
    models_responses,
)

logger = logging.getLogger("onellm.serve")
MiB = 1024 * 1024
# Sampling at a temperature below this divides the logits into inf and the softmax into NaN. vLLM raises any
# temperature in (0, 0.01) to 0.01; the server does the same for every engine, so they agree (0 stays greedy).
MIN_TEMPERATURE = 0.01
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MIN_LOGPROB = -9999.0  # -inf (a masked token) is not JSON; vLLM's OpenAI server reports it as this


@dataclass(frozen=True)
class ServerSettings:
    served_model_name: str
    adapters: tuple[str, ...] = ()  # LoRA adapter names, selectable through the request's "model"
    api_key: str | None = None
    max_body_bytes: int = 64 * MiB  # base64 media inflate by 4/3; this admits a few 10 MB inputs
    max_inputs_per_request: int = 8
    max_queue: int = 64  # requests admitted at once (preprocessing, waiting or generating); the next gets 429
    request_timeout: float = 600.0
    max_n: int = 8
    media: MediaPolicy = field(default_factory=MediaPolicy)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields we read; OpenAI fields we do not implement are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    model: str
    # validated by parse_chat (errors name the part: messages[0].content[1].image_url); the schema is for the docs
    messages: Annotated[list[Any], WithJsonSchema(messages_schema())]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Annotated[str | list[str] | None, WithJsonSchema(STOP_SCHEMA)] = None  # checked in parse_body
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # a 64-bit seed, as vLLM's API takes
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool = False  # extension (as in vLLM): each choice also carries its generated token ids
    min_tokens: int = Field(default=0, ge=0)  # extension (as in vLLM): no end-of-sequence before this many tokens
    logprobs: bool = False  # each generated token's log-probability (raw model distribution, as vLLM reports it)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # and this many alternatives


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
    """The FastAPI app around a (not yet started) engine; the app's lifespan starts and stops it."""
    metrics = Metrics(engine.name, engine.num_unfinished)
    fetcher = MediaFetcher(settings.media)
    state = {"ready": False}

    app = FastAPI(title="onellm", lifespan=engine_lifespan(engine, state, logger))
    chat_body, components = chat_openapi(
        ChatCompletionRequest, [settings.served_model_name, *settings.adapters], settings.max_n
    )
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # the request body's schemas join the generated components once
            default_openapi().setdefault("components", {}).setdefault("schemas", {}).update(components)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    @app.get("/health", response_model=None, responses=health_responses())
    async def health() -> Response:
        if not state["ready"]:
            return JSONResponse({"status": "starting", "engine": engine.name}, status_code=503)
        return JSONResponse({"status": "ok", "engine": engine.name})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=None, responses=models_responses())
    async def models(request: Request) -> Response:
        check_key(request)
        created = int(time.time())
        base = {"id": settings.served_model_name, "object": "model", "created": created, "owned_by": "onellm"}
        adapters = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "onellm",
                "parent": settings.served_model_name,
            }
            for name in settings.adapters
        ]
        return JSONResponse({"object": "list", "data": [base, *adapters]})

    @app.post("/v1/chat/completions", response_model=None, responses=chat_responses(), openapi_extra=chat_body)
    async def chat_completions(request: Request) -> Response:
        check_key(request)
        body = parse_body(await request.body())
        adapter = resolve_model(body.model)
        if not state["ready"]:
            raise APIError(503, "the engine is still starting")
        if metrics.in_flight >= settings.max_queue:
            raise APIError(
                429, f"server busy: {metrics.in_flight} requests in flight (limit {settings.max_queue}); retry later"
            )
        metrics.in_flight += 1
        admitted = time.monotonic()
        release = True
        try:
            chat = await parse_chat(body.messages, processor, fetcher, settings.max_inputs_per_request)
            generation = GenerationRequest(
                request_id=f"chatcmpl-{uuid.uuid4().hex}", chat=chat, sampling=sampling_of(body, chat), adapter=adapter
            )
            if body.stream:
                response = await stream_response(request, body, generation, admitted)
                # a started stream releases its slot when it ends; a client gone before the first token (499) not
                release = not isinstance(response, StreamingResponse)
                return response
            try:
                return await until_disconnected(request, complete(body, generation, admitted))
            except ClientGone:
                metrics.disconnected()
                return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        finally:
            if release:
                metrics.in_flight -= 1

    # --- request parsing -------------------------------------------------------------------------------
    def parse_body(raw: bytes) -> ChatCompletionRequest:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"request body is not valid JSON ({exc})") from None
        except RecursionError:
            raise bad_request("request body is nested too deeply to parse") from None
        if not isinstance(data, dict):
            raise bad_request("request body must be a JSON object")
        surrogate = _unpaired_surrogate(data)
        if surrogate is not None:  # JSON escapes can spell them; no tokenizer or UTF-8 encoder takes them
            raise bad_request(f"request body: a string holds an unpaired UTF-16 surrogate ({surrogate!r})")
        try:
            body = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise bad_request(f"{where}: {first['msg']}", where) from None
        if body.n > settings.max_n:
            raise bad_request(f"n: at most {settings.max_n} choices per request, got {body.n}", "n")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise bad_request("stop: up to 4 non-empty strings", "stop")
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs: set logprobs to true to get top_logprobs", "top_logprobs")
        return body

    def resolve_model(name: str) -> str | None:
        if name == settings.served_model_name:
            return None
        if name in settings.adapters:
            return name
        known = [settings.served_model_name, *settings.adapters]
        raise APIError(
            404, f"the model {name!r} does not exist; this server serves {known}", "model", "model_not_found"
        )

    def sampling_of(body: ChatCompletionRequest, chat: ParsedChat) -> SamplingSettings:
        room = engine.max_model_len - chat.prompt_tokens
        if room < 1:
            raise bad_request(
                f"messages: the prompt is {chat.prompt_tokens} tokens (media placeholders included); this model's "
                f"context is {engine.max_model_len} tokens",
                "messages",
            )
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > room:
            raise bad_request(
                f"max_tokens: {asked} + {chat.prompt_tokens} prompt tokens exceeds the {engine.max_model_len}-token "
                f"context; at most {room} fit",
                "max_tokens",
            )
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if body.min_tokens > (asked or room):
            raise bad_request(f"min_tokens: {body.min_tokens} is more than max_tokens {asked or room}", "min_tokens")
        return SamplingSettings(
            max_tokens=asked or room,
            min_tokens=body.min_tokens,
            temperature=max(body.temperature, MIN_TEMPERATURE) if body.temperature > 0 else 0.0,
            top_p=body.top_p,
            stop=tuple(stops),
            seed=body.seed,
            n=body.n,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        )

    def choice_logprobs(body: ChatCompletionRequest, entries: list[TokenLogprob]) -> dict | None:
        return openai_logprobs(processor.tokenizer, entries) if body.logprobs else None

    # --- responses -----------------------------------------------------------------------------------
    async def complete(body: ChatCompletionRequest, generation: GenerationRequest, admitted: float) -> Response:
        n = generation.sampling.n
        texts, ids = [""] * n, [[] for _ in range(n)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        first_token: float | None = None
        try:
            async with asyncio.timeout(settings.request_timeout):
                async with aclosing(engine.generate(generation)) as stream:
                    async for deltas in stream:
                        first_token = first_token or time.monotonic()
                        for d in deltas:
                            texts[d.index] += d.text
                            ids[d.index] += d.token_ids
                            logprobs[d.index] += d.logprobs
                            finish[d.index] = d.finish_reason or finish[d.index]
        except TimeoutError:
            raise APIError(
                504, f"the request did not finish within {settings.request_timeout:g} s", code="timeout"
            ) from None
        except ValueError as exc:  # the engine refused the input (vLLM validation)
            raise bad_request(str(exc)) from None
        completion_tokens = sum(len(i) for i in ids)
        metrics.finished(
            generation.chat.prompt_tokens,
            completion_tokens,
            None if first_token is None else first_token - admitted,
            time.monotonic() - admitted,
        )
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "finish_reason": finish[i] or "stop",
                "logprobs": choice_logprobs(body, logprobs[i]),
            }
            if body.return_token_ids:
                choice["token_ids"] = ids[i]
            choices.append(choice)
        return JSONResponse(
            {
                "id": generation.request_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.model,
                "choices": choices,
                "usage": usage(generation.chat.prompt_tokens, completion_tokens),
            }
        )

    async def stream_response(
        request: Request, body: ChatCompletionRequest, generation: GenerationRequest, admitted: float
    ) -> Response:
        """Starts generation before answering, so errors before the first token still get their HTTP status."""
        deadline = asyncio.get_running_loop().time() + settings.request_timeout
        stream = engine.generate(generation)
        try:
            async with asyncio.timeout_at(deadline):
                first = await until_disconnected(request, anext(stream, None))
        except ClientGone:
            await stream.aclose()
            metrics.disconnected()
            return Response(status_code=499)
        except TimeoutError:
            await stream.aclose()
            raise APIError(
                504, f"the request did not finish within {settings.request_timeout:g} s", code="timeout"
            ) from None
        except ValueError as exc:
            await stream.aclose()
            raise bad_request(str(exc)) from None
        except BaseException:
            await stream.aclose()
            raise
        first_token = time.monotonic()

        def chunk(choices: list[dict], usage_: dict | None = None) -> str:
            payload = {
                "id": generation.request_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.model,
                "choices": choices,
            }
            if usage_ is not None:
                payload["usage"] = usage_
            return f"data: {json.dumps(payload)}\n\n"

        def delta_choice(d: Delta) -> dict:
            choice: dict[str, Any] = {
                "index": d.index,
                "delta": {"content": d.text},
                "finish_reason": d.finish_reason,
                "logprobs": choice_logprobs(body, d.logprobs),
            }
            if body.return_token_ids:
                choice["token_ids"] = d.token_ids
            return choice

        async def events() -> AsyncIterator[str]:
            completion_tokens = 0
            try:
                yield chunk(
                    [
                        {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                        for i in range(generation.sampling.n)
                    ]
                )
                async with aclosing(stream):
                    async with asyncio.timeout_at(deadline):
                        batch = first
                        while batch is not None:
                            completion_tokens += sum(len(d.token_ids) for d in batch)
                            yield chunk([delta_choice(d) for d in batch])
                            # Let other requests run: when the engine is ahead, neither vLLM's output queue nor
                            # the socket write suspends, and a fast stream would hold the event loop to its end.
                            await asyncio.sleep(0)
                            batch = await anext(stream, None)
                if body.stream_options and body.stream_options.include_usage:
                    yield chunk([], usage(generation.chat.prompt_tokens, completion_tokens))
                yield "data: [DONE]\n\n"
                metrics.finished(
                    generation.chat.prompt_tokens,
                    completion_tokens,
                    first_token - admitted,
                    time.monotonic() - admitted,
                )
            except (asyncio.CancelledError, GeneratorExit):  # the client left mid-stream; `stream` is closed
                metrics.disconnected()
                raise
            except TimeoutError:
                message = f"the request did not finish within {settings.request_timeout:g} s"
                yield f"data: {json.dumps(error_body(504, message, code='timeout'))}\n\n"
                yield "data: [DONE]\n\n"
            except Exception as exc:
                if isinstance(exc.__context__, (asyncio.CancelledError, GeneratorExit)):
                    # The client left and closing the engine's stream then failed (an abort can raise): still a
                    # departed client, and nothing more may be sent; end quietly so the close completes.
                    logger.warning("closing the stream of a departed client failed: %s: %s", type(exc).__name__, exc)
                    metrics.disconnected()
                    return
                # the response has started: report in the stream, then end it
                logger.exception("generation failed mid-stream")
                yield f"data: {json.dumps(error_body(500, f'generation failed: {type(exc).__name__}: {exc}'))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                metrics.in_flight -= 1

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _unpaired_surrogate(data: Any) -> str | None:
    """The first unpaired UTF-16 surrogate in any string (key or value) of parsed JSON, or None."""
    stack = [data]
    while stack:  # a loop, not recursion: what json.loads nested is as deep as the recursion limit allows
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return item[exc.start]
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def openai_logprobs(tokenizer: Any, entries: list[TokenLogprob]) -> dict[str, list[dict]]:
    """OpenAI's ``choice.logprobs``: per generated token its text, UTF-8 bytes, log-probability and alternatives."""

    def token(token_id: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**token(e.token_id, e.logprob), "top_logprobs": [token(i, lp) for i, lp in e.top]} for e in entries
        ]
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


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


__all__ = ["ChatCompletionRequest", "ServerSettings", "build_app", "usage"]
