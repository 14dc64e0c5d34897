"""Backends: the OpenAI-compatible client against a real HTTP server on 127.0.0.1 (request shape, retries, errors),
the in-process HF backend's batching, and the vLLM offline engine against the HF reference (slow)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_checkpoint import save_tiny

from onellm.eval.backends import BackendError, GenerationConfig, MediaItem, Request, backend_names, get_backend
from onellm.eval.backends.hf import HFBackend
from onellm.eval.backends.openai_api import OpenAIBackend, api_base
from onellm.eval.cli import main
from onellm.eval.runner import evaluate
from onellm.eval.sources import DataDirs
from onellm.eval.task import load_task
from onellm.instruct_data.schema import read_manifest
from onellm.instruct_data.synth import synthesize
from onellm.modalities import get_modality, modality_names


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny"), modalities="all")  # every backend on every content part


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize(folder, per_modality=3, seed=0, modalities="all")
    return folder


def caption_requests(corpus: Path) -> list[Request]:
    """One request per modality: the caption record of the corpus's test split, media as absolute paths."""
    requests = []
    for record in read_manifest(corpus / "test.jsonl"):
        if record.task == "caption":
            item = record.inputs[0]
            extras = {"sample_rate": item.sample_rate} if item.sample_rate else {}
            requests.append(
                Request(
                    record.id, f"Describe {record.id}.", (MediaItem(item.modality, str(corpus / item.path), extras),)
                )
            )
    assert sorted(r.media[0].modality for r in requests) == sorted(modality_names())
    return requests


# --- a small OpenAI-compatible server (http.server, 127.0.0.1, ephemeral port) -----------------------------------


