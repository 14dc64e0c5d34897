"""A client that leaves mid-stream is counted as a disconnect and frees its slot, even when closing the engine's
stream fails (a real uvicorn server on 127.0.0.1, a fake engine: no model runs)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import uvicorn

from onellm.presets import build_preset
from onellm.serving.app import ServerSettings, build_app
from onellm.serving.engines import Delta


class EndlessEngine:
    """Streams a token every 5 ms until closed; closing fails when ``fail_on_close`` (as an engine abort can)."""

    name = "endless"
    max_model_len = 1024

    def __init__(self, fail_on_close: bool):
        self.fail_on_close = fail_on_close
        self.open = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def num_unfinished(self) -> int:
        return self.open

    def failure(self) -> str | None:
        return None

    async def generate(self, request):
        self.open += 1
        try:
            for i in range(100_000):
                await asyncio.sleep(0.005)
                yield [Delta(0, "x", [100 + i % 50], None)]
        finally:
            self.open -= 1
            if self.fail_on_close:
                raise RuntimeError("abort failed")


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


def _serve(engine) -> tuple[uvicorn.Server, str]:
    _, processor = build_preset("tiny", modalities=["image"])
    app = build_app(engine, processor, ServerSettings(served_model_name="tiny"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def _leave_three_streams(url: str) -> str:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 900}

    async def scenario() -> str:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:

            async def leave() -> None:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_lines():
                        break  # the first event arrived: leave with the rest unread

            await asyncio.gather(*(leave() for _ in range(3)))
            deadline = time.monotonic() + 20
            text = (await http.get("/metrics")).text
            while _metric(text, "onellm_requests_in_flight") or _metric(text, "onellm_client_disconnects_total") < 3:
                assert time.monotonic() < deadline, f"slots or disconnects not accounted for:\n{text}"
                await asyncio.sleep(0.05)
                text = (await http.get("/metrics")).text
            return text

    return asyncio.run(scenario())


def test_departed_clients_are_counted_even_when_closing_the_stream_fails():
    for fail_on_close in (False, True):
        engine = EndlessEngine(fail_on_close)
        server, url = _serve(engine)
        try:
            text = _leave_three_streams(url)
            assert _metric(text, "onellm_client_disconnects_total") == 3
            assert _metric(text, "onellm_request_latency_seconds_count") == 0  # no stream ran to its end
            assert engine.open == 0
            assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        finally:
            server.should_exit = True
