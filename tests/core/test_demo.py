"""`onellm demo` end to end on the tiny curriculum (a few steps per stage), then again: it must resume, not redo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onellm.demo import (
    DEFAULT_PER_MODALITY,
    Scores,
    kind_table,
    prepare_data,
    score_table,
    stage_table,
    target_report,
)
from onellm.diagnose import check_targets
from onellm.train.stage_folder import StageFolder

REPO = Path(__file__).resolve().parents[2]
MODALITIES = ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]
STAGES = ["align_image", "align_av3d", "align_rest", "instruct"]


def _demo(out: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "onellm.demo",
        "--out",
        str(out),
        "--curriculum",
        "configs/tiny/curriculum.yaml",
        "--per-modality",
        "20",
        "--limit",
        "2",
        "--set",
        "train.steps=2",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.save_interval=1",
        "--set",
        "train.eval_samples=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-3000:]
    stamps = {p: p.stat().st_mtime for p in out.rglob("*") if p.is_file() and p.name in {"DONE", "results.json"}}
    second = _demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    return out, first, second, stamps


@pytest.mark.slow
def test_demo_writes_report_table_and_pictures(demo_runs):
    out, first, _, _ = demo_runs
    report = (out / "report.md").read_text(encoding="utf-8")
    for picture in ("scores.png", "loss.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({picture})" in report
    tables = _tables(first.stdout)
    final, qa = tables[0], tables[1]
    assert final[0].startswith("| modality | CIDEr after instruct [95% CI] | QA acc [95% CI] | QA blind baseline |")
    assert [row.split("|")[1].strip() for row in final[1:]] == MODALITIES
    assert qa[0].startswith("| modality | QA acc (blind) after align_image |")
    # A modality has a score from the stage that first trains it on: image from align_image, depth from align_rest;
    # every QA cell shows its input-blind baseline in brackets.
    image, depth = qa[1].split("|")[2:6], qa[5].split("|")[2:6]
    assert image[0].strip() != "—" and depth[0].strip() == "—" and depth[2].strip() != "—"
    assert all("(" in cell for cell in image)
    assert "targets missed:" in first.stdout and "short by" in first.stdout  # random tiny weights meet nothing
    for stage in STAGES:
        results = json.loads((out / "eval" / stage / "results.json").read_text(encoding="utf-8"))
        kinds = {task.rsplit("_", 1)[1] for task in results["results"]}
        assert kinds == {"caption", "qa"}  # QA after every stage
        assert all(n["effective"] == 2 for n in results["n-samples"].values())
        assert all(row["blind_baseline,none"] is not None for t, row in results["results"].items() if "_qa" in t)
    assert "| instruct | instruct |" in report and "## Timings" in report and "Targets missed:" in report
    assert "## Question kinds after instruct" in report and "| modality | kinds above their blind baseline |" in report
    assert report.count("| float32 |") == len(STAGES)  # the tiny curriculum trains in fp32: scored in float32


@pytest.mark.slow
def test_demo_ends_by_serving_its_final_checkpoint_with_vllm(demo_runs):
    """train -> evaluate -> serve: the last stage's checkpoint answers the caption question of a test input of
    every modality (image, video, audio, point cloud, ... each as its chat content part) through ``onellm serve``'s
    vLLM engine, printed and recorded."""
    out, first, _, _ = demo_runs
    served = json.loads((out / "served.json").read_text(encoding="utf-8"))
    final = StageFolder(out / "train" / "instruct").checkpoint
    assert served["engine"] == "vllm" and served["checkpoint"] == str(final) and final.name == "merged"
    assert [row["modality"] for row in served["answers"]] == MODALITIES
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"served by vLLM ({served['checkpoint']}):" in first.stdout and "## Served" in report
    for row in served["answers"]:
        modality = row["modality"]
        assert Path(row["input"]).is_file() and Path(row["input"]).parent.name == modality
        assert row["question"].endswith(".") and f"<{modality}>" not in row["question"]
        assert isinstance(row["answer"], str) and row["reference"]
        assert row["scored_answer"] == row["answer"]  # vLLM answers as the evaluation's hf backend did (fp32 here)
        assert "divergence" not in row
        assert f"[{modality}] {Path(row['input']).name}: {row['question']}" in first.stdout
        assert f"| {modality} | `{Path(row['input']).name}` |" in report


def test_a_served_answer_that_parts_from_the_scored_one_says_where_and_by_how_much(tiny):
    """served.json and the report name the first token at which a served answer leaves the evaluation's and how much
    likelier the serving engine found its own token there: a near-tie (rounding) reads apart from a real difference."""
    from onellm.demo.pipeline import first_divergence
    from onellm.demo.report import served_agreement
    from onellm.serving.engines import TokenLogprob
    from onellm.serving.smoke import Answer

    tokenizer = tiny[1].tokenizer
    prefix = tokenizer("a yellow circle", add_special_tokens=False)["input_ids"]
    served = tokenizer("a yellow circle changes colour", add_special_tokens=False)["input_ids"]
    shrinks = tokenizer("a yellow circle shrinks", add_special_tokens=False)["input_ids"][len(prefix)]
    other = tokenizer("a yellow circle moves", add_special_tokens=False)["input_ids"][len(prefix)]
    assert served[: len(prefix)] == prefix and len({served[len(prefix)], shrinks, other}) == 3

    def answer(second: int) -> Answer:  # the engine's top-2 at the token where the texts part: its own, then `second`
        tokens = [TokenLogprob(t, -0.1, ((t, -0.1),)) for t in served]
        tokens[len(prefix)] = TokenLogprob(served[len(prefix)], -0.70, ((served[len(prefix)], -0.70), (second, -0.73)))
        return Answer("a yellow circle changes colour", tuple(tokens))

    tie = first_divergence(answer(shrinks), "a yellow circle shrinks", tokenizer)
    names = {"served": tokenizer.decode([served[len(prefix)]]), "scored": tokenizer.decode([shrinks])}
    assert tie == {"token": len(prefix), **names, "logprob_gap": 0.03}
    far = first_divergence(answer(other), "a yellow circle shrinks", tokenizer)
    assert far["token"] == len(prefix) and far["logprob_gap_at_least"] == 0.03 and "logprob_gap" not in far
    cut = Answer("a yellow", tuple(TokenLogprob(t, -0.1, ((t, -0.1),)) for t in prefix[:2]))
    stopped = first_divergence(cut, "a yellow circle shrinks", tokenizer)  # the served answer ran out of tokens
    assert stopped == {"token": 2, "served": "", "scored": tokenizer.decode([prefix[2]])}

    rows = [
        {"modality": "image", "answer": "a red star", "scored_answer": "a red star"},
        {"modality": "video", "answer": "a yellow circle changes colour", "scored_answer": "a yellow circle shrinks"}
        | {"divergence": tie},
        {"modality": "audio", "answer": "a tone", "scored_answer": None},
    ]
    assert served_agreement(rows) == (
        f"1 of 2 served answers equal the evaluation's; video differs from token {len(prefix)} on "
        f"({names['served']!r} served, {names['scored']!r} scored, 0.030 apart in log-probability)"
    )


@pytest.mark.slow
def test_demo_writes_report_json_per_modality_and_stage(demo_runs):
    out, _, _, _ = demo_runs
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["stage_order"] == STAGES
    met = {"align_image": 1, "align_av3d": 4, "align_rest": 8, "instruct": 8}
    for stage in STAGES:
        assert list(data["stages"][stage]) == MODALITIES[: met[stage]]
        for modality, row in data["stages"][stage].items():
            for key in ("cider", "qa_accuracy", "qa_blind_baseline", "distinct_caption_fraction", "projector_spread"):
                assert isinstance(row[key], float), (stage, modality, key, row[key])
            assert row["cider_interval"][0] <= row["cider"] <= row["cider_interval"][1]
            assert row["qa_interval"][0] <= row["qa_accuracy"] <= row["qa_interval"][1]
            assert 0 <= row["qa_blind_baseline"] <= 1 and 0 < row["distinct_caption_fraction"] <= 1
            assert row["projector_spread"] >= 0 and (row["captions"], row["questions"]) == (2, 2)
            assert set(row["targets"]) == {"projector_spread", "qa_over_baseline", "distinct_caption_fraction"}
            kinds = row["qa_kinds"]  # every question counted under its kind, each kind beside its own baseline
            assert sum(k["n"] for k in kinds.values()) == row["questions"] and all(
                0 <= k["blind"] <= 1 for k in kinds.values()
            )
    assert set(data["mean_cider"]) == {"value", "target", "met", "short_by"}
    assert data["eval_seconds"]["total"] > 0 and set(data["eval_seconds"]) == {*STAGES, "total"}
    assert any("short by" in line for line in data["missed"])
    for stage in STAGES:
        spreads = json.loads((out / "eval" / stage / "diagnostics.json").read_text(encoding="utf-8"))
        assert spreads["modalities"]["image"]["inputs"] == 2


def _tables(text: str) -> list[list[str]]:
    """Markdown tables printed in ``text``: header + body rows (separator rows left out)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("| "):
            current.append(line)
        elif current and not line.startswith("|-"):
            tables.append(current)
            current = []
    return tables


