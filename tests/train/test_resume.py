"""SIGKILL during a stage, then the same command again: it resumes from the last checkpoint and ends exactly where
an uninterrupted run ends (weights, optimizer, schedule, RNG and data position all restored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from onellm import OneLLMForConditionalGeneration

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def losses(stage_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"duplicate metric rows: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def kill_after_checkpoint(command: list[str], env: dict, checkpoint: Path, timeout: float = 240) -> str:
    """Start ``command``, SIGKILL it as soon as ``checkpoint`` is complete; returns its stderr so far."""
    log = checkpoint.parents[3] / f"killed-{checkpoint.parents[1].name}.log"  # beside the output dir
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (checkpoint / "state.json").is_file():
            assert process.poll() is None, f"run ended before its first checkpoint:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return log.read_text()


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_and_matches_an_uninterrupted_run(
    synth_tiny, tmp_path, quick, cli, subprocess_env
):
    config = TINY / "align_image.yaml"
    steps = 12
    reference = quick(synth_tiny, tmp_path / "reference", steps=steps, **{"train.save_interval": 3})
    subprocess.run(cli(config, reference), env=subprocess_env, check=True, capture_output=True)

    overrides = quick(synth_tiny, tmp_path / "killed", steps=steps, **{"train.save_interval": 3})
    stage = tmp_path / "killed" / "align_image"
    kill_after_checkpoint(cli(config, overrides), subprocess_env, stage / "checkpoints" / "step-00000003")
    assert not (stage / "DONE").exists() and not (stage / "final").exists()
    # whatever was on disk at the kill is a complete checkpoint or a temp dir, never a broken checkpoint
    for entry in (stage / "checkpoints").iterdir():
        if entry.name.startswith("step-"):
            assert json.loads((entry / "state.json").read_text())["step"] == int(entry.name[5:])
            assert load_file(str(entry / "trainable.safetensors"))
        else:
            assert entry.name.startswith(".tmp-")
    last = max(int(p.name[5:]) for p in (stage / "checkpoints").glob("step-*"))

    again = subprocess.run(cli(config, overrides), env=subprocess_env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {stage / 'checkpoints' / f'step-{last:08d}'} (step {last})" in again.stderr
    assert (stage / "DONE").is_file()
    assert not list((stage / "checkpoints").glob(".tmp-*"))

    resumed, uninterrupted = losses(stage), losses(tmp_path / "reference" / "align_image")
    assert list(resumed) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-6), f"step {step}"
    a = OneLLMForConditionalGeneration.from_pretrained(str(stage / "final")).projector.state_dict()
    b = OneLLMForConditionalGeneration.from_pretrained(
        str(tmp_path / "reference/align_image/final")
    ).projector.state_dict()
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    history = json.loads((stage / "history.json").read_text())
    assert [s for s, _ in history["losses"]] == list(range(1, steps + 1))


@pytest.mark.slow
def test_a_killed_curriculum_skips_finished_stages_and_resumes_the_interrupted_one(
    synth_tiny, tmp_path, quick, cli, subprocess_env
):
    overrides = quick(synth_tiny, tmp_path / "runs", steps=6, **{"train.save_interval": 2})
    command = cli(TINY / "curriculum.yaml", overrides)
    av3d = tmp_path / "runs" / "align_av3d"
    kill_after_checkpoint(command, subprocess_env, av3d / "checkpoints" / "step-00000002")
    again = subprocess.run(command, env=subprocess_env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage align_image: already finished" in again.stderr
    assert "stage build_upm: already finished" in again.stderr
    assert f"resumed from {av3d / 'checkpoints'}" in again.stderr
    assert list(losses(av3d)) == [1, 2, 3, 4, 5, 6]
    for name in ("align_av3d", "align_rest", "instruct"):
        assert (tmp_path / "runs" / name / "DONE").is_file()
