"""The chat service: the one owner of a chat request's path, called by the HTTP API (:mod:`.app`) and the chat page
(:mod:`.ui`) alike.

    raw body ─parse_body─> ChatCompletionRequest
      ─prepare─> model/adapter name (404) ─> engine up (503) ─> admission (429 past --max-queue)
                 ─> parse_chat: every media input fetched and preprocessed once (400 naming the part)
                 ─> sampling: context length, max_tokens, min_tokens (400)            = ChatCall, holding a slot
      ─complete─> ChatCompletion   or   ─stream─> ChatCompletionChunk ...
                 the engine under --request-timeout (504); a failed engine (503); the slot is freed at the end

What stays with the callers is HTTP: the API key, the body-size cap, status codes, server-sent-event framing and
clients that leave. The service also owns the engine's life (:meth:`ChatService.lifespan`: start, watch, stop) and
what ``/health`` reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from onellm.processing import OneLLMProcessor
from onellm.serving.chat import parse_chat
from onellm.serving.engines import (
    Delta,
    Engine,
    EngineFailed,
    GenerationRequest,
    ParsedChat,
    SamplingSettings,
    TokenLogprob,
)
from onellm.serving.errors import APIError, bad_request
from onellm.serving.media import MediaFetcher, MediaPolicy
from onellm.serving.metrics import Metrics
from onellm.serving.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    Health,
    ModelCard,
    ModelList,
    TopLogprob,
    Usage,
)

logger = logging.getLogger("onellm.serve")
# Sampling at a temperature below this divides the logits into inf and the softmax into NaN. vLLM raises any
# temperature in (0, 0.01) to 0.01; the server does the same for every engine, so they agree (0 stays greedy).
MIN_TEMPERATURE = 0.01
MIN_LOGPROB = -9999.0  # -inf (a masked token) is not JSON; vLLM's OpenAI server reports it as this
MAX_STOPS = 4  # OpenAI's limit
# How often an idle engine is asked whether it still works. Requests in flight learn of a failure at once (the
# engine raises EngineFailed); this bounds how late /health and the exit notice one that died between requests.
FAILURE_POLL_S = 1.0


@dataclass(frozen=True)
class ServiceSettings:
    """What the service checks requests against (the CLI's flags)."""

    served_model_name: str
    adapters: tuple[str, ...] = ()  # LoRA adapter names, selectable through the request's "model"
    max_inputs_per_request: int = 8
    max_queue: int = 64  # requests admitted at once (preprocessing, waiting or generating); the next gets 429
    request_timeout: float = 600.0
    max_n: int = 8
    media: MediaPolicy = field(default_factory=MediaPolicy)


@dataclass
class ChatCall:
    """An admitted request: what the client asked, what the engine is asked, and its slot in the queue."""

    body: ChatCompletionRequest
    generation: GenerationRequest
    admitted: float  # time.monotonic() at admission (time-to-first-token and latency count from here)
    released: bool = False  # the slot was given back (exactly once, whichever way the request ended)


class ChatService:
    """One engine and one processor behind the checks every caller needs (see the module docstring)."""

    def __init__(self, engine: Engine, processor: OneLLMProcessor, settings: ServiceSettings):
        self.engine = engine
        self.processor = processor
        self.settings = settings
        self.metrics = Metrics(engine.name, engine.num_unfinished)
        self.fetcher = MediaFetcher(settings.media)
        self.ready = False  # the engine is started and not stopped
        self.failure: str | None = None  # why the engine stopped working, once it has
        # Called once when the engine fails; the runner stops the server there (cli.run_server), so that the process
        # exits non-zero and a supervisor restarts it. In-process tests keep the default: nothing.
        self.on_failure: Callable[[], None] = lambda: None

    # --- the engine's life ---------------------------------------------------------------------------------------
    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start the engine before the first request, watch it while serving, stop it at shutdown (the ASGI lifespan
        of the API server and of the chat page)."""
        started = time.monotonic()
        await self.engine.start()
        self.ready = True
        logger.info("engine %s ready in %.1f s", self.engine.name, time.monotonic() - started)
        watcher = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            watcher.cancel()
            self.ready = False
            await self.engine.stop()

    async def _watch(self) -> None:
        while (failure := self.engine.failure()) is None:
            await asyncio.sleep(FAILURE_POLL_S)
        self._failed(failure)

    def _failed(self, failure: str) -> APIError:
        """Record the engine's failure (the first one reported) and the 503 that requests get from now on."""
        if self.failure is None:
            self.failure = failure
            logger.error("the engine failed: %s; the server stops so that a supervisor restarts it", failure)
            self.on_failure()
        return APIError(
            503, f"the engine failed: {self.failure}; the server is shutting down to be restarted", code="engine_failed"
        )

    def health(self) -> Health:
        """``ok`` once the engine is up, ``starting`` before, ``failed`` after its worker died."""
        status = "failed" if self.failure is not None else "ok" if self.ready else "starting"
        return Health(status=status, engine=self.engine.name)

    def models(self) -> ModelList:
        """The served model, then each LoRA adapter (``parent``: the served model)."""
        created, served = int(time.time()), self.settings.served_model_name
        base = ModelCard(id=served, object="model", created=created, owned_by="onellm")
        adapters = [
            ModelCard(id=name, object="model", created=created, owned_by="onellm", parent=served)
            for name in self.settings.adapters
        ]
        return ModelList(object="list", data=[base, *adapters])

    # --- request checks ------------------------------------------------------------------------------------------
    def parse_body(self, raw: bytes) -> ChatCompletionRequest:
        """The request body as JSON, validated; a 400 naming the field otherwise."""
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
        if body.n > self.settings.max_n:
            raise bad_request(f"n: at most {self.settings.max_n} choices per request, got {body.n}", "n")
        stops = body.stops()
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise bad_request(f"stop: up to {MAX_STOPS} non-empty strings", "stop")
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs: set logprobs to true to get top_logprobs", "top_logprobs")
        return body

    def resolve_model(self, name: str) -> str | None:
        """The LoRA adapter ``name`` selects, None for the served model; a 404 for any other name."""
        if name == self.settings.served_model_name:
            return None
        if name in self.settings.adapters:
            return name
        known = [self.settings.served_model_name, *self.settings.adapters]
        raise APIError(
            404, f"the model {name!r} does not exist; this server serves {known}", "model", "model_not_found"
        )

    def context_room(self, chat: ParsedChat) -> int:
        """Tokens left for the answer after the prompt; a 400 when the prompt alone fills the context."""
        room = self.engine.max_model_len - chat.prompt_tokens
        if room < 1:
            raise bad_request(
                f"messages: the prompt is {chat.prompt_tokens} tokens (media placeholders included); this model's "
                f"context is {self.engine.max_model_len} tokens",
                "messages",
                "context_length_exceeded",
            )
        return room

    def sampling(self, body: ChatCompletionRequest, chat: ParsedChat, fit_context: bool = False) -> SamplingSettings:
        """The engine's sampling settings for ``body``. A ``max_tokens`` beyond the context is refused (as OpenAI
        does), or with ``fit_context`` shortened to what fits (the chat page: its slider cannot know the prompt)."""
        room = self.context_room(chat)
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > room and not fit_context:
            raise bad_request(
                f"max_tokens: {asked} + {chat.prompt_tokens} prompt tokens exceeds the {self.engine.max_model_len}"
                f"-token context; at most {room} fit",
                "max_tokens",
                "context_length_exceeded",
            )
        max_tokens = min(asked or room, room)
        if body.min_tokens > max_tokens:
            raise bad_request(f"min_tokens: {body.min_tokens} is more than max_tokens {max_tokens}", "min_tokens")
        return SamplingSettings(
            max_tokens=max_tokens,
            min_tokens=body.min_tokens,
            temperature=max(body.temperature, MIN_TEMPERATURE) if body.temperature > 0 else 0.0,
            top_p=body.top_p,
            stop=tuple(body.stops()),
            seed=body.seed,
            n=body.n,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        )

    async def prepare(self, body: ChatCompletionRequest, fit_context: bool = False) -> ChatCall:
        """Check ``body``, admit it and preprocess its inputs: a :class:`ChatCall` holding a slot, which
        :meth:`complete` or :meth:`stream` gives back. Raises :class:`APIError` (nothing held then)."""
        adapter = self.resolve_model(body.model)
        if self.failure is not None:
            raise self._failed(self.failure)
        if not self.ready:
            raise APIError(503, "the engine is still starting")
        in_flight = self.metrics.in_flight
        if in_flight >= self.settings.max_queue:
            raise APIError(
                429, f"server busy: {in_flight} requests in flight (limit {self.settings.max_queue}); retry later"
            )
        self.metrics.in_flight += 1
        admitted = time.monotonic()
        try:
            chat = await parse_chat(body.messages, self.processor, self.fetcher, self.settings.max_inputs_per_request)
            sampling = self.sampling(body, chat, fit_context)
        except BaseException:
            self.metrics.in_flight -= 1
            raise
        generation = GenerationRequest(f"chatcmpl-{uuid.uuid4().hex}", chat, sampling, adapter)
        return ChatCall(body, generation, admitted)

    def _release(self, call: ChatCall) -> None:
        if not call.released:
            call.released = True
            self.metrics.in_flight -= 1

    def _api_error(self, exc: TimeoutError | ValueError | EngineFailed) -> APIError:
        """What the caller is told when generation ends in ``exc``."""
        if isinstance(exc, TimeoutError):
            timeout = self.settings.request_timeout
            return APIError(504, f"the request did not finish within {timeout:g} s", code="timeout")
        if isinstance(exc, EngineFailed):
            return self._failed(str(exc))
        return bad_request(str(exc))  # the engine refused the input (vLLM's validation)

    # --- generation and responses --------------------------------------------------------------------------------
    async def complete(self, call: ChatCall) -> ChatCompletion:
        """The whole answer at once (``"stream": false``); the slot is given back however this ends."""
        sampling, chat = call.generation.sampling, call.generation.chat
        texts, ids = [""] * sampling.n, [[] for _ in range(sampling.n)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(sampling.n)]
        finish: list[str | None] = [None] * sampling.n
        first_token: float | None = None
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                async with aclosing(self.engine.generate(call.generation)) as deltas:
                    async for batch in deltas:
                        first_token = first_token or time.monotonic()
                        for d in batch:
                            texts[d.index] += d.text
                            ids[d.index] += d.token_ids
                            logprobs[d.index] += d.logprobs
                            finish[d.index] = d.finish_reason or finish[d.index]
        except (TimeoutError, ValueError, EngineFailed) as exc:
            raise self._api_error(exc) from None
        finally:
            self._release(call)
        completion_tokens = sum(len(i) for i in ids)
        self._finished(call, completion_tokens, first_token)
        body = call.body
        choices = [
            Choice(
                index=i,
                message=AssistantMessage(role="assistant", content=texts[i]),
                finish_reason=finish[i] or "stop",
                logprobs=self._logprobs(body, logprobs[i]),
                **({"token_ids": ids[i]} if body.return_token_ids else {}),
            )
            for i in range(sampling.n)
        ]
        return ChatCompletion(
            id=call.generation.request_id,
            object="chat.completion",
            created=int(time.time()),
            model=body.model,
            choices=choices,
            usage=Usage.of(chat.prompt_tokens, completion_tokens),
        )

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatCompletionChunk]:
        """Start generating and wait for the first tokens, so that errors before them raise here (and still get
        their HTTP status); the chunks come from the returned iterator, which raises :class:`APIError` mid-stream
        (timeout, failed engine) or the engine's own error. Closing it aborts generation; its end frees the slot."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout
        deltas = self.engine.generate(call.generation)
        try:
            async with asyncio.timeout_at(deadline):
                first = await anext(deltas, None)
        except BaseException as exc:  # a client gone (cancelled) too: abort in the engine, free the slot
            try:
                await deltas.aclose()
            finally:
                self._release(call)
            if isinstance(exc, (TimeoutError, ValueError, EngineFailed)):
                raise self._api_error(exc) from None
            raise
        return self._chunks(call, deltas, first, time.monotonic(), deadline)

    async def _chunks(
        self,
        call: ChatCall,
        deltas: AsyncIterator[list[Delta]],
        first: list[Delta] | None,
        first_token: float,
        deadline: float,
    ) -> AsyncIterator[ChatCompletionChunk]:
        body, n = call.body, call.generation.sampling.n
        completion_tokens = 0
        try:
            async with aclosing(deltas):
                role = ChoiceDelta(role="assistant", content="")
                yield self._chunk(call, [ChunkChoice(index=i, delta=role, finish_reason=None) for i in range(n)])
                try:
                    batch = first
                    while batch is not None:
                        completion_tokens += sum(len(d.token_ids) for d in batch)
                        yield self._chunk(call, [self._chunk_choice(body, d) for d in batch])
                        # The deadline covers the awaits on the engine only, never the yield: a timeout that fired
                        # while the consumer was suspended elsewhere (writing the socket) would cancel that write
                        # and end the stream without its error event and [DONE] (seen under load in the suite).
                        async with asyncio.timeout_at(deadline):
                            # Let other requests run: when the engine is ahead, neither vLLM's output queue nor
                            # the socket write suspends, and a fast stream would hold the event loop to its end.
                            await asyncio.sleep(0)
                            batch = await anext(deltas, None)
                except (TimeoutError, EngineFailed) as exc:
                    raise self._api_error(exc) from None
            self._finished(call, completion_tokens, first_token)
            if body.stream_options and body.stream_options.include_usage:
                usage = Usage.of(call.generation.chat.prompt_tokens, completion_tokens)
                yield self._chunk(call, [], usage)
        finally:
            self._release(call)

    def _chunk(self, call: ChatCall, choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=call.generation.request_id,
            object="chat.completion.chunk",
            created=int(time.time()),
            model=call.body.model,
            choices=choices,
            **({"usage": usage} if usage is not None else {}),  # only the last chunk has the key
        )

    def _chunk_choice(self, body: ChatCompletionRequest, delta: Delta) -> ChunkChoice:
        return ChunkChoice(
            index=delta.index,
            delta=ChoiceDelta(content=delta.text),
            finish_reason=delta.finish_reason,
            logprobs=self._logprobs(body, delta.logprobs),
            **({"token_ids": delta.token_ids} if body.return_token_ids else {}),
        )

    def _logprobs(self, body: ChatCompletionRequest, entries: list[TokenLogprob]) -> ChoiceLogprobs | None:
        """OpenAI's ``logprobs`` of a choice: per generated token its text, UTF-8 bytes, log-probability and the
        most likely alternatives; None when the request did not ask for them."""
        if not body.logprobs:
            return None
        tokenizer = self.processor.tokenizer

        def token(token_id: int, logprob: float) -> dict[str, Any]:
            text = tokenizer.decode([token_id])
            return {"token": text, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(text.encode("utf-8"))}

        content = [
            ChatCompletionTokenLogprob(
                **token(e.token_id, e.logprob), top_logprobs=[TopLogprob(**token(i, lp)) for i, lp in e.top]
            )
            for e in entries
        ]
        return ChoiceLogprobs(content=content)

    def _finished(self, call: ChatCall, completion_tokens: int, first_token: float | None) -> None:
        now = time.monotonic()
        ttft = None if first_token is None else first_token - call.admitted
        self.metrics.finished(call.generation.chat.prompt_tokens, completion_tokens, ttft, now - call.admitted)


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


__all__ = ["ChatCall", "ChatService", "ServiceSettings"]