@pytest.mark.slow
def test_demo_rerun_resumes_instead_of_starting_over(demo_runs):
    out, _, second, stamps = demo_runs
    changed = [str(p) for p, mtime in stamps.items() if p.stat().st_mtime != mtime]
    assert changed == [], f"a second run rewrote {changed}"
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert [timings[step]["runs"][-1]["status"] for step in ("data", "train", "eval", "serve")] == ["skipped"] * 4
    assert "step train: skipped" in second.stderr and "[onellm train] stage" not in second.stderr


def test_data_step_rewrites_a_corpus_of_another_size(tmp_path):
    assert prepare_data(tmp_path / "data", per_modality=3, seed=0) == "ran"
    assert prepare_data(tmp_path / "data", per_modality=3, seed=0) == "skipped"
    assert prepare_data(tmp_path / "data", per_modality=4, seed=0) == "ran"
    info = json.loads((tmp_path / "data" / "synth_info.json").read_text(encoding="utf-8"))
    assert info["per_modality"] == 4
    # A corpus written by another generator version holds other text for the same seed: it is rewritten, not reused.
    (tmp_path / "data" / "synth_info.json").write_text(
        json.dumps({**info, "generator_version": "0.9"}), encoding="utf-8"
    )
    assert prepare_data(tmp_path / "data", per_modality=4, seed=0) == "ran"


