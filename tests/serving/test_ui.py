"""``onellm ui``: the chat page's logic without a browser, then the real page in headless Chromium.

The browser tests start ``onellm ui`` as a subprocess on 127.0.0.1 (like a user does), drive Debian's
``/usr/bin/chromium`` with Playwright (no browser download; ``tests/setup_browser.sh`` installs it) and save a
screenshot to ``$ONELLM_TEST_ARTIFACTS`` (default ``tests/artifacts/``). Without chromium they skip, unless
``ONELLM_REQUIRE_BROWSER=1``, where they fail.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_factory import npy_bytes, png_bytes

from onellm.serving.chat import parse_chat
from onellm.serving.engines import Delta, GenerationRequest
from onellm.serving.media import MediaFetcher, MediaPolicy
from onellm.serving.service import ChatService, ServiceSettings
from onellm.serving.ui import (
    AUTO,
    ChatPage,
    Turn,
    Upload,
    UploadError,
    build_messages,
    detect_modality,
    known_suffixes,
    media_part,
    name_files,
    resolve_modality,
)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# The machines running the tests have no network: without these flags Chromium stalls on its background fetches.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALL = ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]


def run(coroutine):
    return asyncio.run(coroutine)


def collect(page: ChatPage, *reply: Any) -> list:
    """Every update of ``page.reply(*reply)``, with the page's service started as the app's lifespan starts it."""

    async def gather() -> list:
        async with page.service.lifespan():
            return [item async for item in page.reply(*reply)]

    return run(gather())


class FakeEngine:
    """Streams a fixed answer in pieces and records what it was asked."""

    name = "fake"
    max_model_len = 1024

    def __init__(self, pieces: tuple[str, ...] = ("Hel", "lo", " there"), fail: Exception | None = None):
        self.pieces, self.fail = pieces, fail
        self.requests: list[GenerationRequest] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def num_unfinished(self) -> int:
        return 0

    def failure(self) -> str | None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[Delta]]:
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        for i, piece in enumerate(self.pieces):
            last = i == len(self.pieces) - 1
            yield [Delta(0, piece, [100 + i], "length" if last else None)]


def page_on(engine: FakeEngine, processor: Any, **settings: Any) -> ChatPage:
    return ChatPage(ChatService(engine, processor, ServiceSettings("tiny", **settings)))


# --- modality detection ---------------------------------------------------------------------------------
def test_detect_modality_by_extension_and_content(media_paths, tmp_path):
    # The shared sample files (tests/media_factory.py). An RGB normal-map PNG looks like a photo and an IMU
    # recording [T, 6] like a coloured point cloud [P, 6]: those two need the dropdown.
    expected = {m: m for m in ALL} | {"normal": "image", "imu": "point"}
    assert {
        m: detect_modality(media_paths[m], ALL) for m in ALL
    } == expected  # the six others: test_extended_modalities
    assert resolve_modality(media_paths["normal"], "normal", ALL) == "normal"
    assert resolve_modality(media_paths["imu"], "imu", ALL) == "imu"

    arrays = {
        "map.npy": (np.ones((32, 40)), "depth"),
        "normals.npy": (np.ones((32, 40, 3)), "normal"),
        "xyz.npy": (np.ones((100, 3)), "point"),
        "timed.npy": (np.ones((100, 7)), "imu"),
        "voxels.npy": (np.ones(2048), "fmri"),
    }
    for name, (array, modality) in arrays.items():
        (tmp_path / name).write_bytes(npy_bytes(array.astype(np.float32)))
        assert detect_modality(tmp_path / name, ALL) == modality, name
    for name, modality in {"a.JPG": "image", "b.mp3": "audio", "c.flac": "audio", "d.webm": "video"}.items():
        (tmp_path / name).write_bytes(b"whatever")  # detection by extension does not decode
        assert detect_modality(tmp_path / name, ALL) == modality
    (tmp_path / "cloud.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    (tmp_path / "walk.csv").write_text("0.1,0.2,9.8,0,0,0\n")
    assert detect_modality(tmp_path / "cloud.ply", ALL) == "point"
    assert detect_modality(tmp_path / "walk.csv", ALL) == "imu"


def test_describe_says_how_each_file_will_be_sent(tiny, media_paths, tmp_path):
    page = page_on(FakeEngine(), tiny[1])
    (tmp_path / "notes.txt").write_text("hello")
    lines = page.describe([str(media_paths["imu"]), str(media_paths["audio"]), str(tmp_path / "notes.txt")], AUTO)
    assert lines.split("\n\n") == [
        "`walk.npy` → **point** (detected; if it is imu data, pick imu in the dropdown)",
        "`tone.wav` → **audio** (detected)",
        f"`notes.txt` → ⚠️ notes.txt: unknown file type '.txt'; known: {' '.join(known_suffixes())}. "
        "Pick the modality in the dropdown to send it anyway.",
    ]
    assert page.describe([str(media_paths["imu"])], "imu") == "`walk.npy` → **imu** (chosen)"


def test_detect_modality_errors_name_the_file(media_paths, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UploadError, match=r"notes\.txt: unknown file type '\.txt'.*dropdown"):
        detect_modality(tmp_path / "notes.txt", ALL)
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UploadError, match=r"broken\.npy: not recognised as any of point, depth, normal, imu, fmri"):
        detect_modality(tmp_path / "broken.npy", ALL)
    (tmp_path / "cube.npy").write_bytes(npy_bytes(np.ones((2, 2, 2, 2), np.float32)))
    with pytest.raises(UploadError, match=r"cube\.npy: not recognised as any of .* a shape none of them takes"):
        detect_modality(tmp_path / "cube.npy", ALL)
    with pytest.raises(UploadError, match=r"tone\.wav: looks like a audio input, which this model does not take"):
        detect_modality(media_paths["audio"], ["image"])
    with pytest.raises(UploadError, match=r"cat\.png: this model does not take fmri inputs"):
        resolve_modality(media_paths["image"], "fmri", ["image"])


# --- message building ----------------------------------------------------------------------------------
def test_messages_are_what_the_server_parses(tiny, media_paths):
    """Every modality's file, as the page sends it, goes through the server's own parser, in order."""
    _, processor = tiny
    uploads = tuple(Upload(media_paths[m], m) for m in ALL)
    earlier = Turn((Upload(media_paths["image"], "image"),), "What is it?", "A cat.")
    messages, files = build_messages([earlier], Turn(uploads, "And these?"))

    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1] == {"role": "assistant", "content": "A cat."}
    assert messages[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert messages[2]["content"][-1] == {"type": "text", "text": "And these?"}
    point = messages[2]["content"][ALL.index("point")]
    assert point["type"] == "input_point_cloud" and point["input_point_cloud"]["format"] == "npy"
    assert base64.b64decode(point["input_point_cloud"]["data"]) == media_paths["point"].read_bytes()
    assert files["messages[0].content[0]"] == "cat.png"
    assert files[f"messages[2].content[{ALL.index('fmri')}]"] == "scan.npy"

    parsed = run(parse_chat(messages, processor, MediaFetcher(MediaPolicy()), max_inputs=16))
    assert [m for m, _ in parsed.inputs] == ["image", *ALL]
    assert processor.count_markers(parsed.prompt_ids) == {m: 2 if m == "image" else 1 for m in ALL}
    assert "A cat." in processor.tokenizer.decode(parsed.prompt_ids)


def test_media_part_of_a_csv_says_csv(tmp_path):
    (tmp_path / "walk.csv").write_text("0.1,0.2,9.8,0,0,0\n0.1,0.2,9.8,0,0,0\n")
    part = media_part(Upload(tmp_path / "walk.csv", "imu"))
    assert part["type"] == "input_imu" and part["input_imu"]["format"] == "csv"


def test_name_files_replaces_field_names():
    files = {"messages[2].content[0]": "cat.png"}
    message = "messages[2].content[0].image_url.url: image is 5000x5000 pixels"
    assert name_files(message, files) == "cat.png: image is 5000x5000 pixels"
    assert name_files("messages[0].content[3].input_imu: x", files) == "messages[0].content[3].input_imu: x"


# --- a turn, with a fake engine ------------------------------------------------------------------------
def test_reply_streams_the_answer_and_keeps_the_conversation(tiny, media_paths):
    _, processor = tiny
    engine = FakeEngine()
    page = page_on(engine, processor)

    updates = collect(page, [str(media_paths["image"])], "What is it?", [], [], AUTO, 16, 0.0)
    chats = [chat for chat, _, _ in updates]
    answers = [chat[-1]["content"] for chat in chats]
    assert chats[0][:2] == [
        {"role": "user", "content": {"path": str(media_paths["image"])}},
        {"role": "user", "content": "What is it?"},
    ]
    # The answer grows piece by piece, then the final update carries the status and the recorded turn.
    assert answers == ["", "Hel", "Hello", "Hello there", "Hello there"]
    chat, turns, status = updates[-1]
    assert re.match(r"3 tokens in [\d.]+ s .* finish: length · prompt: \d+ tokens · engine: fake", status)
    assert turns == [Turn((Upload(media_paths["image"], "image"),), "What is it?", "Hello there")]
    sampling = engine.requests[0].sampling
    assert (sampling.max_tokens, sampling.temperature) == (16, 0.0)

    # A second turn without a file: the model sees the first turn, its image and its answer.
    updates = collect(page, [], "And then?", chat, turns, AUTO, 16, 0.7)
    chat, turns, _ = updates[-1]
    assert len(turns) == 2 and len(chat) == 5
    second = engine.requests[1].chat
    assert [m for m, _ in second.inputs] == ["image"]
    assert "Hello there" in processor.tokenizer.decode(second.prompt_ids)


def test_reply_reports_bad_input_in_the_chat(tiny, media_paths, tmp_path):
    _, processor = tiny
    engine = FakeEngine()
    page = page_on(engine, processor, media=MediaPolicy(max_bytes=10_000))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "big.png").write_bytes(png_bytes(size=(200, 200)))
    (tmp_path / "notes.txt").write_text("hello")

    cases = {
        "broken.png": r"⚠️ \*\*Error:\*\* broken\.png: not a decodable image",
        "big.png": r"big\.png: \d+ bytes, above the 10000-byte limit per input",
        "notes.txt": r"notes\.txt: unknown file type",
    }
    for name, pattern in cases.items():
        chat, turns, status = collect(page, [str(tmp_path / name)], "What?", [], [], AUTO)[-1]
        assert re.search(pattern, chat[-1]["content"]), chat[-1]
        assert chat[-1]["role"] == "assistant" and turns == [] and status == "Not sent."
    # A file the dropdown forces onto the wrong modality fails in preprocessing, also as a message.
    chat, _, _ = collect(page, [str(media_paths["image"])], "", [], [], "fmri")[-1]
    assert re.search(r"cat\.png: .*\.npy", chat[-1]["content"]), chat[-1]
    assert engine.requests == []  # nothing reached the engine

    _, _, status = collect(page, [], "  ", [], [], AUTO)[-1]
    assert status == "Type a question or attach a file."


def test_reply_survives_unexpected_failures(tiny, media_paths, monkeypatch):
    _, processor = tiny
    failing = page_on(FakeEngine(fail=RuntimeError("engine died")), processor)
    chat, turns, status = collect(failing, [], "Hi", [], [], AUTO)[-1]
    assert chat[-1]["content"] == "⚠️ **Error:** generation failed: RuntimeError: engine died"
    assert turns == [] and status == "Failed."

    def broken_decoder(*args, **kwargs):
        raise RuntimeError("decoder crashed")

    page = page_on(FakeEngine(), processor)
    monkeypatch.setattr(processor, "preprocess", broken_decoder)
    chat, turns, status = collect(page, [str(media_paths["image"])], "Hi", [], [], AUTO)[-1]
    assert chat[-1]["content"] == "⚠️ **Error:** could not read the input (RuntimeError: decoder crashed)"
    assert turns == [] and status == "Not sent."


def test_an_empty_answer_is_shown_as_such_and_kept_empty(tiny):
    _, processor = tiny
    chat, turns, _ = collect(page_on(FakeEngine(pieces=("",)), processor), [], "Hi", [], [], AUTO)[-1]
    assert chat[-1]["content"] == "*(the model ended its answer at once)*"
    assert turns == [Turn((), "Hi", "")]


# --- the real page in a browser ---------------------------------------------------------------------------
def artifacts_dir() -> Path:
    folder = Path(os.environ.get("ONELLM_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _no_browser(reason: str) -> None:
    if os.environ.get("ONELLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (ONELLM_REQUIRE_BROWSER=1; run tests/setup_browser.sh)")
    pytest.skip(f"{reason}; run tests/setup_browser.sh (or set ONELLM_REQUIRE_BROWSER=1 to fail instead)")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        _no_browser(f"no browser: {CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        _no_browser("playwright is not installed (the dev extra)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("page_files")
    (folder / "cat.png").write_bytes(png_bytes(size=(96, 96), seed=3))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return {"image": folder / "cat.png", "broken": folder / "broken.png"}


def onellm_ui(checkpoint: Path, engine: str, port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "onellm.cli", "ui", str(checkpoint)),
        *("--engine", engine, "--port", str(port), "--dtype", "float32", "--max-model-len", "1024"),
    ]


# Records every distinct text of the status line (its Markdown, not Gradio's progress timer beside it): the
# streamed "Generating… N tokens" states are gone by the end, and each sent turn opens with "Preprocessing…".
_WATCH_STATUS = """() => {
    window.statuses = [];
    const status = document.querySelector('#chat-status');
    const record = () => {
        const markdown = status.querySelector('[data-testid="markdown"]');
        const text = markdown ? markdown.innerText.trim() : '';
        if (text && text !== window.statuses[window.statuses.length - 1]) window.statuses.push(text);
    };
    new MutationObserver(record).observe(status, {subtree: true, childList: true, characterData: true});
}"""

_TURNS_DONE = """() => {
    let done = 0, open = false;
    for (const text of window.statuses) {
        if (text.startsWith('Preprocessing')) open = true;
        else if (open && (text.includes('tokens/s') || text === 'Not sent.' || text === 'Failed.')) { done++; open = false; }
    }
    return done;
}"""


def _finished(page, turns: int, timeout_s: float) -> str:
    """Wait until ``turns`` sent turns have ended (answered or refused); the last one's status line."""
    page.wait_for_function(f"({_TURNS_DONE})() >= {turns}", timeout=timeout_s * 1000)
    return page.evaluate("statuses[statuses.length - 1]")