class FakeAPI:
    """Records every request; ``script`` holds status codes to answer the next POSTs with before answering 200."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: list[int] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [{"id": "tiny-onellm", "object": "model"}]})
                else:
                    self.reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api.lock:
                    api.posts.append(body)
                    api.headers.append(dict(self.headers))
                    status = api.script.pop(0) if api.script else 200
                if self.path != "/v1/chat/completions":
                    self.reply(404, {"error": {"message": f"no route {self.path}"}})
                elif status != 200:
                    self.reply(status, {"error": {"message": f"scripted {status}"}}, {"Retry-After": "0"})
                else:
                    text = body["messages"][-1]["content"][-1]["text"]
                    self.reply(
                        200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"re: {text}"}}]}
                    )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    server = FakeAPI()
    yield server
    server.close()


def test_backends_are_registered():
    assert {"hf", "vllm", "openai"} <= set(backend_names())
    with pytest.raises(KeyError, match="unknown backend 'tgi'"):
        get_backend("tgi")


def test_api_base():
    assert api_base("http://h:8000") == "http://h:8000/v1"
    assert api_base("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_base("https://h/openai/v1") == "https://h/openai/v1"


def test_openai_request_shape_concurrency_and_retry(api, corpus):
    requests = caption_requests(corpus)
    api.script = [429]  # the first POST is rate-limited, then every request succeeds
    backend = OpenAIBackend(api.url, api_key="sekret", concurrency=4, backoff_s=0.01)
    assert backend.model == "tiny-onellm"  # discovered from GET /v1/models
    answers = backend.generate(requests, GenerationConfig(max_new_tokens=7, stop=("\n",)))
    backend.close()
    assert answers == [f"re: {r.text}" for r in requests]  # in request order despite concurrency
    assert backend.retries == 1 and len(api.posts) == len(requests) + 1
    assert all(h["Authorization"] == "Bearer sekret" for h in api.headers)

    by_text = {body["messages"][0]["content"][-1]["text"]: body for body in api.posts}
    for request in requests:
        body = by_text[request.text]
        assert body["model"] == "tiny-onellm" and body["max_tokens"] == 7 and body["temperature"] == 0.0
        assert body["stop"] == ["\n"]
        (message,) = body["messages"]
        assert message["role"] == "user"
        part, text = message["content"]
        assert text == {"type": "text", "text": request.text}
        item = request.media[0]
        kind = get_modality(item.modality).content_parts[0]
        assert part["type"] == kind
        raw = Path(item.source).read_bytes()
        if kind in ("image_url", "video_url"):
            prefix, encoded = part[kind]["url"].split(",", 1)
            assert prefix == {"image_url": "data:image/png;base64", "video_url": "data:video/mp4;base64"}[kind]
        else:
            encoded = part[kind]["data"]
            assert part[kind]["format"] == Path(item.source).suffix.lstrip(".")
        assert base64.b64decode(encoded) == raw
        if item.modality == "imu":
            assert part[kind]["sample_rate"] == 50
    assert {get_modality(m).content_parts[0] for m in modality_names()} == {
        "image_url", "video_url", "input_audio", "input_point_cloud", "input_depth", "input_normal", "input_imu",
        "input_fmri", "input_xray", "input_infrared", "input_hyperspectral", "input_timeseries", "input_tabular",
        "input_graph",
    }  # fmt: skip


def test_openai_errors_are_not_retried_and_retries_give_up(api, corpus):
    request = caption_requests(corpus)[:1]
    backend = OpenAIBackend(api.url, model="m", max_retries=2, backoff_s=0.01)
    api.script = [400]
    with pytest.raises(BackendError, match="HTTP 400"):
        backend.generate(request, GenerationConfig())
    assert len(api.posts) == 1  # a client error is final
    api.script = [503, 503, 503]
    with pytest.raises(BackendError, match="HTTP 503 after 3 attempts"):
        backend.generate(request, GenerationConfig())
    assert len(api.posts) == 4 and backend.retries == 2
    backend.close()


def free_port() -> int:
    with socket.socket() as sock:  # nobody listens on it once the socket is closed
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_openai_unreachable_server_fails_clearly():
    port = free_port()
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", model="m", max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(BackendError, match="ConnectError"):
        backend.generate([Request("r", "hi")], GenerationConfig())
    assert backend.retries == 1
    backend.close()


def test_cli_evaluates_through_an_api(api, corpus, tmp_path):
    out = tmp_path / "api-eval"
    argv = ["--api", api.url.removesuffix("/v1"), "--api-key", "k", "--tasks", "synth_imu_qa", "--output", str(out),
            "--data-dir", f"synth={corpus}", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["backend"] == "openai" and results["config"]["model"] == "tiny-onellm"
    rows = [json.loads(line) for line in (out / "samples_synth_imu_qa.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(row["prediction"] == f"re: {row['input']}" for row in rows)
    assert all(body["messages"][0]["content"][0]["type"] == "input_imu" for body in api.posts)


def test_cli_system_instruction_is_every_requests_system_turn(api, corpus, tmp_path):
    out = tmp_path / "api-eval"
    argv = ["--api", api.url, "--tasks", "synth_imu_qa", "--output", str(out), "--data-dir", f"synth={corpus}",
            "--system-instruction", "Answer in one word.", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert len(api.posts) == 3
    for body in api.posts:
        system, user = body["messages"]
        assert system == {"role": "system", "content": "Answer in one word."}
        assert user["role"] == "user" and user["content"][0]["type"] == "input_imu"
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["system_instruction"] == "Answer in one word."
    assert "system instruction 'Answer in one word.'" in (out / "report.md").read_text()


@pytest.mark.slow
def test_openai_backend_against_onellm_serve(checkpoint, corpus):
    """Every modality's content part through the real server (``onellm serve --engine hf``) gives the HF answers."""
    pytest.importorskip("onellm.serving.cli")
    import httpx

    port = free_port()
    # float32 on both sides: bf16 rounds a row of a batch unlike the same request alone
    command = [sys.executable, "-m", "onellm.serving", "serve", str(checkpoint), "--engine", "hf", "--port", str(port),
               "--dtype", "float32"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):  # up to 120 s for imports and the model load
            if server.poll() is not None:
                pytest.fail(f"onellm serve exited with {server.returncode}: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("onellm serve did not become healthy in 120 s")
        requests = caption_requests(corpus)
        # and each again after a system turn (``--system-instruction``), which both sides render with the template
        requests += [dataclasses.replace(r, id=f"{r.id}-system", system="Describe briefly.") for r in requests]
        generation = GenerationConfig(max_new_tokens=6)
        backend = OpenAIBackend(f"http://127.0.0.1:{port}", max_retries=0)
        served = backend.generate(requests, generation)
        backend.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    reference = HFBackend(str(checkpoint), dtype="float32").generate(requests, generation)
    # The server detokenises incrementally and withholds a dangling partial UTF-8 character (see the vLLM test).
    assert [a.rstrip("\ufffd") for a in served] == [a.rstrip("\ufffd") for a in reference]
    half = len(requests) // 2
    assert served[:half] != served[half:]  # the system turn reached the model


# --- in-process HF backend -----------------------------------------------------------------------------------------


def test_hf_batches_equal_single_requests(checkpoint, corpus):
    backend = HFBackend(str(checkpoint), dtype="float32")  # bf16 rounds a padded row differently
    requests = caption_requests(corpus)
    requests[0] = Request(
        requests[0].id, "A much longer question so that rows need different padding?", requests[0].media
    )
    generation = GenerationConfig(max_new_tokens=6)
    batched = backend.generate(requests, generation)
    alone = [backend.generate([request], generation)[0] for request in requests]
    assert batched == alone
    assert len(set(batched)) > 1  # answers depend on the input (the check above is not vacuous)
    assert backend.info() == {"backend": "hf", "model": str(checkpoint), "dtype": "float32", "device": "cpu"}


def test_hf_encodes_each_distinct_input_once_and_answers_as_without_reuse(checkpoint, corpus):
    """Two questions about every input (and the same batch again): each input is encoded once, and the answers are
    those of a backend that encodes every request's inputs afresh."""
    captions = caption_requests(corpus)
    requests = [Request(f"{r.id}-{k}", text, r.media) for r in captions for k, text in enumerate(("What?", "Where?"))]
    generation = GenerationConfig(max_new_tokens=6)
    fresh = HFBackend(str(checkpoint), feature_cache_mb=0)
    expected = fresh.generate(requests, generation)
    assert (fresh.features.misses, fresh.features.hits, len(fresh.features.entries)) == (len(requests), 0, 0)

    backend = HFBackend(str(checkpoint))
    assert backend.generate(requests, generation) == expected
    assert (backend.features.misses, backend.features.hits) == (len(captions), len(captions))
    assert backend.generate(requests[::-1], generation) == expected[::-1]
    assert (backend.features.misses, backend.features.hits) == (len(captions), 3 * len(captions))
    assert len(set(expected)) > 1  # answers depend on the input (the equality above is not vacuous)


def test_encoder_features_drop_the_oldest_entry_beyond_their_memory(checkpoint):
    backend = HFBackend(str(checkpoint))
    images = torch.randn(3, *get_modality("image").input_shape(**backend.model.config.modality_options("image")))
    one = backend.features("image", images[:1])
    per_entry = one.numel() * one.element_size()
    features = type(backend.features)(backend.model, max_bytes=2 * per_entry)
    first = features("image", images)  # three new inputs, room for two: the first one is dropped
    assert (features.misses, len(features.entries), features.bytes) == (3, 2, 2 * per_entry)
    assert torch.equal(features("image", images[1:]), first[1:]) and features.hits == 2
    features("image", images[:1])
    assert features.misses == 4  # encoded again
    with pytest.raises(ValueError, match="feature_cache_mb must be >= 0"):
        HFBackend(str(checkpoint), feature_cache_mb=-1)


def test_hf_dtype_auto_is_what_vllm_serves_here(checkpoint, monkeypatch):
    """``dtype="auto"`` loads the (float32) checkpoint in bfloat16 where bf16 is native, as ``onellm serve --dtype
    auto`` serves it there, and in float32 where bf16 would be emulated."""
    import onellm.hardware

    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(onellm.hardware, "fast_bf16", lambda device_type, native=native: native)
        backend = HFBackend(str(checkpoint))
        assert backend.model.dtype == expected and backend.info()["dtype"] == str(expected).removeprefix("torch.")
    assert onellm.hardware.auto_dtype("cpu", "torch.bfloat16") == "bfloat16"  # a bf16 checkpoint as stored


def test_hf_rejects_a_folder_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        HFBackend(str(tmp_path))


# --- vLLM offline engine (onellm plugin) ---------------------------------------------------------------------------


@pytest.mark.slow
def test_vllm_backend_matches_hf(checkpoint, corpus, tmp_path, request):
    pytest.importorskip("vllm")
    tasks = "synth_audio_qa,synth_image_qa"
    out = tmp_path / "vllm"
    # a temp folder of its own, short enough for socket paths (107 bytes): vLLM's socket files must not outlive the run
    temp = Path(tempfile.mkdtemp(prefix="onellm-test-"))
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TMPDIR": str(temp)}
    env.pop("VLLM_RPC_BASE_PATH", None)
    # A subprocess, as a user runs it: the engine spawns processes that re-import the entry module.
    command = [sys.executable, "-m", "onellm.eval.cli", "--model", str(checkpoint), "--backend", "vllm", "--dtype",
               "float32", "--tasks", tasks, "--data-dir", f"synth={corpus}", "--output", str(out), "--no-progress"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in temp.iterdir() if p.name.startswith("onellm-rpc-") or p.is_socket()] == []
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["backend"] == "vllm"

    hf = HFBackend(str(checkpoint), dtype="float32")
    reference = evaluate([load_task(t) for t in tasks.split(",")], hf, tmp_path / "hf",
                         data_dirs=DataDirs({"synth": corpus}), progress=False, report=False)  # fmt: skip
    for task in tasks.split(","):
        assert results["n-samples"][task]["effective"] == reference["n-samples"][task]["effective"] == 3
        ours = [json.loads(line)["prediction"] for line in (out / f"samples_{task}.jsonl").read_text().splitlines()]
        ref = [
            json.loads(line)["prediction"]
            for line in (tmp_path / "hf" / f"samples_{task}.jsonl").read_text().splitlines()
        ]
        # Byte-level BPE: a random model can stop halfway through a UTF-8 character. HF decodes the dangling bytes
        # to U+FFFD, vLLM's incremental detokenizer withholds them; the tokens are the same.
        assert [p.rstrip("\ufffd") for p in ours] == [p.rstrip("\ufffd") for p in ref], task
