"""`onellm demo` end to end on the tiny curriculum (a few steps per stage), then again: it must resume, not redo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onellm.demo import TARGETS, Scores, prepare_data, score_table

REPO = Path(__file__).resolve().parents[2]
MODALITIES = ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]
STAGES = ["align_image", "align_av3d", "align_rest", "instruct"]


def _demo(out: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "onellm.demo", "--out", str(out), "--curriculum", "configs/tiny/curriculum.yaml",
        "--per-modality", "10", "--limit", "1",
        "--set", "train.steps=2", "--set", "train.warmup_steps=0", "--set", "train.save_interval=1",
        "--set", "train.eval_samples=2",
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
    rows = [line for line in first.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| modality | CIDEr after align_image |")
    assert [row.split("|")[1].strip() for row in rows[1:]] == MODALITIES
    # A modality has a score from the stage that first trains it on: image from align_image, depth from align_rest.
    image, depth = rows[1].split("|")[2:7], rows[5].split("|")[2:7]
    assert image[0].strip() != "—" and depth[0].strip() == "—" and depth[2].strip() != "—"
    for stage in STAGES:
        results = json.loads((out / "eval" / stage / "results.json").read_text(encoding="utf-8"))
        kinds = {task.rsplit("_", 1)[1] for task in results["results"]}
        assert kinds == ({"caption", "qa"} if stage == "instruct" else {"caption"})
        assert all(n["effective"] == 1 for n in results["n-samples"].values())
    assert "| instruct | instruct |" in report and "## Timings" in report


@pytest.mark.slow
def test_demo_rerun_resumes_instead_of_starting_over(demo_runs):
    out, _, second, stamps = demo_runs
    changed = [str(p) for p, mtime in stamps.items() if p.stat().st_mtime != mtime]
    assert changed == [], f"a second run rewrote {changed}"
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert [timings[step]["runs"][-1]["status"] for step in ("data", "train", "eval")] == ["skipped"] * 3
    assert "step train: skipped" in second.stderr and "[onellm train] stage" not in second.stderr


def test_data_step_rewrites_a_corpus_of_another_size(tmp_path):
    assert prepare_data(tmp_path / "data", per_modality=3, seed=0) == "ran"
    assert prepare_data(tmp_path / "data", per_modality=3, seed=0) == "skipped"
    assert prepare_data(tmp_path / "data", per_modality=4, seed=0) == "ran"
    info = json.loads((tmp_path / "data" / "synth_info.json").read_text(encoding="utf-8"))
    assert info["per_modality"] == 4


def test_data_step_restarts_an_interrupted_write(tmp_path):
    folder = tmp_path / "data"
    (folder / "media").mkdir(parents=True)
    (folder / "train.jsonl").write_text("{half a record", encoding="utf-8")  # no synth_info.json: interrupted
    assert prepare_data(folder, per_modality=3, seed=0) == "ran"
    assert all(json.loads(line)["id"] for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines())


def test_score_table_marks_targets_met():
    scores = Scores(
        stages=["align_image", "instruct"],
        modalities=["image", "audio"],
        values={
            "align_image": {"image": {"cider": 0.4}},
            "instruct": {"image": {"cider": 1.2, "exact_match": 0.9}, "audio": {"cider": 0.3, "exact_match": 0.5}},
        },
        samples={},
    )
    rows = score_table(scores)
    assert rows[2] == "| image | 0.40 | 1.20 | 0.90 | 2/2 |"
    assert rows[3] == "| audio | — | 0.30 | 0.50 | 0/2 |"
    assert TARGETS == {"cider": 1.0, "exact_match": 0.8}


def test_missing_curriculum_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "onellm.demo", "--out", str(tmp_path), "--curriculum", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "nope.yaml: curriculum YAML not found" in result.stderr
