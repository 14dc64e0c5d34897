"""The runner end to end: the tiny model on the synthetic corpus through the CLI (in-process backend), lmms-eval-shaped
outputs, scoring aligned with references, caveats marked in the report, and failures before any model is loaded."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from tiny_checkpoint import save_tiny

from onellm.eval.backends import Backend, BackendError, GenerationConfig, Request
from onellm.eval.backends.hf import HFBackend
from onellm.eval.cli import main
from onellm.eval.metrics import MetricResult
from onellm.eval.metrics.caption import java_available, missing_spice_jars
from onellm.eval.runner import evaluate, standard_error
from onellm.eval.sources import DataDirs, EvalDataError
from onellm.eval.task import TASKS_DIR, TaskConfigError, load_task, load_task_file
from onellm.instruct_data.schema import read_manifest
from onellm.instruct_data.synth import synthesize


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize(folder, per_modality=3, seed=0)  # test split: 1 item per modality = 1 caption + 3 QA records
    return folder


class ScriptedBackend(Backend):
    """Answers each request with ``answer(request)``; records the batches it was given."""

    name = "scripted"

    def __init__(self, answer: Callable[[Request], str]):
        self.answer = answer
        self.batches: list[int] = []

    def generate(self, requests: Sequence[Request], generation: GenerationConfig) -> list[str]:
        self.batches.append(len(requests))
        return [self.answer(request) for request in requests]

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "model": "scripted"}


def references_by_id(corpus: Path) -> dict[str, list[str]]:
    return {record.id: record.references for record in read_manifest(corpus / "test.jsonl")}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def task_yaml(folder: Path, name: str, base: str, extra: str) -> Path:
    """A task file in ``folder`` that includes the shipped ``base`` task and adds ``extra`` keys."""
    path = folder / f"{name}.yaml"
    path.write_text(f"include: {TASKS_DIR / f'{base}.yaml'}\ntask: {name}\n{extra}", encoding="utf-8")
    return path


@pytest.mark.skipif(not java_available(), reason="coco_caption (pycocoevalcap) needs java")
def test_cli_end_to_end_with_the_in_process_backend(checkpoint, corpus, tmp_path, capsys):
    out = tmp_path / "eval-check"
    argv = ["--model", str(checkpoint), "--tasks", "synth_image_caption,synth_audio_qa", "--output", str(out),
            "--data-dir", f"synth={corpus}", "--limit", "2", "--batch-size", "2", "--dtype", "float32",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| synth_image_caption | 1 |" in printed and "wrote results.json" in printed

    results = json.loads((out / "results.json").read_text())
    for key in (
        "results",
        "configs",
        "versions",
        "n-samples",
        "config",
        "git_hash",
        "date",
        "metric_status",
        "timings",
    ):
        assert key in results
    assert results["n-samples"]["synth_image_caption"]["effective"] == 1
    assert results["n-samples"]["synth_audio_qa"]["original"] == 3
    assert results["n-samples"]["synth_audio_qa"]["effective"] == 2  # --limit 2
    assert results["config"]["backend"] == "hf" and results["config"]["limit"] == 2
    assert results["configs"]["synth_audio_qa"]["data"]["folder"] == str(corpus.resolve())
    assert results["versions"] == {"synth_image_caption": 1, "synth_audio_qa": 1}
    caption = results["results"]["synth_image_caption"]
    assert 0.0 <= caption["cider,none"] and caption["cider_stderr,none"] == "N/A"  # one sample: no stderr
    if missing_spice_jars():
        assert caption["spice,none"] is None
        assert results["metric_status"]["synth_image_caption"]["spice"]["available"] is False

    refs = references_by_id(corpus)
    rows = {task: read_jsonl(out / f"samples_{task}.jsonl") for task in ("synth_image_caption", "synth_audio_qa")}
    assert [len(r) for r in rows.values()] == [1, 2]
    for row in rows["synth_audio_qa"]:
        assert row["references"] == refs[row["doc"]["id"]] and row["target"] == str(row["references"])
        assert row["filtered_resps"] == [row["prediction"]] and row["exact_match"] in (0.0, 1.0)
        assert row["input"].endswith("Answer the question using a single word or phrase.")
    assert "cider" in rows["synth_image_caption"][0] and "bleu_4" in rows["synth_image_caption"][0]

    # The runner's batched predictions equal the backend's, one request at a time.
    backend = HFBackend(str(checkpoint), dtype="float32")
    generation = load_task("synth_audio_qa").generation
    for row in rows["synth_audio_qa"]:
        media = tuple(backend_media(row))
        alone = backend.generate([Request(row["doc"]["id"], row["input"], media)], generation)[0].strip()
        assert alone == row["prediction"]
    assert any(row["prediction"] for row in rows["synth_audio_qa"])  # the tiny model answers something

    report = (out / "report.md").read_text()
    assert "| task | n | bleu_1 |" in report and "| synth_audio_qa | 2 |" in report
    if missing_spice_jars():
        assert "n/a†" in report and "synth_image_caption/spice" in report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def backend_media(row: dict[str, Any]):
    from onellm.eval.backends import MediaItem

    for item in row["doc"]["inputs"]:
        yield MediaItem(item["modality"], item["source"])


def test_scores_line_up_with_references(corpus, tmp_path):
    refs = references_by_id(corpus)
    tasks = [load_task("synth_imu_qa"), load_task("synth_fmri_qa")]
    oracle = ScriptedBackend(lambda request: refs[request.id][0].upper() + ".")  # normalisation makes it exact
    results = evaluate(tasks, oracle, tmp_path / "right", data_dirs=DataDirs({"synth": corpus}), batch_size=2,
                       progress=False, report=False)  # fmt: skip
    assert oracle.batches == [2, 1, 2, 1]  # 3 QA samples per task in batches of 2
    for task in ("synth_imu_qa", "synth_fmri_qa"):
        assert results["results"][task]["exact_match,none"] == 1.0
        assert results["results"][task]["exact_match_stderr,none"] == 0.0
    wrong = evaluate(tasks[:1], ScriptedBackend(lambda request: "zebra"), tmp_path / "wrong",
                     data_dirs=DataDirs({"synth": corpus}), progress=False, report=False)  # fmt: skip
    assert wrong["results"]["synth_imu_qa"]["exact_match,none"] == 0.0
    rows = read_jsonl(tmp_path / "wrong" / "samples_synth_imu_qa.jsonl")
    assert [row["exact_match"] for row in rows] == [0.0, 0.0, 0.0]


def test_stop_strings_cut_predictions_and_raw_output_is_kept(corpus, tmp_path):
    path = task_yaml(tmp_path, "imu_stop", "synth_imu_qa", 'generation: {stop: ["\\n"]}\n')
    refs = references_by_id(corpus)
    backend = ScriptedBackend(lambda request: f"  {refs[request.id][0]}\nand then some")
    results = evaluate([load_task_file(path)], backend, tmp_path / "out", data_dirs=DataDirs({"synth": corpus}),
                       progress=False, report=False)  # fmt: skip
    assert results["results"]["imu_stop"]["exact_match,none"] == 1.0
    row = read_jsonl(tmp_path / "out" / "samples_imu_stop.jsonl")[0]
    assert row["resps"] == [[f"  {row['references'][0]}\nand then some"]] and row["prediction"] == row["references"][0]


def test_caveats_are_marked_in_results_and_report(corpus, tmp_path):
    extra = "metrics: [{name: coco_caption, options: {no_java: true}}]\nprimary_metric: cider\n"
    path = task_yaml(tmp_path, "caption_nojava", "synth_point_caption", extra)
    refs = references_by_id(corpus)
    backend = ScriptedBackend(lambda request: refs[request.id][0])
    results = evaluate([load_task_file(path)], backend, tmp_path / "out", data_dirs=DataDirs({"synth": corpus}),
                       progress=False)  # fmt: skip
    status = results["metric_status"]["caption_nojava"]
    assert status["cider"]["comparable"] is False and status["meteor"]["available"] is False
    assert results["results"]["caption_nojava"]["meteor,none"] is None
    assert results["results"]["caption_nojava"]["unavailable"] == ["meteor", "spice"]
    assert "cider" in results["results"]["caption_nojava"]["not_comparable"]
    # One sample: CIDEr's idf is 0 for every n-gram, but the oracle's caption is a reference, so ROUGE-L is 1.
    assert results["results"]["caption_nojava"]["rouge_l,none"] == pytest.approx(1.0)
    report = (tmp_path / "out" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| caption_nojava |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    header_line = next(line for line in report.splitlines() if line.startswith("| task | n |"))
    header = [cell.strip() for cell in header_line.strip("|").split("|")]
    assert cells[header.index("cider")].endswith("*") and cells[header.index("meteor")] == "n/a†"
    assert "no_java=True" in report and "caption_nojava/cider" in report


def test_data_and_config_errors_come_before_the_backend(corpus, tmp_path):
    def factory() -> Backend:
        raise AssertionError("the backend must not be created when a task cannot run")

    with pytest.raises(EvalDataError, match="test.jsonl"):
        evaluate([load_task("synth_image_qa")], factory, tmp_path / "a", data_dirs=DataDirs({"synth": tmp_path}))
    path = task_yaml(tmp_path, "bad_primary", "synth_image_qa", "primary_metric: cider\n")
    with pytest.raises(TaskConfigError, match=r"bad_primary\.yaml: primary_metric: 'cider' is not reported"):
        evaluate([load_task_file(path)], factory, tmp_path / "b", data_dirs=DataDirs({"synth": corpus}))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    argv = ["--model", str(tmp_path), "--tasks", "coco_cap", "--output", str(tmp_path / "o"),
            "--data-dir", f"coco={tmp_path}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing file" in err and "dataset_coco.json" in err and "Traceback" not in err
    assert main(["--tasks", "synth_image_qa", "--output", str(tmp_path)]) == 2
    assert "exactly one of --model / --api" in capsys.readouterr().err


def test_a_backend_that_drops_answers_fails_the_run(corpus, tmp_path):
    class Lossy(ScriptedBackend):
        def generate(self, requests, generation):
            return super().generate(requests, generation)[:-1]

    with pytest.raises(BackendError, match="returned 2 answers for 3 requests"):
        evaluate([load_task("synth_depth_qa")], Lossy(lambda r: "x"), tmp_path / "o",
                 data_dirs=DataDirs({"synth": corpus}), progress=False)  # fmt: skip


def test_standard_error_only_for_means_of_per_sample_scores():
    mean_metric = MetricResult("exact_match", 0.5, [1.0, 0.0, 1.0, 0.0])
    assert standard_error(mean_metric) == pytest.approx(math.sqrt(1 / 3) / 2)
    corpus_level = MetricResult("bleu_4", 0.3, [0.1, 0.2, 0.9])  # BLEU is not the mean of its per-sample values
    assert standard_error(corpus_level) == "N/A"
    assert standard_error(MetricResult("spice", None, available=False)) == "N/A"


def test_qa_tasks_report_the_input_blind_baseline_and_limits_go_per_task(corpus, tmp_path):
    """The baseline is the task's metric on the most frequent training answer per question kind; a model that
    answers exactly that scores the baseline. Captions get none; a mapping limit cuts only the tasks it names."""
    from onellm.diagnose import blind_baseline, blind_predictions

    train = [r for r in read_manifest(corpus / "train.jsonl") if r.task == "qa" and r.inputs[0].modality == "imu"]
    test = [r for r in read_manifest(corpus / "test.jsonl") if r.task == "qa" and r.inputs[0].modality == "imu"]
    blind = dict(zip([r.id for r in test], blind_predictions(train, test), strict=True))
    results = evaluate([load_task("synth_imu_qa"), load_task("synth_imu_caption")],
                       ScriptedBackend(lambda request: blind.get(request.id, "x")), tmp_path / "out",
                       data_dirs=DataDirs({"synth": corpus}), limit={"synth_imu_qa": 2}, progress=False)  # fmt: skip
    qa = results["results"]["synth_imu_qa"]
    assert results["n-samples"]["synth_imu_qa"]["effective"] == 2
    assert results["n-samples"]["synth_imu_caption"]["effective"] == 1
    assert qa["blind_baseline,none"] == pytest.approx(blind_baseline(train, test[:2]))
    assert qa["blind_baseline,none"] == pytest.approx(qa["exact_match,none"])
    assert "blind_baseline,none" not in results["results"]["synth_imu_caption"]
    rows = read_jsonl(tmp_path / "out" / "samples_synth_imu_qa.jsonl")
    assert [row["blind_prediction"] for row in rows] == [blind[row["doc"]["id"]] for row in rows]
    report = (tmp_path / "out" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| task | n |"))
    assert header.endswith("| blind baseline |")
    row = next(line for line in report.splitlines() if line.startswith("| synth_imu_qa |"))
    assert row.endswith(f"| {qa['blind_baseline,none'] * 100:.2f} |")
    assert "most frequent training answer" in report
    with pytest.raises(ValueError, match="limit must be >= 1, got 0 for task synth_imu_qa"):
        evaluate([load_task("synth_imu_qa")], ScriptedBackend(lambda r: ""), tmp_path / "bad",
                 data_dirs=DataDirs({"synth": corpus}), limit={"synth_imu_qa": 0})  # fmt: skip


def test_qa_scores_split_by_question_template_beside_their_blind_baseline(corpus, tmp_path):
    """A model right on one kind of question and wrong on the rest: results.json, the sample rows and report.md
    show that kind at 100 and the others at 0, each beside the blind baseline of its own questions."""
    from onellm.diagnose import blind_predictions, question_template

    train = [r for r in read_manifest(corpus / "train.jsonl") if r.task == "qa" and r.inputs[0].modality == "imu"]
    test = [r for r in read_manifest(corpus / "test.jsonl") if r.task == "qa" and r.inputs[0].modality == "imu"]
    known = question_template(test[0])
    answers = {r.id: (r.references or [r.answer])[0] if question_template(r) == known else "zebra" for r in test}
    results = evaluate([load_task("synth_imu_qa")], ScriptedBackend(lambda request: answers[request.id]),
                       tmp_path / "out", data_dirs=DataDirs({"synth": corpus}), progress=False)  # fmt: skip
    by_template = results["question_templates"]["synth_imu_qa"]
    assert set(by_template) == {question_template(r) for r in test}
    assert sum(row["n"] for row in by_template.values()) == len(test)
    blind = dict(zip([r.id for r in test], blind_predictions(train, test), strict=True))
    for template, row in by_template.items():
        mine = [r for r in test if question_template(r) == template]
        hits = [blind[r.id] in {a.lower() for a in (r.references or [r.answer])} for r in mine]
        assert row["score"] == (1.0 if template == known else 0.0)
        assert row["blind_baseline"] == pytest.approx(sum(hits) / len(mine))
    rows = read_jsonl(tmp_path / "out" / "samples_synth_imu_qa.jsonl")
    assert [row["question_template"] for row in rows] == [question_template(r) for r in test]
    report = (tmp_path / "out" / "report.md").read_text()
    line = next(line for line in report.splitlines() if line.startswith(f"| synth_imu_qa | {known} |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[3] == "100.00" and float(cells[5]) == pytest.approx(100 - float(cells[4]))
    caption = evaluate([load_task("synth_imu_caption")], ScriptedBackend(lambda request: "x"), tmp_path / "cap",
                       data_dirs=DataDirs({"synth": corpus}), progress=False)  # fmt: skip
    assert caption["question_templates"] == {}
    assert "Per question template" not in (tmp_path / "cap" / "report.md").read_text()