def _chat_in_browser(browser, url: str, files: dict[str, Path], screenshot: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 1100})
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        textbox = page.locator("#chat-input textarea")
        textbox.wait_for(timeout=60_000)
        page.evaluate(_WATCH_STATUS)

        # Turn 1: a PNG and a question; the answer streams in.
        page.locator("#chat-input input[type=file]").set_input_files(files["image"])
        page.locator("#detected").get_by_text("cat.png → image (detected").wait_for(timeout=30_000)
        textbox.fill("What is in this picture?")
        textbox.press("Enter")
        status = _finished(page, 1, timeout_s=120)
        answers = page.locator('[data-testid="bot"]')
        assert answers.count() == 1
        first = answers.first.inner_text().strip()
        assert first and "Error" not in first, first
        assert page.locator('[data-testid="user"] img').count() == 1  # the uploaded image is shown
        tokens = int(re.match(r"(\d+) tokens in", status).group(1))
        streamed = [int(n) for n in re.findall(r"Generating… (\d+) tokens", " | ".join(page.evaluate("statuses")))]
        assert any(0 < n < tokens for n in streamed), f"no partial answer was shown: {page.evaluate('statuses')}"
        prompt_1 = int(re.search(r"prompt: (\d+) tokens", status).group(1))
        page.screenshot(path=str(screenshot), full_page=True)

        # Turn 2, no file: the conversation (image + first answer) is part of the prompt.
        textbox.fill("Say more.")
        textbox.press("Enter")
        status = _finished(page, 2, timeout_s=120)
        assert answers.count() == 2 and answers.nth(1).inner_text().strip()
        assert int(re.search(r"prompt: (\d+) tokens", status).group(1)) > prompt_1 + tokens // 2

        # Turn 3, a broken file: an error in the chat, and the page keeps working.
        page.locator("#chat-input input[type=file]").set_input_files(files["broken"])
        page.locator("#detected").get_by_text("broken.png → image (detected").wait_for(timeout=30_000)
        textbox.fill("And this one?")
        textbox.press("Enter")
        assert _finished(page, 3, timeout_s=60) == "Not sent."
        assert answers.count() == 3
        error = answers.nth(2).inner_text()
        assert "Error" in error and "broken.png: not a decodable image" in error, error
        page.screenshot(path=str(screenshot.with_name(screenshot.stem + "_end.png")), full_page=True)
    except Exception:
        page.screenshot(path=str(screenshot.with_name(screenshot.stem + "_failed.png")), full_page=True)
        raise
    finally:
        page.close()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_chat_page_in_a_browser(engine, browser, checkpoint, page_files, kit, tmp_path, monkeypatch):
    """``onellm ui`` on the tiny checkpoint: upload a PNG, ask, watch the answer stream, ask again, send a broken
    file. Screenshots land in the artifacts folder: ``ui_chat_<engine>.png`` after the first answer,
    ``ui_chat_<engine>_end.png`` after the error."""
    if engine == "vllm":
        pytest.importorskip("vllm")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2-core CI machines: one thread generates fastest (hf_engine.py)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # uploads land here
    port = kit.free_port()
    server = kit.start_server(onellm_ui(checkpoint, engine, port), tmp_path / "ui.log", port, timeout=300)
    try:
        _chat_in_browser(browser, server.url, page_files, artifacts_dir() / f"ui_chat_{engine}.png")
    finally:
        kit.stop_server(server)


@pytest.mark.slow
def test_chat_page_opens_on_a_small_preset_checkpoint(
    browser, small_checkpoint, page_files, kit, tmp_path, monkeypatch
):
    """``onellm ui CKPT`` as the README writes it (default engine: vLLM) on a checkpoint the training recipes wrote
    from the real small preset (DINOv2 ViT-S/14 + SmolLM2-135M): the same three turns as above. Screenshots:
    ``ui_chat_small.png`` and ``ui_chat_small_end.png``."""
    pytest.importorskip("vllm")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    port = kit.free_port()
    command = [sys.executable, "-m", "onellm.cli", "ui", str(small_checkpoint), "--port", str(port)]
    server = kit.start_server(command, tmp_path / "ui.log", port, timeout=300)
    try:
        assert "(engine vllm)" in server.log.read_text()
        _chat_in_browser(browser, server.url, page_files, artifacts_dir() / "ui_chat_small.png")
    finally:
        kit.stop_server(server)
