"""SIGKILL soak: a training stage (tiny align_image, ``python -m onellm.train``) is killed with SIGKILL at five
random moments and started again with the same command each time. Every restart must resume from the newest
complete checkpoint on disk (never from scratch, never from a half-written one), the sixth run must finish, the final
checkpoint must load and give finite logits, and no temporary checkpoint directory may be left behind.

Kill moments (seeded): each run is killed at a random point of the steps left, measured in steps so that it holds
on a machine of any speed: once the run has logged a random target step (uniform over the next 1/(kills left + 1) of
the remaining steps), plus a random 0-50 ms (about one step). Start-up (~10 s of imports) is not what is tested and
would eat the time budget. A checkpoint is written every second step (``save_interval: 2``), about a quarter of the
stage's wall time, so any kill may land inside a checkpoint write; kills 2 and 4 are aimed there: after their target
step they wait for the next checkpoint's temp dir to appear and strike a random 0-3 ms later, while its files are
being written and fsynced (~10 ms).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onellm import OneLLMForConditionalGeneration, OneLLMProcessor

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "align_image.yaml"
STEPS = 160  # ~22 steps/s on 2 cores with a checkpoint every second step: ~7 s of training
KILLS = 5
JITTER_S = 0.05  # after the target step: about one step (44 ms with its share of checkpointing)
DURING_WRITE = (1, 3)  # kills (0-based) aimed at a checkpoint write
SEED = 20261122
RUN_TIMEOUT_S = 120


@dataclass
class Kill:
    target: int  # the step after which the kill came
    jitter_s: float  # how long after the target step (or after the checkpoint write began)
    resumed_from: int  # the step this run resumed from (0: the start)
    last_logged_step: int  # the newest metrics row when the kill landed
    newest_checkpoint: int  # the newest complete checkpoint on disk after the kill (0: none)
    partial: list[str]  # temp dirs the kill left (a checkpoint write cut short)
    aimed: bool  # aimed at a checkpoint write


def complete_checkpoints(folder: Path) -> list[int]:
    """Steps of the complete resumable checkpoints in ``folder``, each checked for consistency."""
    steps = []
    for entry in sorted(folder.glob("step-*")) if folder.is_dir() else []:
        state = entry / "state.json"
        if not state.is_file():  # written last: without it the directory is not a checkpoint
            continue
        step = int(entry.name[len("step-") :])
        assert json.loads(state.read_text())["step"] == step, f"{entry}: state.json names another step"
        assert load_file(str(entry / "trainable.safetensors")), f"{entry}: no trainable weights"
        steps.append(step)
    return steps


def temporary_entries(stage: Path) -> list[str]:
    """What a writer cut short leaves: ``.tmp-*`` / ``.old-*`` directories (checkpoints, final/)."""
    return sorted(str(p.relative_to(stage)) for p in stage.rglob(".*") if p.name.startswith((".tmp-", ".old-")))


def last_logged_step(metrics: Path, since: float) -> int:
    """The newest step in ``metrics.jsonl`` if this run (started at ``since``) has written it, else -1."""
    try:
        if metrics.stat().st_mtime < since:  # rows of an earlier, killed run; the new run has not truncated them
            return -1
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError):  # a row being written
            continue
    return -1


def run_and_kill(
    command: list[str], env: dict, log: Path, stage: Path, target: int, jitter_s: float, during_write: bool
) -> int:
    """Start ``command``; once it has logged step ``target``, wait ``jitter_s`` and SIGKILL it (``during_write``:
    first wait for the next checkpoint's temp dir to appear). Returns the newest step it logged."""
    metrics = stage / "metrics.jsonl"
    launched = time.time()
    with log.open("w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while last_logged_step(metrics, launched) < target:
            assert process.poll() is None, f"the run ended before step {target}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"step {target} not reached in time"
            time.sleep(0.002)
        if during_write:
            while not any(p.name.startswith(".tmp-") for p in (stage / "checkpoints").iterdir()):
                assert process.poll() is None and time.monotonic() < deadline, "no checkpoint write to kill"
        time.sleep(jitter_s)
        assert process.poll() is None, "the run finished before its kill"
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return last_logged_step(metrics, launched)


def resumed_step(log: str, checkpoints: Path) -> int:
    """The step a run says it resumed from (0 when it started from scratch)."""
    found = re.findall(rf"resumed from {re.escape(str(checkpoints))}/step-(\d{{8}}) \(step (\d+)\)", log)
    assert len(found) <= 1, found
    return int(found[0][1]) if found else 0


def check_cleaned(log: str, previous: Kill | None) -> None:
    """The run after a kill that cut a checkpoint write short deleted its temp dir before resuming."""
    for entry in previous.partial if previous else []:
        if entry.startswith("checkpoints/"):
            assert f"removed incomplete checkpoint {Path(entry).name}" in log, entry


def test_five_sigkills_then_the_stage_finishes_from_its_checkpoints(synth_tiny, quick, cli, tmp_path, capsys):
    started = time.monotonic()
    output = tmp_path / "runs"
    stage = output / "align_image"
    checkpoints, metrics = stage / "checkpoints", stage / "metrics.jsonl"
    command = cli(CONFIG, quick(synth_tiny, output, steps=STEPS))  # checkpoints every 2 steps, logs every step
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    rng = random.Random(SEED)

    kills: list[Kill] = []
    expected_resume = 0
    for i in range(KILLS):
        log = tmp_path / f"run-{i}.log"
        target = expected_resume + rng.randint(1, (STEPS - expected_resume) // (KILLS - i + 1))
        jitter = rng.uniform(0, 0.003 if i in DURING_WRITE else JITTER_S)
        logged = run_and_kill(command, env, log, stage, target, jitter, i in DURING_WRITE)
        text = log.read_text()
        assert resumed_step(text, checkpoints) == expected_resume, f"run {i} did not resume from {expected_resume}"
        check_cleaned(text, kills[-1] if kills else None)
        assert not (stage / "DONE").exists()
        newest = max(complete_checkpoints(checkpoints), default=0)
        assert newest >= expected_resume, "a complete checkpoint disappeared"
        kills.append(Kill(target, jitter, expected_resume, logged, newest, temporary_entries(stage), i in DURING_WRITE))
        expected_resume = newest

    final_log = tmp_path / "run-final.log"
    with final_log.open("w") as handle:
        finished = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
    text = final_log.read_text()
    assert finished.returncode == 0, text[-3000:]
    assert resumed_step(text, checkpoints) == expected_resume
    assert expected_resume > 0, "no checkpoint survived five kills"
    check_cleaned(text, kills[-1])
    assert any(k.partial for k in kills), "no kill cut a checkpoint write short"

    # the step counter went forward across the kills, and every step was trained exactly once in the end
    assert [k.resumed_from for k in kills] == sorted(k.resumed_from for k in kills)
    rows = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert rows == list(range(1, STEPS + 1))
    assert [s for s, _ in json.loads((stage / "history.json").read_text())["losses"]] == list(range(1, STEPS + 1))

    # nothing half-written is left that a later resume (or a curriculum's next stage) could pick up
    assert (stage / "DONE").is_file()
    assert temporary_entries(stage) == []
    assert complete_checkpoints(checkpoints)[-1] == STEPS
    assert all(p.name.startswith("step-") for p in checkpoints.iterdir())

    model = OneLLMForConditionalGeneration.from_pretrained(str(stage / "final")).eval()
    processor = OneLLMProcessor.from_pretrained(str(stage / "final"))
    image = sorted((synth_tiny / "media" / "image").glob("*.png"))[0]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    )
    with torch.no_grad():
        logits = model(**processor(text=prompt, image=[str(image)])).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size and torch.isfinite(logits).all()

    with capsys.disabled():
        print(f"\nkill soak ({time.monotonic() - started:.0f} s, {STEPS} steps, checkpoint every 2):")
        for i, k in enumerate(kills):
            when = "the next checkpoint write began" if k.aimed else f"step {k.target}"
            cut = f", cut short: {k.partial}" if k.partial else ""
            print(
                f"  kill {i + 1} (run resumed from {k.resumed_from}, target step {k.target}): {k.jitter_s * 1000:.1f} "
                f"ms after {when}; last logged step {k.last_logged_step}, newest checkpoint "
                f"{k.newest_checkpoint}{cut}"
            )
        print(f"  final run resumed from {expected_resume} and finished")
