"""``train.pack_rows``: a micro-batch's samples laid end to end in fewer rows train exactly as padded rows do."""

from __future__ import annotations

import json

import pytest
import torch

from onellm import OneLLMForConditionalGeneration

from .conftest import TINY


def test_packed_rows_give_the_padded_rows_losses(tiny, media_paths):
    """Every loss weighting: the loss of the same samples in 1, 2 or 3 packed rows equals the padded one."""
    from onellm.instruct_data.collator import pack
    from onellm.train.loop import label_loss_sum, loss_units

    from .test_features import image_qa_batch

    model, processor = tiny
    pairs = [
        ("What colour?", "red"),
        ("Describe the picture in detail.", "a large blue square on a white background"),
        ("How many shapes?", "two"),
        ("Caption it.", "a small green circle at the left"),
    ]
    batch, inputs = image_qa_batch(processor, media_paths, pairs)
    pad = processor.tokenizer.pad_token_id
    for weighting in ("token", "sample", "turn"):
        with torch.no_grad():
            padded = label_loss_sum(model, inputs, weighting)
            for rows in (1, 2, 3):
                packed = pack(batch, rows, pad)
                assert packed["input_ids"].shape[0] == rows and "attention_mask" not in packed
                assert loss_units(packed, weighting) == loss_units(batch, weighting)
                fields = ("input_ids", "labels", "position_ids", "segments", "mm_inputs")
                ours = label_loss_sum(model, {k: packed[k] for k in fields}, weighting)
                assert torch.allclose(ours, padded, rtol=1e-5), (weighting, rows, float(ours), float(padded))


@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_a_packed_stage_trains_the_weights_the_padded_one_does(synth_tiny, tmp_path, quick, accelerator, weighting):
    """Three fp32 alignment steps on captions and questions, lexical word tags and their word loss on: packed into
    two rows, the losses and the trained projector match the padded run's (same samples, same order)."""
    from onellm.train.common import load_start
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    runs = {}
    for rows in (0, 2):
        overrides = quick(
            synth_tiny,
            tmp_path / f"rows{rows}",
            steps=3,
            **{
                "train.pack_rows": rows,
                "train.loss_weighting": weighting,
                "train.lexical_loss": 0.5,
                "train.precision": "fp32",
                "init_from.preset_args": {"end_tag": "lexical", "start_tag": "lexical"},
                "data.sources": [{"modalities": ["image"], "tasks": ["caption", "qa"]}],
            },
        )
        stage = load_stage(TINY / "align_image.yaml", overrides)
        run_stage(stage, accelerator)
        losses = [json.loads(line)["loss"] for line in (stage.stage_dir / "metrics.jsonl").read_text().splitlines()]
        model = OneLLMForConditionalGeneration.from_pretrained(stage.stage_dir / "final")
        runs[rows] = losses, model.projector.state_dict()
    (plain, plain_weights), (packed, packed_weights) = runs[0], runs[2]
    assert len(plain) == 3 and plain == pytest.approx(packed, rel=1e-4)
    for name, value in plain_weights.items():
        assert torch.allclose(value, packed_weights[name], atol=1e-5), name
    start = load_start(stage)[0].projector.state_dict()  # the weights both runs started from: they trained
    assert any(not torch.allclose(v, start[k], atol=1e-4) for k, v in packed_weights.items())
