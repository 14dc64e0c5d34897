"""How a stage's data becomes its training set: ``data.turns_per_input`` and ``data.group_by_length`` on the tiny
corpus."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from onellm.instruct_data.collator import Collator

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def test_a_stage_with_turns_per_input_trains_on_merged_conversations(synth_tiny, tmp_path, quick, accelerator):
    from onellm.train.common import build_data, load_start
    from onellm.train.config import ConfigError, load_stage

    overrides = quick(synth_tiny, tmp_path, **{"data.sources": [{"modalities": ["image"], "tasks": ["caption", "qa"]}]})
    single_stage = load_stage(TINY / "align_image.yaml", overrides)
    stage = load_stage(TINY / "align_image.yaml", {**overrides, "data.turns_per_input": 4})
    _, processor = load_start(stage)
    plain, packed = build_data(single_stage, processor, accelerator), build_data(stage, processor, accelerator)
    (before,), (after,) = plain.mixture.sources, packed.mixture.sources
    images = {json.dumps(plain.train.records[i].inputs[0].to_dict()) for i in before.indices}
    assert len(after.indices) == len(images) < len(before.indices)  # one conversation per training image
    turns = sorted(len(packed.train.records[i].conversation) // 2 for i in after.indices)
    assert sum(turns) == len(before.indices) and turns[-1] == 4  # every record is in exactly one conversation
    example = packed.train[after.indices[0]]
    assert len(example["media"]) == 1 and sum(t["role"] == "assistant" for t in example["conversation"]) == 4
    with pytest.raises(ConfigError, match="turns_per_input"):
        load_stage(TINY / "align_image.yaml", {**overrides, "data.turns_per_input": 0})


def test_a_stage_with_group_by_length_pads_its_batches_less(synth_tiny, tmp_path, quick, accelerator):
    from onellm.train.common import build_data, load_start
    from onellm.train.config import ConfigError, load_stage

    overrides = quick(synth_tiny, tmp_path, **{"data.sources": [{"modalities": ["image"], "tasks": ["caption", "qa"]}]})
    plain_stage = load_stage(TINY / "align_image.yaml", overrides)
    stage = load_stage(TINY / "align_image.yaml", {**overrides, "data.group_by_length": 8})
    _, processor = load_start(stage)
    collate = Collator(processor)

    def padding(data) -> float:  # padded tokens / real tokens over 16 batches of 4, as the collator builds them
        pads = real = 0
        for _, indices in itertools.islice(data.mixture.batches(4), 16):
            batch = collate([data.train[i] for i in indices])
            pads += batch["attention_mask"].numel()
            real += int(batch["attention_mask"].sum())
        return pads / real

    plain, grouped = (
        padding(build_data(plain_stage, processor, accelerator)),
        padding(build_data(stage, processor, accelerator)),
    )
    assert grouped < plain and grouped < 1.05, (plain, grouped)
    with pytest.raises(ConfigError, match="group_by_length"):
        load_stage(TINY / "align_image.yaml", {**overrides, "data.group_by_length": -1})


def test_group_by_length_sorts_rows_with_their_system_turns(synth_tiny, tmp_path, quick, accelerator):
    """``data.system_turns`` lengthens some rows; the grouping sorts by the rows the stage's collator builds, so a
    batch does not pad every row to one row's system turn."""
    from onellm.train.common import build_data, load_start, stage_collator
    from onellm.train.config import load_stage

    overrides = quick(synth_tiny, tmp_path, **{"data.sources": [{"modalities": ["image"], "tasks": ["caption", "qa"]}]})
    overrides.update({"data.group_by_length": 8, "data.system_turns": {"share": 0.5}})
    stage = load_stage(TINY / "align_image.yaml", overrides)
    _, processor = load_start(stage)
    data = build_data(stage, processor, accelerator)
    collate = stage_collator(stage, processor)
    pads = real = with_system = 0
    for _, indices in itertools.islice(data.mixture.batches(4), 16):
        batch = collate([data.train[i] for i in indices])
        pads += batch["attention_mask"].numel()
        real += int(batch["attention_mask"].sum())
        with_system += sum(collate.system_turns.pick(record_id) is not None for record_id in batch["ids"])
    assert 16 <= with_system <= 48  # about half of the 64 rows
    # 1.06 here; sorted by the rows without their system turns, the same batches padded to 1.33
    assert pads / real < 1.1, pads / real


def test_a_source_with_kinds_draws_only_those_questions(synth_tiny, tmp_path, quick, accelerator):
    from onellm.train.common import build_data, load_start
    from onellm.train.config import load_stage

    sources = [
        {"modalities": ["image"]},
        {"modalities": ["image"], "kinds": ["presence", "count"], "weight": 2.0, "name": "checks"},
    ]
    stage = load_stage(TINY / "align_image.yaml", quick(synth_tiny, tmp_path, **{"data.sources": sources}))
    _, processor = load_start(stage)
    data = build_data(stage, processor, accelerator)
    everything, checks = data.mixture.sources
    kinds = [(data.train.records[i].meta or {}).get("question_kind") for i in checks.indices]
    assert set(kinds) == {"presence", "count"}
    every_kind = [(data.train.records[i].meta or {}).get("question_kind") for i in everything.indices]
    assert len(checks.indices) == sum(kind in ("presence", "count") for kind in every_kind) < len(everything.indices)
    assert checks.weight == 2.0
