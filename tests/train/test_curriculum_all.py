"""The extended tiny curriculum (configs/tiny/curriculum-all.yaml) for a few steps per stage: a model built with all
fourteen modalities, OneLLM's stages, then the six beyond OneLLM's eight aligned with replay of the eight (only
their tokenizers and the projector train), then instruction tuning on all fourteen."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from onellm import OneLLMForConditionalGeneration
from onellm.modalities import modality_names
from onellm.train.config import load_curriculum
from onellm.train.curriculum import run_curriculum

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
STAGES = ["align_image", "build_upm", "align_av3d", "align_rest", "align_extended", "instruct_all"]
EXTENDED = ["xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"]


@pytest.fixture(scope="module")
def run_all(tmp_path_factory, accelerator, quick):
    from onellm.instruct_data.synth import synthesize

    data, out = tmp_path_factory.mktemp("synth-all"), tmp_path_factory.mktemp("runs-all")
    synthesize(data, per_modality=6, seed=0, modalities="all", workers=1)
    # mixed batches of 8: in 5 steps (40 draws) every source of a stage shows up (align_extended: 6 sources at 0.7 / 6
    # of the draws each, absent with probability 0.883^40 < 1 %; the draws are seeded)
    overrides = quick(data, out, steps=5, **{"data.batching": "mixed", "train.batch_size": 8, "train.save_interval": 5})
    curriculum = load_curriculum(TINY / "curriculum-all.yaml", overrides)
    with contextlib.redirect_stderr(io.StringIO()):
        outputs = run_curriculum(curriculum, accelerator)
    return out, outputs


def state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    model = OneLLMForConditionalGeneration.from_pretrained(str(path))
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_every_stage_runs_on_a_fourteen_modality_model(run_all):
    out, outputs = run_all
    assert list(outputs) == STAGES
    config = json.loads((out / "align_image" / "final" / "config.json").read_text())
    assert sorted(config["modality_configs"]) == sorted(modality_names()) and len(modality_names()) == 14
    done = json.loads((out / "align_extended" / "DONE").read_text())
    assert done["steps"] == 5 and done["val_loss"] is not None
    losses = [json.loads(line)["loss"] for line in (out / "align_extended" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 5 and all(loss == loss and loss < 100 for loss in losses)  # finite
    assert set(outputs["instruct_all"]) == {"checkpoint", "adapter", "merged"}


def test_align_extended_trains_the_new_tokenizers_and_heads_only(run_all):
    out, _ = run_all
    before, after = out / "align_rest" / "final", out / "align_extended" / "final"
    frozen = ["language_model.", "encoder.", "mm_tokenizers.audio.", "mm_tokenizers.imu.", "mm_tokenizers.fmri."]
    for prefix in frozen:
        a, b = state(before, prefix), state(after, prefix)
        assert a and all(torch.equal(a[k], b[k]) for k in a), f"{prefix} changed in align_extended"
    trained = [f"mm_tokenizers.{m}." for m in ("hyperspectral", "timeseries", "tabular", "graph")]
    trained += [f"projector.heads.{m}." for m in EXTENDED] + ["projector.experts."]
    for prefix in trained:
        a, b = state(before, prefix), state(after, prefix)
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{prefix} did not train in align_extended"
    assert not state(after, "mm_tokenizers.xray.")  # X-ray and infrared use the encoder's own patch embedding


def test_the_final_checkpoint_answers_every_new_modality(run_all, media_paths):
    from onellm import OneLLMProcessor

    _, outputs = run_all
    merged = outputs["instruct_all"]["merged"]
    model, processor = (
        OneLLMForConditionalGeneration.from_pretrained(merged).eval(),
        OneLLMProcessor.from_pretrained(merged),
    )
    for modality in EXTENDED:
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": "?"}]}]
        )
        batch = processor(text=prompt, **{modality: [media_paths[modality]]})
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
        assert generated.shape[1] == batch["input_ids"].shape[1] + 3, modality
