"""The chat service as the one owner of a request's path: the API and the chat page get the same checks and errors,
responses on the wire are the documented pydantic models, and a failed engine turns into errors, an unhealthy
``/health`` and one call to stop the server (a scripted engine in-process; tests/reliability/test_engine_fault.py
kills a real vLLM worker)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from fastapi.testclient import TestClient

from onellm.serving.app import ServerSettings, build_app
from onellm.serving.engines import Delta, EngineFailed, GenerationRequest, TokenLogprob
from onellm.serving.protocol import ChatCompletion, ChatCompletionChunk, Health, ModelList, wire
from onellm.serving.service import FAILURE_POLL_S, ChatService
from onellm.serving.ui import AUTO, ChatPage

HI = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]  # what the chat page sends for "hi"


class ScriptedEngine:
    """Token ``100 + i`` at step i (with log-probabilities when asked); after ``fail_after`` steps its worker "dies":
    generate raises EngineFailed and ``failure()`` says so from then on."""

    name = "scripted"

    def __init__(self, max_model_len: int = 1024, fail_after: int | None = None):
        self.max_model_len = max_model_len
        self.fail_after = fail_after
        self.died: str | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def num_unfinished(self) -> int:
        return 0

    def failure(self) -> str | None:
        return self.died

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[Delta]]:
        sampling = request.sampling
        for step in range(sampling.max_tokens):
            if step == self.fail_after:
                self.died = "worker process 4242 died"
                raise EngineFailed(self.died)
            await asyncio.sleep(0)
            top = tuple((100 + step + k, -0.5 * (k + 1)) for k in range(sampling.logprobs or 0))
            logprobs = [TokenLogprob(100 + step, -0.5, top)] if sampling.logprobs is not None else []
            last = step == sampling.max_tokens - 1
            yield [Delta(i, f"t{step}", [100 + step], "length" if last else None, logprobs) for i in range(sampling.n)]


def _events(response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_the_page_and_the_api_get_one_context_check(tiny, monkeypatch):
    """One service behind both: a prompt beyond the context gets the same message from the same method, whether the
    API or the chat page sends it (the page adds what to do about it)."""
    _, processor = tiny
    checked: list[int] = []
    context_room = ChatService.context_room

    def spy(self: ChatService, chat) -> int:
        checked.append(id(self))
        return context_room(self, chat)

    monkeypatch.setattr(ChatService, "context_room", spy)
    app = build_app(ScriptedEngine(max_model_len=8), processor, ServerSettings("tiny"))  # the template alone is ~15
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": HI})
        page = ChatPage(app.state.service)

        async def turn() -> list:
            return [update async for update in page.reply([], "hi", [], [], AUTO)]

        chat, turns, status = asyncio.run(turn())[-1]
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "messages"
    assert error["code"] == "context_length_exceeded" and "this model's context is 8 tokens" in error["message"]
    assert chat[-1]["content"] == f"⚠️ **Error:** {error['message']}. Clear the chat to start over."
    assert (turns, status) == ([], "Not sent.")
    assert checked == [id(app.state.service)] * 2


def test_responses_on_the_wire_are_the_documented_models(tiny):
    """Every body the API sends validates as its response model and serialises back to the same JSON; optional
    fields appear exactly where OpenAI's (and this server's earlier) responses have them."""
    _, processor = tiny
    app = build_app(ScriptedEngine(), processor, ServerSettings("tiny", adapters=("lora",)))
    plain = {"model": "tiny", "messages": HI, "max_tokens": 2}
    rich = {**plain, "n": 2, "logprobs": True, "top_logprobs": 2, "return_token_ids": True}
    with TestClient(app) as client:
        completion = client.post("/v1/chat/completions", json=plain).json()
        detailed = client.post("/v1/chat/completions", json=rich).json()
        with client.stream("POST", "/v1/chat/completions", json={**plain, "stream": True}) as response:
            events = _events(response)
        streamed = {**rich, "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/chat/completions", json=streamed) as response:
            detailed_events = _events(response)
        models = client.get("/v1/models").json()
        health = client.get("/health").json()

    for body in (completion, detailed):
        assert wire(ChatCompletion.model_validate(body)) == body
    assert list(completion) == ["id", "object", "created", "model", "choices", "usage"]
    assert completion["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "t0t1"}, "finish_reason": "length", "logprobs": None}
    ]
    assert completion["usage"]["completion_tokens"] == 2
    choice = detailed["choices"][1]
    assert choice["token_ids"] == [100, 101] and len(choice["logprobs"]["content"]) == 2
    first = choice["logprobs"]["content"][0]
    assert list(first) == ["token", "logprob", "bytes", "top_logprobs"] and len(first["top_logprobs"]) == 2

    for stream in (events, detailed_events):
        assert stream[-1] == "[DONE]"
        chunks = [json.loads(event) for event in stream[:-1]]
        for chunk in chunks:
            assert wire(ChatCompletionChunk.model_validate(chunk)) == chunk
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    assert chunks[1]["choices"] == [{"index": 0, "delta": {"content": "t0"}, "finish_reason": None, "logprobs": None}]
    assert not any("usage" in chunk for chunk in chunks)
    detailed_chunks = [json.loads(event) for event in detailed_events[:-1]]
    assert detailed_chunks[-1]["choices"] == [] and detailed_chunks[-1]["usage"]["completion_tokens"] == 4
    assert [c["token_ids"] for c in detailed_chunks[1]["choices"]] == [[100], [100]]

    assert wire(ModelList.model_validate(models)) == models
    assert [card.get("parent") for card in models["data"]] == [None, "tiny"] and "parent" not in models["data"][0]
    assert wire(Health.model_validate(health)) == health == {"status": "ok", "engine": "scripted"}


def test_a_failed_engine_gives_errors_an_unhealthy_server_and_one_stop(tiny):
    """The engine dies mid-stream: the stream ends with a 503 error event, later requests get 503, /health says
    failed (503), and the runner's stop hook (cli.run_server: exit non-zero) is called once."""
    _, processor = tiny
    app = build_app(ScriptedEngine(fail_after=2), processor, ServerSettings("tiny"))
    stops: list[float] = []
    app.state.service.on_failure = lambda: stops.append(time.monotonic())
    body = {"model": "tiny", "messages": HI, "max_tokens": 5}
    with TestClient(app) as client:
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            events = _events(response)
        after = client.post("/v1/chat/completions", json=body)
        health = client.get("/health")
    assert events[-1] == "[DONE]" and json.loads(events[1])["choices"][0]["delta"]["content"] == "t0"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_failed" and "worker process 4242 died" in error["message"]
    assert after.status_code == 503 and after.json()["error"]["code"] == "engine_failed"
    assert health.status_code == 503 and health.json() == {"status": "failed", "engine": "scripted"}
    assert len(stops) == 1
    assert app.state.service.metrics.in_flight == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_before_the_first_token_is_an_http_503(tiny, stream):
    _, processor = tiny
    app = build_app(ScriptedEngine(fail_after=0), processor, ServerSettings("tiny"))
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": HI, "stream": stream})
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_failed"


def test_an_engine_that_dies_while_idle_is_noticed(tiny):
    _, processor = tiny
    engine = ScriptedEngine()
    app = build_app(engine, processor, ServerSettings("tiny"))
    stops: list[float] = []
    app.state.service.on_failure = lambda: stops.append(time.monotonic())
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        engine.died, died = "engine-core process exited", time.monotonic()
        deadline = died + 5 * FAILURE_POLL_S
        while client.get("/health").status_code != 503:
            assert time.monotonic() < deadline, "/health still reports a dead engine as up"
            time.sleep(0.05)
    assert len(stops) == 1 and stops[0] - died <= 2 * FAILURE_POLL_S
