"""Data parallelism: 2 processes x batch b (torchrun, gloo on CPU) = 1 process x batch 2b = 1 process x batch b x 2
accumulation steps, step by step (the loss is normalised over the label tokens of the whole global batch)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from onellm import OneLLMForConditionalGeneration
from onellm.train.config import load_stage
from onellm.train.recipes import run_stage

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
STEPS = 5


def curve(stage_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def projector(stage_dir: Path) -> dict[str, torch.Tensor]:
    return OneLLMForConditionalGeneration.from_pretrained(str(stage_dir / "final")).projector.state_dict()


def setup(synth_tiny, out: Path, quick, **more) -> dict:
    # align_av3d straight from the preset: four modalities, per-source batches, audio/point tokenizers training.
    # LayerNorm heads: the default heads' running feature statistics see each micro-batch / process share on its
    # own, so their forward depends on how a batch is split (about 1e-4 of the loss); these tests check the loop's
    # loss and gradient arithmetic, which must not.
    overrides = {"init_from.stage": None, "init_from.preset": "tiny", "init_from.preset_args": {"norm": "layernorm"}}
    return quick(synth_tiny, out, steps=STEPS, **{**overrides, **more})


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch(synth_tiny, tmp_path, quick, cli, subprocess_env):
    config = TINY / "align_av3d.yaml"
    one = setup(synth_tiny, tmp_path / "one", quick, **{"train.batch_size": 8})
    two = setup(synth_tiny, tmp_path / "two", quick, **{"train.batch_size": 4})
    single = subprocess.run(cli(config, one), env=subprocess_env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(cli(config, two, nproc=2), env=subprocess_env, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a, b = curve(tmp_path / "one" / "align_av3d"), curve(tmp_path / "two" / "align_av3d")
    assert len(a) == len(b) == STEPS
    assert a == pytest.approx(b, abs=1e-4)
    assert len(set(round(x, 3) for x in a)) > 1  # a real curve, not a constant
    summary = (tmp_path / "two" / "align_av3d" / "summary.md").read_text()
    assert "global batch 8 (4 x 2 process(es) x 1 accumulation)" in summary
    pa, pb = projector(tmp_path / "one" / "align_av3d"), projector(tmp_path / "two" / "align_av3d")
    assert all(torch.allclose(pa[k], pb[k], atol=1e-4) for k in pa)


def test_gradient_accumulation_matches_the_full_batch(synth_tiny, tmp_path, quick, accelerator):
    full = load_stage(TINY / "align_av3d.yaml", setup(synth_tiny, tmp_path / "full", quick, **{"train.batch_size": 8}))
    accum = load_stage(
        TINY / "align_av3d.yaml",
        setup(synth_tiny, tmp_path / "accum", quick, **{"train.batch_size": 4, "train.grad_accum": 2}),
    )
    run_stage(full, accelerator)
    run_stage(accum, accelerator)
    assert curve(full.stage_dir) == pytest.approx(curve(accum.stage_dir), abs=1e-4)
