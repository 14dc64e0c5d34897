"""The demo's report: scores collected from each stage's results.json, samples and diagnostics.json (modality and
task type read from the task configs the results record), tables, the targets of issue 11, plots, report.md/json."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onellm.demo.pipeline import DIAGNOSTICS_FILE, INTERMEDIATE_ITEMS, SERVED_FILE, _rows, write_json

if TYPE_CHECKING:
    from onellm.demo.pipeline import StageEval, Timings

REPORT_JSON = "report.json"
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
    "qa_kinds",  # question kind -> {"n", "accuracy", "blind"}: where the model reads its input and where it guesses
)


# --- report ----------------------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """stage -> modality -> the numbers of report.json (``cider``, ``qa_accuracy``, ``qa_blind_baseline``,
    ``distinct_caption_fraction``, ``projector_spread``, intervals, counts), in curriculum order."""

    stages: list[str]
    modalities: list[str]
    values: dict[str, dict[str, dict[str, Any]]]
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> evaluation seconds (tasks + spread)
    dtypes: dict[str, str] = field(default_factory=dict)  # stage -> the dtype its checkpoint was scored in

    def get(self, stage: str, modality: str, key: str) -> Any:
        return self.values.get(stage, {}).get(modality, {}).get(key)


def task_of(results: dict[str, Any], modality: str, task_type: str) -> str | None:
    """The task of ``results.json`` that scored ``modality`` with ``task_type`` (read from the recorded task
    configs, not from the task's name), or None."""
    for name, config in results.get("configs", {}).items():
        if config.get("modality") == modality and config.get("task_type") == task_type and name in results["results"]:
            return name
    return None


def modality_scores(folder: Path, results: dict[str, Any], modality: str, spreads: dict[str, Any]) -> dict[str, Any]:
    """One stage's numbers for one modality from its results.json, samples files and diagnostics.json."""
    from onellm.diagnose import check_targets, distinct_caption_fraction
    from onellm.eval.intervals import bootstrap_interval, wilson_interval

    row: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
    caption_task, qa_task = (task_of(results, modality, kind) for kind in ("caption", "qa"))
    if caption_task is not None:
        samples = _rows(folder / f"samples_{caption_task}.jsonl")
        ciders = [float(s["cider"]) for s in samples]
        row["cider"] = results["results"][caption_task]["cider,none"]
        row["cider_interval"] = list(bootstrap_interval(ciders))
        row["distinct_caption_fraction"] = distinct_caption_fraction(
            [s["prediction"] for s in samples], [s["references"] for s in samples]
        )
        row["captions"] = len(samples)
    if qa_task is not None:
        samples = _rows(folder / f"samples_{qa_task}.jsonl")
        hits = sum(float(s["exact_match"]) for s in samples)
        row["qa_accuracy"] = results["results"][qa_task]["exact_match,none"]
        row["qa_interval"] = list(wilson_interval(hits, len(samples)))
        row["qa_blind_baseline"] = results["results"][qa_task].get("blind_baseline,none")
        row["questions"] = len(samples)
        by_template = results.get("question_templates", {}).get(qa_task) or {}
        row["qa_kinds"] = {
            template.split(":", 1)[-1]: {"n": v["n"], "accuracy": v["score"], "blind": v["blind_baseline"]}
            for template, v in by_template.items()
        } or None
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
    dtypes: dict[str, str] = {}
    modalities: list[str] = []
    for entry in plan:
        folder = out / "eval" / entry.stage
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        spreads = json.loads((folder / DIAGNOSTICS_FILE).read_text(encoding="utf-8"))
        values[entry.stage] = {m: modality_scores(folder, results, m, spreads) for m in entry.modalities}
        modalities += [m for m in entry.modalities if m not in modalities]
        seconds[entry.stage] = round(float(results["total_evaluation_time_seconds"]) + spreads.get("seconds", 0.0), 1)
        dtypes[entry.stage] = results.get("config", {}).get("dtype", "?")
    return Scores([e.stage for e in plan], modalities, values, seconds, dtypes)


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


def kind_table(scores: Scores) -> list[str]:
    """The last stage, one row per modality: its question kinds above their own blind baseline and those at or
    below it (``kind accuracy (blind)``, largest gain first): the kinds a model answers from the prior."""
    last = scores.stages[-1]
    body = []
    for m in scores.modalities:
        kinds = scores.get(last, m, "qa_kinds")
        if not kinds:
            continue
        ranked = sorted(kinds.items(), key=lambda kv: (kv[1]["blind"] - kv[1]["accuracy"], kv[0]))
        cells = {
            above: ", ".join(
                f"{kind} {v['accuracy']:.2f} ({v['blind']:.2f})"
                for kind, v in ranked
                if (v["accuracy"] > v["blind"]) == above
            )
            or "—"
            for above in (True, False)
        }
        body.append([m, cells[True], cells[False]])
    if not body:
        return []
    return _table(["modality", "kinds above their blind baseline", "kinds at or below it"], body)


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


def kinds_section(scores: Scores) -> list[str]:
    table = kind_table(scores)
    if not table:
        return []
    return [
        f"## Question kinds after {scores.stages[-1]}",
        "",
        "Accuracy per kind of question, its own input-blind baseline in brackets (all kinds in "
        f"`{REPORT_JSON}` under `qa_kinds`, every template in `eval/{scores.stages[-1]}/report.md`). A kind at or "
        "below its baseline is answered from the prior, not from the input.",
        "",
        *table,
        "",
    ]


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
    eval_rows = ["| stage | modalities | captions | questions | dtype | seconds |", "|---|---|---:|---:|---|---:|"]
    for entry in plan:
        caps = sum(scores.get(entry.stage, m, "captions") or 0 for m in entry.modalities)
        qs = sum(scores.get(entry.stage, m, "questions") or 0 for m in entry.modalities)
        eval_rows.append(
            f"| {entry.stage} | {len(entry.modalities)} | {caps} | {qs} | {scores.dtypes.get(entry.stage, '?')} | "
            f"{scores.seconds[entry.stage]:.0f} |"
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
        *kinds_section(scores),
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
            "with the engine start): each input sent as the chat content part a client sends for it, greedy answers; "
            "the last column compares each with the caption the evaluation (hf backend) generated for the same item "
            "and, where they differ, names the first token at which they part and how much likelier the serving "
            "engine found its own token there (a few hundredths: a near-tie that the engines' rounding decides).",
            "",
            "| modality | input | question | answer | reference caption | as scored by the evaluation |",
            "|---|---|---|---|---|---|",
            *(
                f"| {row['modality']} | `{Path(row['input']).name}` | {_cell(row['question'])} | "
                f"{_cell(row['answer'])} | {_cell(row['reference'])} | {_as_scored(row)} |"
                for row in served.get("answers", [])
            ),
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    printed = [*table, "", *stage_table(scores, "qa"), "", *(["targets missed:", *missed] if missed else [])]
    return path, "\n".join(printed)


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: on one line, its pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def served_agreement(rows: list[dict[str, Any]]) -> str:
    """One line: how many served answers equal the evaluation's, and where each other one parts from it."""
    scored = [row for row in rows if row.get("scored_answer") is not None]
    if not scored:
        return "no served input was scored by the evaluation"
    same = sum(row["scored_answer"] == row["answer"] for row in scored)
    parts = [f"{row['modality']} {_parting(row)}" for row in scored if row["scored_answer"] != row["answer"]]
    return "; ".join([f"{same} of {len(scored)} served answers equal the evaluation's", *parts])


def _as_scored(row: dict[str, Any]) -> str:
    scored = row.get("scored_answer")
    if scored is None:
        return "not scored"
    return "same" if scored == row["answer"] else f"{_parting(row)}: {_cell(scored)}"


def _parting(row: dict[str, Any]) -> str:
    """How a served answer that is not the scored one parts from it (``served.json``'s ``divergence``)."""
    part = row.get("divergence")
    if not part:
        return "differs"
    if "logprob_gap" in part:
        gap = f"{part['logprob_gap']:.3f} apart in log-probability"
    elif "logprob_gap_at_least" in part:
        gap = f"at least {part['logprob_gap_at_least']:.3f} apart in log-probability"
    else:
        gap = "the served answer had stopped"
    return f"differs from token {part['token']} on ({_cell(repr(part['served']))} served, {_cell(repr(part['scored']))} scored, {gap})"
