"""The engine's worker process killed mid-stream: ``onellm serve --engine vllm`` as a real subprocess on 127.0.0.1,
its vLLM worker process (a grandchild: server -> ``VLLM::EngineCore`` -> ``VLLM::Worker``) SIGKILLed while a long
stream is being generated.

The server must not hang anyone: the stream ends with an error event (``engine_failed``) or a closed connection, a
new request gets an error status (or a refused connection once the server is gone), ``/health`` answers 503 while
the server still listens, and the server exits with status 1 so that a supervisor restarts it (docs/api.md,
Faults). vLLM is the engine tested: the hf engine generates in the server's own process and has no worker to lose.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow

ERROR_WITHIN_S = 30.0  # from the kill to the stream's end; measured: well under a second on 2 cores
EXIT_WITHIN_S = 60.0  # from the kill to the server's exit (5 s of graceful shutdown, then the engine's)
# Eight sequences of 980 tokens with their 20 most likely alternatives: ~8 MB of events, several seconds of work for
# the tiny model, so the kill lands mid-generation however fast the machine is.
LONG_STREAM = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "Tell a long story."}],
    "max_tokens": 980,
    "min_tokens": 980,
    "n": 8,
    "logprobs": True,
    "top_logprobs": 20,
    "stream": True,
}


def vllm_worker(server_pid: int) -> psutil.Process:
    """The server's vLLM worker process (vLLM names its processes ``VLLM::EngineCore`` and ``VLLM::Worker``)."""
    children = psutil.Process(server_pid).children(recursive=True)
    workers = [p for p in children if p.name().startswith("VLLM::Worker")]
    assert len(workers) == 1, f"expected one VLLM::Worker among {[(p.pid, p.name()) for p in children]}"
    return workers[0]


def read_until_killed(http: httpx.Client, worker: psutil.Process) -> tuple[list[str], str, float]:
    """Stream LONG_STREAM, SIGKILL ``worker`` once the first tokens arrived, read on until the stream ends. Returns
    the events, how the stream ended, and when the kill landed."""
    events: list[str] = []
    killed = 0.0
    try:
        with http.stream("POST", "/v1/chat/completions", json=LONG_STREAM) as response:
            assert response.status_code == 200, response.read().decode()[:300]
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[len("data: ") :])
                if len(events) == 2:  # the role chunk and the first tokens
                    os.kill(worker.pid, signal.SIGKILL)
                    killed = time.monotonic()
                assert not killed or time.monotonic() - killed < ERROR_WITHIN_S, "the stream went on after the kill"
    except httpx.TransportError as exc:  # the connection closed mid-stream: also an error the client sees
        return events, f"connection error: {type(exc).__name__}", killed
    return events, "ended", killed


def test_a_killed_worker_fails_requests_and_the_server_exits(checkpoint, kit, tmp_path):
    pytest.importorskip("vllm")
    port = kit.free_port()
    server = kit.start_server(kit.onellm_serve(checkpoint, "vllm", port), tmp_path / "server.log", port, timeout=300)
    try:
        worker = vllm_worker(server.process.pid)
        with httpx.Client(base_url=server.url, timeout=ERROR_WITHIN_S) as http:
            events, ending, killed = read_until_killed(http, worker)
            assert killed, f"the stream ended before the kill: {events[-2:]}"
            if ending == "ended":
                assert events[-1] == "[DONE]", events[-3:]
                error = json.loads(events[-2])["error"]
                assert error["code"] == "engine_failed" and error["type"] == "server_error", error
                assert len(events) < 2 + 8 * 980, "the stream ran to its end"

            seen = [f"stream {ending} {time.monotonic() - killed:.2f} s after the kill"]
            try:  # a new request: an error status, or a refused connection once the server has stopped listening
                after = http.post("/v1/chat/completions", json={**LONG_STREAM, "stream": False, "max_tokens": 4})
                assert after.status_code == 503 and after.json()["error"]["code"] == "engine_failed", after.text
                seen.append("new request: 503")
            except httpx.ConnectError:
                seen.append("new request: connection refused")
            try:
                health = http.get("/health")
                assert health.status_code == 503 and health.json()["status"] == "failed", health.text
                seen.append("/health: 503")
            except httpx.ConnectError:
                seen.append("/health: connection refused")

        returncode = server.process.wait(timeout=max(1.0, EXIT_WITHIN_S - (time.monotonic() - killed)))
        exited = time.monotonic() - killed
        log = server.log.read_text()
        assert returncode == 1, f"exit status {returncode}; log:\n{log[-3000:]}"
        assert "the engine failed" in log and "exiting with status 1" in log
        print(f"\nworker killed: {'; '.join(seen)}; the server exited (1) {exited:.1f} s after the kill")
    finally:
        kit.stop_server(server)