def test_the_all_profile_opts_into_fourteen_modalities(tmp_path):
    """``onellm demo --profile all``: the extended curriculum, a corpus of the modalities it reads, every one scored."""
    from onellm.demo.pipeline import PROFILES, curriculum_modalities, load_demo_curriculum
    from onellm.eval.task import load_tasks

    extended = ["xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"]
    default = load_demo_curriculum(REPO / PROFILES["default"][0], tmp_path, {})
    assert curriculum_modalities(default) == MODALITIES  # `make demo` is unchanged
    path, per_modality = PROFILES["all"]
    curriculum = load_demo_curriculum(REPO / path, tmp_path, {})
    assert curriculum_modalities(curriculum) == MODALITIES + extended and per_modality == DEFAULT_PER_MODALITY
    # measured with OneLLM's learned tags and no word loss: it keeps them (the default curriculum builds word slots)
    assert curriculum.stages[0].init_from.preset_args == {
        "modalities": "all",
        "end_tag": "learned",
        "start_tag": "learned",
        "extra_slots": 0,
        "slot_summary": "mean",
    }
    assert default.stages[0].init_from.preset_args == {
        "end_tag": "lexical",
        "start_tag": "lexical",
        "extra_slots": 1,
        "slot_summary": "mean_max",
    }
    assert [s.train.word_fit_steps for s in default.stages if s.recipe == "align"] == [400, 400, 400]
    assert all(not s.train.word_fit_steps for s in curriculum.stages if s.train is not None)
    assert [s.name for s in curriculum.stages][-2:] == ["align_extended", "instruct_all"]
    assert curriculum.stages[-1].modalities == MODALITIES + extended  # scored after the last stage: 28 tasks
    assert len(load_tasks([f"synth_{m}_{kind}" for m in MODALITIES + extended for kind in ("caption", "qa")])) == 28
    # The data step writes the modalities asked for and rewrites a corpus of other modalities.
    assert prepare_data(tmp_path / "data", per_modality=3, seed=0, modalities=extended) == "ran"
    assert prepare_data(tmp_path / "data", per_modality=3, seed=0, modalities=extended) == "skipped"
    assert sorted(p.name for p in (tmp_path / "data" / "media").iterdir()) == sorted(extended)
    assert prepare_data(tmp_path / "data", per_modality=3, seed=0) == "ran"
    assert json.loads((tmp_path / "data" / "synth_info.json").read_text())["modalities"] == MODALITIES


