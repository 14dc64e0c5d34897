"""An installed modality plugin through the whole stack, with no edit in onellm (issue 12, "What it must show"):
the ``thermal`` modality of ``tests/plugins/onellm_thermal`` is validated by ``onellm data validate``, trained by
``onellm train``, served by ``onellm serve`` on the hf and (slow) the vllm engine, and scored by ``onellm eval
--api`` on a task YAML written here. (``test_modality_plugin.py`` checks the registry, schema, presets, parts and
HF generate in one process.)

Every command runs as a user runs it, in a subprocess with ``tests/plugins`` on PYTHONPATH, where the plugin is
installed (its package and its ``.dist-info`` with the entry point). This process never imports the plugin, so the
registry of the rest of the session stays the built-in one; it writes the media, manifests and YAMLs and reads the
results (safetensors, history.json, results.json)::

    onellm build tiny -> start/ (LLM redrawn at std 0.3 here: greedy tokens depend on the input)
      -> onellm data validate --model start/ train.jsonl bad.jsonl    4 kept; 2 bad files rejected, named, with why
      -> onellm train align_thermal.yaml (2 steps, projector.thermal)   runs/align_thermal/final/
      -> onellm serve final/ --engine hf   -> openai client chat with input_thermal parts; onellm eval --api
      -> onellm serve final/ --engine vllm -> the same chats, the hf server's greedy tokens (slow)
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file, save_file

from onellm.train.stage_folder import StageFolder

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"
API_KEY = "thermal-key"
MODEL = "tiny-thermal"
MAX_TOKENS = 8
HEAD = "projector.heads.thermal."  # the thermal modality's UPM head (onellm.train.groups: projector.thermal)
# Where a hot object sits in a 24 x 32 frame of 20 degC background, and the caption that says so.
SPOTS = {
    "kettle": ((4, 4), "a hot kettle in the top left corner"),
    "radiator": ((4, 24), "a warm radiator in the top right corner"),
    "mug": ((16, 4), "a hot mug in the bottom left corner"),
    "lamp": ((16, 24), "a warm lamp in the bottom right corner"),
}
CAPTION = "Provide a one-sentence caption for the provided thermal image."  # schema.caption_prompt's words


def plugin_env() -> dict[str, str]:
    # VLLM_CPU_KVCACHE_SPACE: GiB of KV cache vLLM reserves on the CPU (otherwise most of the RAM).
    return {
        **os.environ,
        "PYTHONPATH": str(PLUGINS),
        "PYTHONUNBUFFERED": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }


def onellm(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``onellm ARGS`` with the plugin installed; stdout and stderr captured."""
    command = [sys.executable, "-m", "onellm.cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=plugin_env(), capture_output=True, text=True, timeout=timeout)


def thermal_frame(spot: tuple[int, int], peak: float) -> np.ndarray:
    """``[24, 32]`` degrees Celsius: 20 degC, with an 8 x 8 object at ``spot`` (top-left corner) at ``peak``."""
    frame = np.full((24, 32), 20.0, np.float32)
    row, col = spot
    frame[row : row + 8, col : col + 8] = peak
    return frame


def caption_record(name: str, path: str, caption: str) -> dict:
    return {
        "id": name, "task": "caption", "inputs": [{"modality": "thermal", "path": path}],
        "conversation": [{"role": "user", "content": f"<thermal>\n{CAPTION}"}, {"role": "assistant", "content": caption}],
    }  # fmt: skip


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def thermal_part(array: np.ndarray) -> dict:
    return {
        "type": "input_thermal",
        "input_thermal": {"data": base64.b64encode(npy_bytes(array)).decode(), "format": "npy"},
    }


# --- servers ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(checkpoint: Path, engine: str, log: Path, timeout: float) -> Iterator[str]:
    """``onellm serve CHECKPOINT --engine ENGINE`` in its own process group (the plugin installed); yields its URL
    once ``/health`` answers 200, then SIGINTs the group (SIGKILL after 30 s). As tests/serving/conftest.py does,
    except that PYTHONPATH carries the plugin (that conftest clears it)."""
    port = free_port()
    command = [
        sys.executable, "-m", "onellm.cli", "serve", str(checkpoint), "--engine", engine, "--port", str(port),
        "--dtype", "float32", "--max-model-len", "1024", "--served-model-name", MODEL, "--api-key", API_KEY,
    ]  # fmt: skip
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, cwd=log.parent, stdout=handle, stderr=subprocess.STDOUT, env=plugin_env(), start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{engine} server exited with {process.returncode}; log:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{engine} server not healthy after {timeout:.0f} s; log:\n{log.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # engine processes left in the group, if any
        except ProcessLookupError:
            pass


def greedy_chats(url: str, frames: dict[str, np.ndarray]) -> dict[str, tuple[int, list[int], str]]:
    """One chat per thermal frame through the official openai client: (prompt tokens, greedy token ids, text)."""
    client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    out = {}
    for name, frame in frames.items():
        response = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=MAX_TOKENS, extra_body={"return_token_ids": True},
            messages=[{"role": "user", "content": [thermal_part(frame), {"type": "text", "text": "What is hot here?"}]}],
        )  # fmt: skip
        choice = response.choices[0]
        out[name] = (response.usage.prompt_tokens, choice.model_extra["token_ids"], choice.message.content)
    return out


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The corpus (media/, train.jsonl, bad.jsonl), the task folder and every command's output."""
    folder = tmp_path_factory.mktemp("thermal-plugin")
    media = folder / "corpus" / "media"
    media.mkdir(parents=True)
    records = []
    for index, (name, (spot, caption)) in enumerate(SPOTS.items()):
        np.save(media / f"{name}.npy", thermal_frame(spot, 60.0 + 15 * index))
        records.append(caption_record(name, f"media/{name}.npy", caption))
    write_jsonl(folder / "corpus" / "train.jsonl", records)
    # Two bad thermal files: an RGB-like cube instead of [H, W], and a frame with a dead (NaN) pixel.
    np.save(media / "cube.npy", np.full((8, 8, 3), 30.0, np.float32))
    dead = thermal_frame((4, 4), 80.0)
    dead[2, 2] = np.nan
    np.save(media / "dead.npy", dead)
    bad = [
        caption_record("bad-cube", "media/cube.npy", "a cube"),
        caption_record("bad-dead", "media/dead.npy", "a pixel"),
    ]
    write_jsonl(folder / "corpus" / "bad.jsonl", bad)
    return folder


@pytest.fixture(scope="module")
def start(work) -> Path:
    """``onellm build tiny`` (the plugin is built by default), its LLM's matrices redrawn at std 0.3 (seeded): at
    the preset's 0.02 a random 2-layer LLM emits the same tokens whatever the input, so an engine that dropped the
    thermal input would still "match" (tests/serving/conftest.py input_sensitive does the same in memory)."""
    folder = work / "start"
    done = onellm("build", "tiny", "--out", folder, cwd=work, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "thermal" in json.loads((folder / "config.json").read_text())["modality_configs"]
    weights = load_file(folder / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    for key in sorted(weights):
        if key.startswith("language_model.") and weights[key].ndim == 2:
            weights[key] = torch.randn(weights[key].shape, generator=generator) * 0.3
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def trained(work, start) -> tuple[Path, float]:
    """``onellm train`` on a stage YAML written here: 2 align steps of 2 thermal records, only the thermal UPM head
    trainable, from ``start``. Returns (the stage folder, seconds the command took)."""
    config = work / "align_thermal.yaml"
    config.write_text(
        f"""# 2 align steps on the plugin's modality: only its projector head learns.
name: align_thermal
recipe: align
output_dir: {json.dumps(str(work / "runs"))}
init_from: {{path: {json.dumps(str(start))}}}
seed: 0
data:
  root: {json.dumps(str(work / "corpus"))}
  val: null
  sources:
    - {{modalities: [thermal], tasks: [caption]}}
  max_length: 256
trainable:
  projector.thermal: 3.0e-3
train: {{steps: 2, batch_size: 2, warmup_steps: 1, eval_interval: 0, save_interval: 0, log_interval: 1}}
""",
        encoding="utf-8",
    )
    began = time.monotonic()
    done = onellm("train", config, cwd=work)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return work / "runs" / "align_thermal", time.monotonic() - began


@pytest.fixture(scope="module")
def hf_url(trained, work) -> Iterator[str]:
    stage, _ = trained
    with serve(StageFolder(stage).checkpoint, "hf", work / "hf_server.log", timeout=180) as url:
        yield url


# --- tests --------------------------------------------------------------------------------------------------------


def test_data_validate_keeps_thermal_records_and_names_each_bad_file(work, start):
    corpus = work / "corpus"
    done = onellm(
        "data", "validate", corpus / "train.jsonl", corpus / "bad.jsonl", "--model", start, "--max-length", "256",
        cwd=work, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # 1: something was rejected
    out = done.stdout
    assert f"{corpus / 'train.jsonl'}: kept 4, rejected 0" in out, out
    assert f"{corpus / 'bad.jsonl'}: kept 0, rejected 2 (NaN: 1, wrong shape: 1)" in out, out
    lines = {line.split(" | ")[1]: line for line in out.splitlines() if " | id bad-" in line}
    cube, dead = lines["id bad-cube"], lines["id bad-dead"]
    # The plugin's own messages: its preprocess raised them through Modality.fail with a reason code.
    assert "thermal | media/cube.npy: wrong shape:" in cube and "expected an [H, W] array" in cube, cube
    assert "found [8, 8, 3]" in cube, cube
    assert "thermal | media/dead.npy: NaN:" in dead and "1 NaN/inf value(s)" in dead, dead


def test_two_training_steps_move_the_thermal_head_only(trained, start):
    stage, _ = trained
    history = StageFolder(stage).history()
    assert history is not None and history.steps == 2
    assert [step for step, _ in history.losses] == [1, 2]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in history.losses), history.losses
    before = load_file(start / "model.safetensors")
    after = load_file(StageFolder(stage).checkpoint / "model.safetensors")
    assert sorted(before) == sorted(after)
    changed = sorted(key for key in before if not torch.equal(before[key], after[key]))
    assert any(key.endswith(".weight") for key in changed), changed  # the head's projections learned
    assert all(key.startswith(HEAD) for key in changed), changed  # LLM, encoder, experts, other heads: frozen


def test_hf_server_answers_thermal_parts_and_eval_scores_a_thermal_task(hf_url, work):
    frames = {name: np.load(work / "corpus" / "media" / f"{name}.npy") for name in SPOTS}
    answers = greedy_chats(hf_url, frames)
    assert len({prompt for prompt, _, _ in answers.values()}) == 1  # one thermal input = N+2 placeholder positions
    assert all(len(ids) == MAX_TOKENS for _, ids, _ in answers.values()), answers
    assert len({tuple(ids) for _, ids, _ in answers.values()}) >= 2, answers  # the thermal input drives the LLM

    # `onellm eval --api` through the same server: a thermal caption task, written here, read with --include-path.
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "thermal_caption.yaml").write_text(
        """task: thermal_caption
version: 1
description: Caption the thermal frames of the plugin test's corpus.
modality: thermal
task_type: caption
source:
  kind: manifest
  dataset: thermal_plugin
  manifest: train.jsonl
generation: {max_new_tokens: 8}
metrics:
  - {name: coco_caption, options: {no_java: true}}
primary_metric: cider
""",
        encoding="utf-8",
    )
    out = work / "eval"
    done = onellm(
        "eval", "--api", f"{hf_url}/v1", "--api-key", API_KEY, "--tasks", "thermal_caption", "--include-path", tasks,
        "--data-dir", f"thermal_plugin={work / 'corpus'}", "--output", out, "--batch-size", "2", "--no-progress",
        "--max-retries", "0", cwd=work, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    results = json.loads((out / "results.json").read_text())
    scores = results["results"]["thermal_caption"]
    assert results["config"]["backend"] == "openai" and results["config"]["model"] == MODEL
    assert results["n-samples"]["thermal_caption"]["effective"] == len(SPOTS)
    assert isinstance(scores["cider,none"], float) and math.isfinite(scores["cider,none"]), scores
    rows = [json.loads(line) for line in (out / "samples_thermal_caption.jsonl").read_text().splitlines()]
    assert [row["references"] for row in rows] == [[caption] for _, caption in SPOTS.values()]
    assert all(row["prediction"] for row in rows), rows  # the served model's greedy answers, one per thermal frame


@pytest.mark.slow
def test_vllm_server_gives_the_hf_servers_greedy_tokens(trained, hf_url, work):
    """The plugin's modality inside vLLM (its processor, dummy inputs at start-up, embeddings) with no edit in
    onellm: ``onellm serve --engine vllm`` answers the same chats with the hf server's tokens."""
    pytest.importorskip("vllm")
    stage, _ = trained
    frames = {name: np.load(work / "corpus" / "media" / f"{name}.npy") for name in SPOTS}
    reference = greedy_chats(hf_url, frames)
    with serve(StageFolder(stage).checkpoint, "vllm", work / "vllm_server.log", timeout=300) as url:
        candidate = greedy_chats(url, frames)
    for name, (prompt, ids, _) in reference.items():
        assert candidate[name][:2] == (prompt, ids), (name, reference[name], candidate[name])
