"""``report.md`` (a table of every task's metrics) and ``report.png`` (each task's primary metric) from results.json.

Scores are fractions in results.json and printed ×100 here (CIDEr-D 1.05 -> 105.00, accuracy 0.62 -> 62.00), as
papers print them. A value that is not comparable to published numbers of the same name carries ``*``; a metric
that could not be computed reads ``n/a†``; the notes explaining both are listed under the table, so a number is
never shown without the caveat that comes with it.

QA tasks with an input-blind baseline (``blind_baseline,none``: the most frequent training answer per question
template, scored like the model) show it in a last column and as a black tick on their bar: a score at the tick is
what a model that ignores its input gets. Below the tables, each such task's questions are split by template
(``question_templates`` in results.json): a model can read its input for one kind of question ("what shape is it?")
and answer another ("is there a cube?") from the prior, which the task's single number hides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NOT_COMPARABLE = "*"
UNAVAILABLE = "n/a†"
SCALE = 100.0


def metric_columns(results: dict[str, Any]) -> list[str]:
    """Metric names in order of first appearance over the tasks."""
    columns: list[str] = []
    for status in results["metric_status"].values():
        columns += [name for name in status if name not in columns]
    return columns


def cell(results: dict[str, Any], task: str, metric: str) -> str:
    status = results["metric_status"][task].get(metric)
    if status is None:
        return ""
    if not status["available"]:
        return UNAVAILABLE
    value = results["results"][task][f"{metric},none"]
    text = f"{value * SCALE:.2f}"
    return text + (NOT_COMPARABLE if not status["comparable"] else "")


def notes(results: dict[str, Any]) -> list[str]:
    """One line per distinct caveat, naming every task/metric it applies to."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for task, status in results["metric_status"].items():
        for metric, flags in status.items():
            if not flags["available"]:
                key = (UNAVAILABLE, flags["note"] or "not computed")
            elif not flags["comparable"]:
                key = (NOT_COMPARABLE, flags["note"] or "not comparable to published numbers")
            else:
                continue
            grouped.setdefault(key, []).append(f"{task}/{metric}")
    lines = []
    for (mark, note), where in grouped.items():
        label = "unavailable" if mark == UNAVAILABLE else "not comparable to published numbers"
        lines.append(f"- `{mark}` {label} — {', '.join(where)}: {note}")
    return lines


BLIND_COLUMN = "blind baseline"


def blind_baseline(results: dict[str, Any], task: str) -> float | None:
    """The task's input-blind baseline in its primary metric, or None when the run has none for it."""
    return results["results"][task].get("blind_baseline,none")