def test_the_demo_says_when_this_cpu_trains_in_fp32(tmp_path, monkeypatch):
    """Without native bf16 the small curriculum (precision: auto) trains in fp32, ~4x slower: said before training."""
    from onellm.demo import pipeline
    from onellm.train import config

    curriculum = pipeline.load_demo_curriculum(REPO / pipeline.PROFILES["default"][0], tmp_path, {})
    monkeypatch.setattr(config, "fast_bf16", lambda device: False)
    note = pipeline.precision_note(curriculum, "cpu")
    assert "fp32" in note and "align_image, align_av3d, align_rest, instruct" in note
    assert pipeline.precision_note(curriculum, "cuda") is None
    monkeypatch.setattr(config, "fast_bf16", lambda device: True)
    assert pipeline.precision_note(curriculum, "cpu") is None
    fixed = pipeline.load_demo_curriculum(REPO / pipeline.PROFILES["default"][0], tmp_path, {"train.precision": "fp32"})
    monkeypatch.setattr(config, "fast_bf16", lambda device: False)
    assert pipeline.precision_note(fixed, "cpu") is None  # asked for fp32: nothing to say


def test_the_demo_scores_its_checkpoints_in_the_precision_they_trained_in(tmp_path, monkeypatch):
    """bf16 stages (precision: auto on a CPU with native bf16) are scored in bfloat16, as vLLM serves them there;
    a curriculum with any fp32 stage is scored in float32."""
    from onellm.demo import pipeline
    from onellm.train import config

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    curriculum = pipeline.load_demo_curriculum(REPO / pipeline.PROFILES["default"][0], tmp_path, {})
    monkeypatch.setattr(config, "fast_bf16", lambda device: True)
    assert pipeline.eval_dtype(curriculum) == "bfloat16"
    monkeypatch.setattr(config, "fast_bf16", lambda device: False)
    assert pipeline.eval_dtype(curriculum) == "float32"
    monkeypatch.setattr(config, "fast_bf16", lambda device: True)
    fixed = pipeline.load_demo_curriculum(REPO / pipeline.PROFILES["default"][0], tmp_path, {"train.precision": "fp32"})
    assert pipeline.eval_dtype(fixed) == "float32"


def test_data_step_restarts_an_interrupted_write(tmp_path):
    folder = tmp_path / "data"
    (folder / "media").mkdir(parents=True)
    (folder / "train.jsonl").write_text("{half a record", encoding="utf-8")  # no synth_info.json: interrupted
    assert prepare_data(folder, per_modality=3, seed=0) == "ran"
    assert all(json.loads(line)["id"] for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines())


def _row(cider, qa, blind, distinct, spread):
    checks = check_targets(spread, qa, blind, distinct)
    return {
        "cider": cider, "cider_interval": [cider - 0.1, cider + 0.1], "qa_accuracy": qa,
        "qa_interval": [qa - 0.05, qa + 0.05], "qa_blind_baseline": blind, "distinct_caption_fraction": distinct,
        "projector_spread": spread, "targets": {name: c.to_dict() for name, c in checks.items()},
    }  # fmt: skip


def test_score_table_shows_intervals_the_blind_baseline_and_targets_met():
    scores = Scores(
        stages=["align_image", "instruct"],
        modalities=["image", "audio"],
        values={
            "align_image": {"image": _row(0.4, 0.3, 0.25, 0.5, 0.02)},
            "instruct": {"image": _row(1.2, 0.9, 0.3, 0.9, 0.08), "audio": _row(0.3, 0.5, 0.4, 0.6, 0.01)},
        },
    )
    rows = score_table(scores)
    assert rows[2] == "| image | 1.20 [1.10, 1.30] | 0.90 [0.85, 0.95] | 0.30 | +0.60 | 0.90 | 0.0800 | 3/3 |"
    assert rows[3] == "| audio | 0.30 [0.20, 0.40] | 0.50 [0.45, 0.55] | 0.40 | +0.10 | 0.60 | 0.0100 | 0/3 |"
    assert stage_table(scores, "qa")[3] == "| audio | — | 0.50 (0.40) |"
    report = target_report(scores)
    assert report["mean_cider"]["value"] == pytest.approx(0.75) and report["mean_cider"]["short_by"] == 0.25
    assert report["missed"] == [
        "audio after instruct: spread 0.010 < 0.05 (short by 0.040); QA − blind 0.100 < 0.25 (short by 0.150); "
        "distinct 0.600 < 0.8 (short by 0.200)",
        "mean CIDEr after instruct: 0.750 < 1.0 (short by 0.250)",
        "image after align_image: QA − blind 0.050 < 0.25 (short by 0.200)",
    ]
    assert DEFAULT_PER_MODALITY // 10 * 3 >= 150  # the test split holds >= 150 questions per modality


