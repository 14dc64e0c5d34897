"""The app in-process (FastAPI's TestClient) on the real hf engine: the per-request timeout, and the hf engine's
incremental detokenisation (stop strings, incomplete UTF-8)."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoProcessor, AutoTokenizer

import onellm  # noqa: F401
from onellm.serving.app import ServerSettings, build_app
from onellm.serving.engines import EngineSettings
from onellm.serving.hf_engine import HFEngine, _TextTracker


@pytest.fixture(scope="module")
def app_client(checkpoint):
    engine = HFEngine(EngineSettings(checkpoint=checkpoint, dtype="float32"))
    settings = ServerSettings(served_model_name="tiny", request_timeout=0.5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the engine leaves this process's threads alone
        with TestClient(build_app(engine, AutoProcessor.from_pretrained(checkpoint), settings)) as client:
            yield client


def test_request_timeout_gives_504_and_the_server_goes_on(app_client, media, parts):
    # 900 forced tokens take the hf engine seconds, far beyond the 0.5 s budget.
    body = {"model": "tiny", "messages": parts.user(parts.image(media["png"])), "max_tokens": 900, "min_tokens": 900}
    response = app_client.post("/v1/chat/completions", json=body)
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    with app_client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        assert stream.status_code == 200  # the first token came in time; the timeout hits mid-stream
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
    quick = app_client.post("/v1/chat/completions", json={**body, "max_tokens": 3, "min_tokens": 0})
    assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] <= 3


def _stream(tracker: _TextTracker, ids: list[int]) -> str:
    return "".join(tracker.add([token]) for token in ids) + tracker.finish()


def test_stop_strings_are_cut_and_never_leak_while_streaming(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = "a red circle is on the left and a blue square"
    ids = tokenizer.encode(text, add_special_tokens=False)
    tracker = _TextTracker(tokenizer, ("on the",))
    pieces = [tracker.add([token]) for token in ids]
    assert "".join(pieces) == text[: text.index("on the")] and tracker.stopped
    assert tracker.finish() == ""
    assert _stream(_TextTracker(tokenizer, ()), ids) == text  # no stop: everything, once


def test_incomplete_utf8_is_held_back(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = "naïve café ☕"  # bytes outside the tiny BPE's merges: several tokens per character
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)
    pieces = []
    tracker = _TextTracker(tokenizer, ())
    for token in ids:
        pieces.append(tracker.add([token]))
    pieces.append(tracker.finish())
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
