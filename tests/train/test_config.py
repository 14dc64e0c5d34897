"""Stage / curriculum configs: every shipped YAML loads; broken ones fail with the file and the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onellm.train.config import (
    ConfigError,
    is_curriculum,
    load_curriculum,
    load_stage,
    parse_overrides,
    stage_from_dict,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "accelerate")


def test_configs_are_shipped_for_both_presets():
    names = {(p.parent.name, p.stem) for p in SHIPPED}
    for preset in ("tiny", "small"):
        for stem in ("curriculum", "align_image", "build_upm", "align_av3d", "align_rest", "instruct"):
            assert (preset, stem) in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_yaml_loads(path):
    if is_curriculum(path):
        curriculum = load_curriculum(path)
        stages = curriculum.stages
        recipes = ["align", "expand_experts", "align", "align", "instruct"]
        expected = {"image", "video", "audio", "point", "depth", "normal", "imu", "fmri"}
        if path.stem.endswith("-all"):  # the extended curriculum: one more alignment stage for the other six
            recipes.insert(4, "align")
            expected |= {"xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"}
            assert stages[0].init_from.preset_args["modalities"] == "all"  # the model is built with all fourteen
        assert [s.recipe for s in stages] == recipes
        # every modality is aligned over the curriculum, and instruct covers all of them
        aligned = {m for s in stages if s.recipe == "align" for m in s.modalities}
        assert aligned == set(stages[-1].modalities) == expected
        assert len({s.output_dir for s in stages}) == 1
    else:
        stage = load_stage(path)
        assert stage.name == path.stem


STAGE = {
    "name": "s",
    "recipe": "align",
    "output_dir": "runs/x",
    "init_from": {"preset": "tiny"},
    "data": {"root": "data", "sources": [{"modalities": ["image"]}]},
    "trainable": {"projector.*": 1e-3},
    "train": {"steps": 10, "batch_size": 2},
}


def broken(**changes):
    data = yaml.safe_load(yaml.safe_dump(STAGE))
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for parent in parents:
            node = node[parent]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train__stepz": 3}, "train.stepz: unknown key"),
        ({"train__steps": "ten"}, "train.steps: expected int"),
        ({"train__steps": 0}, "train.steps: must be >= 1"),
        ({"train__precision": "fp8"}, "train.precision: expected one of ['fp32', 'bf16', 'auto']"),
        ({"train__batch_size": KeyError}, "train.batch_size: required key is missing"),
        ({"data__sources": [{"modalities": ["smell"]}]}, "data.sources[0].modalities: unknown modality 'smell'"),
        ({"data__sources": [{"modalities": ["image"], "weight": -1}]}, "data.sources[0].weight: must be > 0"),
        ({"data__replay": {"modalities": ["audio"], "fraction": 1.5}}, "data.replay.fraction: must be in [0, 1)"),
        ({"init_from": {"preset": "tiny", "stage": "a"}}, "init_from: set exactly one"),
        ({"trainable": {"projector.*": 0}}, "trainable.projector.*: learning rate must be > 0"),
        ({"trainable": {}}, "trainable: recipe align needs at least one group"),
        ({"recipe": "pretrain"}, "recipe: expected one of"),
        ({"lora": {"r": 4}}, "lora: only the instruct recipe"),
        ({"train__warmup_steps": 10}, "train.warmup_steps: 10 must be < train.steps"),
        ({"train__slot_word_share": 0}, "train.slot_word_share: must be in (0, 1]"),
        ({"data__system_turns": {"share": 1.2}}, "data.system_turns.share: must be in [0, 1]"),
        ({"data__multi_turn_share": -0.1}, "data.multi_turn_share: must be in [0, 1]"),
        ({"data__system_turns": {"share": 0.3, "texts": [" "]}}, "data.system_turns.texts: a share above 0 needs"),
        ({"data__system_turns": {"share": 0.3, "text": ["Hi."]}}, "data.system_turns.text: unknown key"),
    ],
)
def test_errors_name_the_key(changes, message):
    with pytest.raises(ConfigError) as caught:
        stage_from_dict(broken(**changes), "stage.yaml")
    assert str(caught.value).startswith("stage.yaml: ")
    assert message in str(caught.value)


def test_a_learning_rate_written_5e_4_is_a_float():
    # YAML 1.1 (PyYAML) reads 5e-4 without a dot as a string; a float field takes it, a word stays an error
    stage = stage_from_dict(broken(trainable={"projector.*": "5e-4"}, train__max_grad_norm="1E+0"), "stage.yaml")
    assert stage.trainable == {"projector.*": 5e-4} and stage.train.max_grad_norm == 1.0
    with pytest.raises(ConfigError, match="trainable.projector.*: expected float, got 'e-4'"):
        stage_from_dict(broken(trainable={"projector.*": "e-4"}), "stage.yaml")


def test_overrides_and_curriculum_sharing(tmp_path):
    assert parse_overrides(["train.steps=5", "data.root=/x", "train.cache_features=false"]) == {
        "train.steps": 5,
        "data.root": "/x",
        "train.cache_features": False,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train.steps"])
    stage = stage_from_dict(STAGE, overrides={"train.steps": 3, "data.replay.modalities": ["audio"]})
    assert stage.train.steps == 3 and stage.modalities == ["image", "audio"]
    # a curriculum-wide train.* override leaves the expand step (no train section) alone
    curriculum = load_curriculum(
        REPO / "configs/tiny/curriculum.yaml", {"train.steps": 12, "output_dir": str(tmp_path)}
    )
    assert [s.train.steps if s.train else None for s in curriculum.stages] == [12, None, 12, 12, 12]
    assert all(Path(s.output_dir) == tmp_path for s in curriculum.stages)


def test_small_profiles_choose_their_end_tag():
    # `make demo`'s curriculum and the long profile: the lexical end tag and its word loss in the three alignment
    # stages; the all-modality profile keeps OneLLM's learned tag, with which its numbers were measured (BENCHMARKS.md)
    for name, tag, words in (
        ("curriculum", "lexical", 0.5),
        ("curriculum-long", "lexical", 0.5),
        ("curriculum-all", "learned", 0.0),
    ):
        stages = load_curriculum(REPO / f"configs/small/{name}.yaml").stages
        assert stages[0].init_from.preset_args["end_tag"] == tag, name
        assert [s.train.lexical_loss for s in stages if s.recipe == "align"][:3] == [words] * 3, name


def test_long_profile_builds_the_default_word_slots():
    # the long profile runs the default stages with more steps: the same preset (lexical start and end tags, one more
    # word slot) and the same word fit in every alignment stage (BENCHMARKS.md, "The long profile", 2026-12-05 evening)
    default, long = (
        load_curriculum(REPO / f"configs/small/{name}.yaml").stages for name in ("curriculum", "curriculum-long")
    )
    # one difference: the word slots read the regions' mean, not mean + max (image QA 0.81 against 0.79 after the
    # profile's first stage; BENCHMARKS.md, "The long profile", 2026-12-07)
    assert long[0].init_from.preset_args == {**default[0].init_from.preset_args, "slot_summary": "mean"}
    assert default[0].init_from.preset_args["slot_summary"] == "mean_max"
    assert (
        default[0].init_from.preset_args["start_tag"] == "lexical"
        and default[0].init_from.preset_args["extra_slots"] == 1
    )
    fits = [[s.train.word_fit_steps for s in stages if s.recipe == "align"] for stages in (default, long)]
    assert fits[0] == fits[1] == [400, 400, 400]


def test_curriculum_entries_can_override_one_stage(tmp_path):
    # the long profile: the same stage files, each with its own step count; the command line still wins
    long = load_curriculum(REPO / "configs/small/curriculum-long.yaml")
    assert [s.train.steps if s.train else None for s in long.stages] == [6000, None, 720, 720, 600]
    short = load_curriculum(REPO / "configs/small/curriculum-long.yaml", {"train.steps": 40, "train.warmup_steps": 2})
    assert [s.train.steps if s.train else None for s in short.stages] == [40, None, 40, 40, 40]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(STAGE))
    for entry, message in (
        ({"stage": "a.yaml", "steps": 3}, r"stages\[0\]: steps: unknown key; allowed here: stage, set"),
        ({"set": {"train.steps": 3}}, r"stages\[0\]: expected a stage YAML path or a mapping"),
        ({"stage": "a.yaml", "set": [1]}, r"stages\[0\]: set: expected a mapping"),
    ):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"stages": [entry]}))
        with pytest.raises(ConfigError, match=message):
            load_curriculum(tmp_path / "c.yaml")


def test_curriculum_stage_order_is_checked(tmp_path):
    first = {**STAGE, "name": "b", "init_from": {"stage": "a"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(first))
    (tmp_path / "c.yaml").write_text("stages: [b.yaml]\n")
    with pytest.raises(ConfigError, match="init_from.stage: 'a' is not an earlier stage"):
        load_curriculum(tmp_path / "c.yaml")


def test_cli_check_prints_the_plan_and_bad_configs_exit_2(tmp_path):
    run = [sys.executable, "-m", "onellm.train"]
    ok = subprocess.run(
        [*run, "--curriculum", str(REPO / "configs/tiny/curriculum.yaml"), "--check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert [line.split()[0] for line in ok.stdout.splitlines()] == [
        "align_image",
        "build_upm",
        "align_av3d",
        "align_rest",
        "instruct",
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken(train__steps="ten")))
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 2 and "train.steps: expected int" in failed.stderr