def test_kind_table_splits_question_kinds_at_their_own_blind_baseline():
    """Per modality after the last stage: the kinds the model answers better than their prior (largest gain first)
    apart from those it answers at or below it; a modality without per-kind scores gets no row."""
    row = _row(1.0, 0.6, 0.5, 0.9, 0.1)
    row["qa_kinds"] = {
        "shape": {"n": 40, "accuracy": 0.9, "blind": 0.2},
        "presence": {"n": 30, "accuracy": 0.5, "blind": 0.5},
        "side": {"n": 30, "accuracy": 0.6, "blind": 0.4},
        "fall": {"n": 20, "accuracy": 0.3, "blind": 0.8},
    }
    scores = Scores(["instruct"], ["depth", "imu"], {"instruct": {"depth": row, "imu": _row(0.1, 0.5, 0.5, 1, 1)}})
    assert kind_table(scores) == [
        "| modality | kinds above their blind baseline | kinds at or below it |",
        "|---|---:|---:|",
        "| depth | shape 0.90 (0.20), side 0.60 (0.40) | presence 0.50 (0.50), fall 0.30 (0.80) |",
    ]
    assert kind_table(Scores(["instruct"], ["imu"], {"instruct": {"imu": _row(0.1, 0.5, 0.5, 1, 1)}})) == []


def test_missing_curriculum_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "onellm.demo", "--out", str(tmp_path), "--curriculum", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "nope.yaml: curriculum YAML not found" in result.stderr


def test_train_step_sets_aside_stages_trained_on_another_corpus(tmp_path):
    """A rewritten corpus (another size, seed or generator) makes the finished stages stale: they are moved aside
    with their scores, not skipped by their DONE files; the content-keyed feature cache stays."""
    from onellm.demo.pipeline import TRAINED_ON_FILE, load_demo_curriculum, set_aside_stale_stages

    curriculum = load_demo_curriculum(REPO / "configs/tiny/curriculum.yaml", tmp_path, {})
    data = tmp_path / "data"
    prepare_data(data, per_modality=3, seed=0)
    first = curriculum.stages[0].folder

    def finish_first_stage():
        first.path.mkdir(parents=True)
        (first.path / "DONE").write_text("{}", encoding="utf-8")
        (tmp_path / "eval" / first.name).mkdir(parents=True)
        (tmp_path / "eval" / first.name / "results.json").write_text("{}", encoding="utf-8")

    finish_first_stage()
    cache = tmp_path / "train" / "feature_cache" / "image" / "key.pt"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"features")
    # Trained after this corpus was written (an older run without a record): kept, and the corpus recorded.
    assert set_aside_stale_stages(curriculum, tmp_path, data) == []
    assert first.done
    assert json.loads((tmp_path / "train" / TRAINED_ON_FILE).read_text())["per_modality"] == 3
    assert set_aside_stale_stages(curriculum, tmp_path, data) == []

    assert prepare_data(data, per_modality=4, seed=0) == "ran"
    assert set_aside_stale_stages(curriculum, tmp_path, data) == [first.name]
    assert not first.path.exists() and not (tmp_path / "eval" / first.name).exists()
    (aside,) = (tmp_path / "stale").iterdir()
    assert (aside / "train" / first.name / "DONE").is_file()
    assert (aside / "eval" / first.name / "results.json").is_file()
    assert cache.read_bytes() == b"features"
    assert json.loads((tmp_path / "train" / TRAINED_ON_FILE).read_text())["per_modality"] == 4

    # A run from before the record existed: a stage folder older than the corpus was trained on an earlier one.
    finish_first_stage()
    (tmp_path / "train" / TRAINED_ON_FILE).unlink()
    past = (data / "synth_info.json").stat().st_mtime - 60
    for path in [first.path, *first.path.rglob("*")]:
        os.utime(path, (past, past))
    assert set_aside_stale_stages(curriculum, tmp_path, data) == [first.name]
    assert sorted(p.name for p in (tmp_path / "stale").iterdir())[0] == aside.name
    assert len(list((tmp_path / "stale").glob("*/train/" + first.name + "/DONE"))) == 2