def markdown(results: dict[str, Any], chart: str | None = None) -> str:
    config = results.get("config", {})
    tasks = list(results["results"])
    columns = metric_columns(results)
    with_blind = any(blind_baseline(results, task) is not None for task in tasks)
    header = ["task", "n", *columns, *([BLIND_COLUMN] if with_blind else [])]
    rows = []
    for task in tasks:
        n = results["n-samples"][task]["effective"]
        blind = blind_baseline(results, task)
        extra = [] if not with_blind else ["" if blind is None else f"{blind * SCALE:.2f}"]
        rows.append([task, str(n), *(cell(results, task, metric) for metric in columns), *extra])
    what = config.get("model") or config.get("api") or "?"
    system = f"system instruction {config['system_instruction']!r} · " if config.get("system_instruction") else ""
    lines = [
        f"# onellm eval: {what}",
        "",
        f"backend `{config.get('backend', '?')}` · model `{config.get('model', '?')}` · "
        f"limit {config.get('limit')} · batch size {config.get('batch_size')} · "
        f"{system}"
        f"git {results.get('git_hash') or 'unknown'} · {results.get('date_iso', '')} · "
        f"{float(results.get('total_evaluation_time_seconds', 0)):.1f} s",
        "",
        f"Scores ×{SCALE:g}. `{NOT_COMPARABLE}` = not comparable to published numbers, `{UNAVAILABLE}` = not computed "
        "(see the notes below the table).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---:"] + ["---:"] * (len(header) - 2)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    if with_blind:
        lines += [
            f"`{BLIND_COLUMN}`: the QA task's primary metric when every question gets the most frequent training "
            "answer of its template (a model that ignores its input scores about this).",
            "",
        ]
    caveats = notes(results)
    if caveats:
        lines += ["Notes:", "", *caveats, ""]
    lines += [
        "| task | version | primary metric | samples (of) | empty answers | generate s | samples/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for task in tasks:
        timing, count = results["timings"][task], results["n-samples"][task]
        lines.append(
            f"| {task} | {results['versions'][task]} | {results['primary_metric'][task]} | "
            f"{count['effective']} ({count['original']}) | {count['empty_predictions']} | "
            f"{timing['generate_s']:.2f} | {timing['samples_per_s']} |"
        )
    lines.append("")
    lines += template_table(results)
    if chart:
        lines += [f"![primary metric per task]({chart})", ""]
    return "\n".join(lines)


def template_table(results: dict[str, Any]) -> list[str]:
    """Markdown lines: every QA task's score per question template beside the blind baseline (none when the run
    has no per-template scores)."""
    by_task = results.get("question_templates") or {}
    if not by_task:
        return []
    lines = [
        f"Per question template (×{SCALE:g}; gain = score − {BLIND_COLUMN}):",
        "",
        f"| task | template | n | score | {BLIND_COLUMN} | gain |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task, templates in by_task.items():
        for template, row in templates.items():
            gain = (row["score"] - row["blind_baseline"]) * SCALE
            lines.append(
                f"| {task} | {template} | {row['n']} | {row['score'] * SCALE:.2f} | "
                f"{row['blind_baseline'] * SCALE:.2f} | {gain:+.2f} |"
            )
    return [*lines, ""]


def plot(results: dict[str, Any], path: Path) -> None:
    """Bar chart of each task's primary metric (×100); hatched when not comparable, labelled n/a when missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["results"])
    heights, labels, hatches = [], [], []
    for task in tasks:
        metric = results["primary_metric"][task]
        flags = results["metric_status"][task][metric]
        value = results["results"][task][f"{metric},none"] if flags["available"] else None
        heights.append(0.0 if value is None else value * SCALE)
        labels.append(
            UNAVAILABLE if value is None else f"{value * SCALE:.1f}" + ("*" if not flags["comparable"] else "")
        )
        hatches.append("//" if not flags["comparable"] else "")
    figure, axes = plt.subplots(figsize=(max(5.5, 0.9 * len(tasks) + 1.5), 4.0))
    bars = axes.bar(range(len(tasks)), heights, color="#4C72B0", edgecolor="black", linewidth=0.6)
    for bar, hatch, label in zip(bars, hatches, labels, strict=True):
        bar.set_hatch(hatch)
        axes.annotate(
            label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
        )
    blinds = [blind_baseline(results, task) for task in tasks]
    labelled = False
    for index, blind in enumerate(blinds):
        if blind is not None:  # one legend entry for all the ticks
            label = None if labelled else "input-blind baseline"
            axes.hlines(blind * SCALE, index - 0.45, index + 0.45, colors="black", linewidth=2, label=label)
            labelled = True
    if labelled:
        axes.legend(fontsize=8, loc="upper right")
    axes.set_xticks(range(len(tasks)))
    axes.set_xticklabels(
        [f"{task}\n({results['primary_metric'][task]})" for task in tasks], rotation=30, ha="right", fontsize=8
    )
    axes.set_ylabel(f"score ×{SCALE:g}")
    axes.set_ylim(0, max([*heights, *(b * SCALE for b in blinds if b is not None), 1.0]) * 1.15)
    axes.set_title("primary metric per task\n(hatched, * = not comparable to published numbers)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``report.png`` and ``report.md`` into ``output_dir``; returns the markdown path."""
    out = Path(output_dir)
    plot(results, out / "report.png")
    path = out / "report.md"
    path.write_text(markdown(results, chart="report.png"), encoding="utf-8")
    return path
