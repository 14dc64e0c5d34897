"""Does the projector keep its input dependence through alignment? (issue 11's collapse, on the tiny preset)

With a LayerNorm after each projection (the official OneLLM layout) a few Adam steps grow the common component of
the encoder features and the LayerNorm squashes what differs between inputs: the outputs drift towards one soft
prompt. The default head standardises the features instead. Measured here (12 steps, batch 8, lr 3e-3, seeds 0-2,
generator 1.1 corpus): "standardize" keeps 0.17 / 0.30 / 0.25 of its relative spread (0.24 on average), "layernorm"
0.12 / 0.15 / 0.09 (0.12). One seed alone is a weak comparison: over seeds 0-4 the per-seed ratio ranged 1.3-2.8.
The issue's bar (at least half of the initial spread) is not met yet on the tiny preset: that test is a strict
xfail, so it reports when it starts to hold.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from onellm import OneLLMForConditionalGeneration
from onellm.diagnose import spread_on_split
from onellm.instruct_data.schema import read_manifest
from onellm.projectors.upm import FeatureStandardizer
from onellm.train.common import load_start
from onellm.train.config import load_stage
from onellm.train.recipes import run_stage

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def _spread(model, processor, data: Path, train_mode: bool = False) -> float:
    model.train(train_mode)
    with torch.no_grad():
        return spread_on_split(model, processor, read_manifest(data / "train.jsonl"), data, "image", limit=32)[0]


SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def spreads(synth_tiny, tmp_path_factory, accelerator, quick) -> dict[str, list[tuple[float, float]]]:
    """layout -> per seed (spread of the starting projector, spread after a 12-step image alignment)."""
    out = {}
    layouts = {
        "standardize": {"norm": "standardize"},
        "layernorm": {"norm": "layernorm"},
    }
    for name, preset_args in layouts.items():
        out[name] = []
        for seed in SEEDS:
            overrides = quick(
                synth_tiny,
                tmp_path_factory.mktemp(f"{name}-{seed}"),
                steps=12,
                **{
                    "seed": seed,
                    "init_from.preset_args": preset_args,
                    "train.batch_size": 8,
                    "train.save_interval": 0,
                    "train.warmup_steps": 0,
                    "train.schedule": "constant",
                },
            )
            stage = load_stage(TINY / "align_image.yaml", overrides)
            start, processor = load_start(stage)  # exactly the model the stage starts from
            _spread(start, processor, synth_tiny, train_mode=True)  # the statistics training gathers first
            before = _spread(start, processor, synth_tiny)
            with contextlib.redirect_stderr(io.StringIO()):
                outputs = run_stage(stage, accelerator)
            trained = OneLLMForConditionalGeneration.from_pretrained(outputs["checkpoint"])
            out[name].append((before, _spread(trained, processor, synth_tiny)))
    return out


def _kept(runs: list[tuple[float, float]]) -> float:
    """The mean over seeds of the fraction of the initial spread that is left after training."""
    return sum(after / before for before, after in runs) / len(runs)


def test_standardized_projector_keeps_more_of_its_spread_than_the_layernorm_layout(spreads):
    for name, runs in spreads.items():
        for seed, (before, after) in zip(SEEDS, runs, strict=True):
            assert before > 0.3, f"{name}, seed {seed}: starts at {before:.3f}"  # both start input-dependent
            if name == "layernorm":  # the collapse this guards against, on every seed
                assert after < 0.5 * before, f"layernorm, seed {seed}: {before:.3f} -> {after:.3f}"
    kept, kept_layernorm = _kept(spreads["standardize"]), _kept(spreads["layernorm"])
    assert kept > 1.5 * kept_layernorm, f"standardize kept {kept:.2f} of its spread, layernorm {kept_layernorm:.2f}"


@pytest.mark.xfail(strict=True, reason="issue 11: tiny preset keeps ~0.24 of its spread after 12 steps, target 0.5")
def test_short_alignment_keeps_half_of_the_initial_spread(spreads):
    kept = _kept(spreads["standardize"])
    assert kept >= 0.5, f"the spread fell to {kept:.2f} of its initial value (mean over seeds {SEEDS})"


@pytest.mark.slow
def test_small_preset_alignment_keeps_at_least_half_of_the_initial_spread(tmp_path, accelerator):
    """The shipped layout on real weights (SmolLM2-135M + DINOv2, input pooled to 16 regions, per-token MLP
    experts): 12 steps of ``configs/small/align_image.yaml``. Measured: 0.52 -> 0.92 after the demo's 150 steps.
    (On the tiny preset's random weights this layout falls like the others, 1.83 -> 0.28 in 12 steps: random
    features carry nothing the task can use.)"""
    from onellm.instruct_data.synth import synthesize

    data = tmp_path / "corpus"
    synthesize(data, per_modality=40, seed=0, modalities=["image"], workers=1)
    overrides = {
        "data.root": str(data),
        "output_dir": str(tmp_path / "run"),
        "train.steps": 12,
        "train.batch_size": 8,
        "train.warmup_steps": 1,
        "train.eval_interval": 0,
        "train.eval_samples": 2,
        "train.save_interval": 0,
    }
    stage = load_stage(TINY.parent / "small" / "align_image.yaml", overrides)
    start, processor = load_start(stage)
    _spread(start, processor, data, train_mode=True)
    before = _spread(start, processor, data)
    with contextlib.redirect_stderr(io.StringIO()):
        outputs = run_stage(stage, accelerator)
    after = _spread(OneLLMForConditionalGeneration.from_pretrained(outputs["checkpoint"]), processor, data)
    assert before > 0.1, before
    assert after >= 0.5 * before, f"spread fell from {before:.4f} to {after:.4f}"


def test_standardizer_learns_the_feature_statistics_and_keeps_them_for_inference():
    torch.manual_seed(0)
    norm = FeatureStandardizer(4)
    x = torch.randn(3, 5, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + torch.tensor([5.0, -1.0, 0.0, 2.0])
    assert torch.equal(norm.eval()(x), x)  # no statistics yet: identity
    norm.train()
    for part in x.split(1):  # three batches: the running statistics equal those of all the tokens at once
        norm(part)
    flat = x.reshape(-1, 4)
    torch.testing.assert_close(norm.mean, flat.mean(0))
    torch.testing.assert_close(norm.var, flat.var(0, unbiased=False))
    out = norm.eval()(x)
    torch.testing.assert_close(out.reshape(-1, 4).mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reshape(-1, 4).std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    frozen = norm.mean.clone()
    norm(x * 10)  # eval mode: no update
    assert torch.equal(norm.mean, frozen)


def test_a_head_copied_to_a_new_modality_forgets_the_image_statistics():
    from onellm.projectors import UniversalProjectionModule, expand_experts

    upm = UniversalProjectionModule(
        ["image"], in_width=8, out_width=12, num_experts=1, depth=1, num_queries=2, num_heads=2
    )
    upm.train()(torch.randn(2, 5, 8) + 3.0, "image")
    upm = expand_experts(upm, 2, ["image", "audio"])
    assert float(upm.heads["image"].standardize.count) == 10
    assert float(upm.heads["audio"].standardize.count) == 0
