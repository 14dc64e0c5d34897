"""The app in-process (FastAPI's TestClient) on the real hf engine: the per-request timeout, inputs that once
crashed the server (500s found while building tests/reliability), and the hf engine's incremental detokenisation
(stop strings, incomplete UTF-8)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from media_factory import npy_bytes
from transformers import AutoProcessor, AutoTokenizer

import onellm  # noqa: F401
from onellm.serving.app import ServerSettings, build_app
from onellm.serving.engines import EngineSettings
from onellm.serving.hf_engine import HFEngine, _TextTracker
from onellm.serving.media import MediaPolicy


@pytest.fixture(scope="module")
def app_client(checkpoint, tmp_path_factory):
    engine = HFEngine(EngineSettings(checkpoint=checkpoint, dtype="float32"))
    # file: URLs and one http(s) host allowed, so that their URL parsing is reached (nothing is fetched here)
    media = MediaPolicy(allowed_local_path=tmp_path_factory.mktemp("app_media"), allowed_domains=frozenset({"a.test"}))
    settings = ServerSettings(served_model_name="tiny", request_timeout=0.5, media=media)
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


def _part(part_type: str, payload: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": part_type, part_type: payload}]}]


def _image_url(url: str) -> list[dict]:
    return _part("image_url", {"url": url})


HUGE_FMRI = base64.b64encode(npy_bytes(np.full(2048, 3e38, np.float32))).decode()  # finite, float32's range


# (case, messages or a raw body, extra fields, expected status, a word the error message must contain)
ONCE_500 = [
    ("temperature 1e-40 (logits / T overflowed to inf)", "hi", {"temperature": 1e-40}, 200, ""),
    ("role that is a list", [{"role": [], "content": "hi"}], {}, 400, "role"),
    ("part type that is an object", [{"role": "user", "content": [{"type": {}}]}], {}, 400, "content part type"),
    (
        "unpaired surrogate in text",
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
        {},
        400,
        "surrogate",
    ),
    ("NUL byte in a file: URL", _image_url("file:///tmp/%00.png"), {}, 400, "malformed file: URL"),
    ("bracket in a file: URL", _image_url("file://[x/a.png"), {}, 400, "malformed file: URL"),
    ("bracket in an http URL", _image_url("http://[::1/a.png"), {}, 400, "malformed URL"),
    ("port out of range", _image_url("http://a.test:99999/a.png"), {}, 400, "malformed URL"),
    (
        "fMRI voxels near 3e38 (z-scoring overflowed; float64 now)",
        _part("input_fmri", {"data": HUGE_FMRI}),
        {},
        200,
        "",
    ),
    ("JSON nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, {}, 400, "nested"),
]


@pytest.mark.parametrize(
    ("messages", "extra", "status", "word"), [row[1:] for row in ONCE_500], ids=[r[0] for r in ONCE_500]
)
def test_inputs_that_once_gave_500(app_client, messages, extra, status, word):
    if isinstance(messages, bytes):
        response = app_client.post("/v1/chat/completions", content=messages)
    else:
        messages = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
        body = {"model": "tiny", "messages": messages, "max_tokens": 2, **extra}
        response = app_client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text[:300]
    if status != 200:
        assert word in response.json()["error"]["message"], response.text[:300]


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


# The template checkpoints carried before 2026-12-06: parts in the client's order, so a text-first message put its
# question before the image.
CLIENT_ORDER_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% else %}{{ '<' + part['type'] + '>\\n' }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_serve_warns_about_a_checkpoint_whose_template_puts_a_text_first_question_before_its_image(
    checkpoint, tmp_path, caplog
):
    """``onellm serve`` / ``onellm ui`` load the processor through ``load_processor``: a checkpoint saved with the
    old template is named in a warning that says how to update it; a current one loads silently."""
    import shutil

    from onellm.processing import puts_inputs_first
    from onellm.serving.cli import load_processor

    with caplog.at_level("WARNING", logger="onellm.serve"):
        assert puts_inputs_first(load_processor(checkpoint))
    assert not caplog.records
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    (old / "chat_template.jinja").write_text(CLIENT_ORDER_TEMPLATE, encoding="utf-8")
    with caplog.at_level("WARNING", logger="onellm.serve"):
        processor = load_processor(old)
    assert not puts_inputs_first(processor)
    text_first = [{"role": "user", "content": [{"type": "text", "text": "Q?"}, {"type": "image"}]}]
    assert processor.apply_chat_template(text_first).endswith("user\nQ?<image>\n<|im_end|>\n<|im_start|>assistant\n")
    [record] = caplog.records
    assert str(old) in record.getMessage() and "onellm.processing.CHAT_TEMPLATE" in record.getMessage()
