"""Stage ablations (issue 11): each variant trains one stage of the small curriculum with a few overrides, then is
scored on the held-out test split beside the input-blind baseline.

    .venv/bin/python bench/align_ablation.py --data runs/demo/data [--variants default linear llava] [--out DIR]
    .venv/bin/python bench/align_ablation.py --stage instruct --start runs/small/align_rest/final --data runs/demo/data

``--stage align_image`` (default): connectors for `configs/small/align_image.yaml`, scored on images.
``--stage instruct``: how `configs/small/instruct.yaml` treats the aligned model it starts from (``--start``, an
align_rest checkpoint), scored on all eight modalities; variant ``start`` scores the starting checkpoint itself.

Per variant: `onellm train` (same corpus, steps, batch, optimizer), `onellm eval` (150 questions, exact match;
50 captions, CIDEr-D, per modality), `onellm diagnose` (projector spread). Printed as one markdown table per
variant and modality: QA, blind, QA - blind, CIDEr, distinct captions, spread, train seconds. Seconds are wall time
on this machine, comparable only between variants of the same run. The corpus must exist (`onellm data synth`); a
variant whose folder holds a finished run is scored again without retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from onellm.diagnose import distinct_caption_fraction

REPO = Path(__file__).resolve().parents[1]
ONELLM = [sys.executable, "-m", "onellm.cli"]

# OneLLM's learned start and end tags in place of the default's word slots, and no word loss.
_LEARNED = [
    "init_from.preset_args.end_tag=learned",
    "init_from.preset_args.start_tag=learned",
    "init_from.preset_args.extra_slots=0",
    "train.lexical_loss=0.0",
    "train.word_fit_steps=0",
]

# name -> (what it is, stage overrides). "default" is the small preset as shipped.
ALIGN_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": ("4x4 pooled regions of DINOv2's block 6 -> per-token MLP experts (the small preset)", []),
    "last_block": (
        "default reading DINOv2's last block (the small preset before 2026-12-03)",
        ["init_from.preset_args.feature_layers=[-1]"],
    ),
    "linear": (
        "4x4 pooled regions -> linear (in/out projections only, depth 0)",
        ["init_from.preset_args.depth=0", "trainable={projector.image: 2.0e-3}"],  # no expert weights to train
    ),
    "llava": ("all 64 patch tokens -> per-token MLP (LLaVA's connector)", ["init_from.preset_args.num_queries=64"]),
    "onellm": (
        "8 learned queries -> attention experts (OneLLM's layout)",
        [
            "init_from.preset_args.queries=learned",
            "init_from.preset_args.expert=transformer",
            "init_from.preset_args.num_queries=8",
            *_LEARNED,
        ],
    ),
    "text_scale": ("default + soft tokens at the text-embedding RMS (0.136)", ["init_from.preset_args.out_rms=text"]),
    "rms8": ("default + soft tokens RMS-normalised to 8", ["init_from.preset_args.out_rms=8"]),
    "rms64": ("default + soft tokens RMS-normalised to 64", ["init_from.preset_args.out_rms=64"]),
    "mid_layer": (
        "rms64 + DINOv2 block 6 concatenated with the last",
        ["init_from.preset_args.out_rms=64", "init_from.preset_args.feature_layers=[6,-1]"],
    ),
    "layer0": (
        "DINOv2's input tokens (layer 0: patch embedding, colour intact) concatenated with the last block",
        ["init_from.preset_args.feature_layers=[0,-1]"],
    ),
    "layer4": ("DINOv2 block 4 concatenated with the last", ["init_from.preset_args.feature_layers=[4,-1]"]),
    "fp32": ("default in fp32 (no bf16 autocast)", ["train.precision=fp32"]),
    "steps150": ("default at the former demo's 150 steps", ["train.steps=150", "train.warmup_steps=3"]),
    "2x": ("default, twice the steps (800)", ["train.steps=800", "train.warmup_steps=16"]),
    "lora": (
        "default + LoRA r8 on the frozen LLM at 1e-3 (instruct recipe on the alignment data)",
        [
            "recipe=instruct",
            "lora={r: 8, alpha: 16, dropout: 0.0, qlora: false}",
            "trainable={projector.image: 2.0e-3, projector.experts: 2.0e-3, lora: 1.0e-3}",
        ],
    ),
    "lora_low": (
        "default + LoRA r8 on the frozen LLM at 2e-4 (instruct recipe on the alignment data)",
        [
            "recipe=instruct",
            "lora={r: 8, alpha: 16, dropout: 0.0, qlora: false}",
            "trainable={projector.image: 2.0e-3, projector.experts: 2.0e-3, lora: 2.0e-4}",
        ],
    ),
    "batch16": (
        "default, batches of 16 at lr 3e-3 for 130 steps (1.3x the samples of 200 x 8)",
        [
            "train.batch_size=16",
            "train.steps=130",
            "train.warmup_steps=3",
            "trainable={projector.image: 3.0e-3, projector.experts: 3.0e-3}",
        ],
    ),
    "turns4": (
        "a caption and the questions about one image as one conversation (data.turns_per_input 4), 120 steps of 8 "
        "(a step holds ~2.5x the tokens: about the time of 300 single-turn steps)",
        ["data.turns_per_input=4", "train.steps=120", "train.warmup_steps=3"],
    ),
    "batch4": (
        "default, batches of 4 and twice the steps (same samples, twice the updates)",
        ["train.batch_size=4", "train.steps=800", "train.warmup_steps=16"],
    ),
    "grouped": (
        "default, batches grouped by token length (data.group_by_length 16: 16 batches drawn, sorted, cut again)",
        ["data.group_by_length=16"],
    ),
    "pool3": (
        "3x3 pooled regions (9 soft tokens instead of 16: shorter rows)",
        ["init_from.preset_args.num_queries=9"],
    ),
    # The default closes the soft tokens with the lexical end tag (since the demo's two-seed comparison); the rows
    # above that BENCHMARKS.md dates before 2026-12-04 evening were measured beside the learned tag.
    "learned": (
        "default with OneLLM's learned start and end tags instead of the word slots (no word loss)",
        _LEARNED,
    ),
    "two_slots": (
        "default with two word slots (the start and end tags) instead of three (extra_slots 0)",
        ["init_from.preset_args.extra_slots=0"],
    ),
    "words1": ("default, the lexical tag's word loss at 1.0 instead of 0.5", ["train.lexical_loss=1.0"]),
    "words2": ("default, the lexical tag's word loss at 2.0 instead of 0.5", ["train.lexical_loss=2.0"]),
    "regions": (
        "default + region words: each soft token also carries a word mixture chosen from its own region",
        ["init_from.preset_args.region_words=add"],
    ),
}

_EIGHT = ("image", "video", "audio", "point", "depth", "normal", "imu", "fmri")

# Instruction tuning from a finished align_rest (issue 11: the shipped stage undid alignment, image CIDEr 1.22 ->
# 0.65 over the long profile's instruct stage). "start" trains nothing: it scores the starting checkpoint.
INSTRUCT_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "start": ("the align_rest checkpoint, no instruction tuning", []),
    "default": ("LoRA r8 2e-4, UPM frozen (as shipped since cd7cb24; `lora_low` in earlier runs)", []),
    "lora_upm": (
        "LoRA r8 1e-3 + UPM 1e-3 (shipped before cd7cb24)",
        ["trainable={lora: 1.0e-3, projector.*: 1.0e-3}"],
    ),
    "frozen_upm": ("LoRA r8 1e-3, UPM frozen", ["trainable={lora: 1.0e-3}"]),
    "low_lr": ("LoRA r8 2e-4 + UPM 2e-4", ["trainable={lora: 2.0e-4, projector.*: 2.0e-4}"]),
    "upm_only": (
        "no LoRA: UPM 1e-3 on the instruct mixture (align recipe)",
        ["recipe=align", "lora=null", "trainable={projector.*: 1.0e-3}"],
    ),
    "heads": (
        "LoRA r8 1e-3 + the eight UPM heads 1e-3, shared experts frozen",
        ["trainable={lora: 1.0e-3, " + ", ".join(f"projector.{m}: 1.0e-3" for m in _EIGHT) + "}"],
    ),
    # One-word answers weigh as much as a caption: under token weighting a batch of 4 captions (~15 tokens each) and
    # 4 answers gives the answers ~1/10 of the gradient, and 60 steps show each question template ~12 times.
    "sample": ("default, every row's mean token loss weighs the same", ["train.loss_weighting=sample"]),
    "sample_lr": (
        "LoRA r8 1e-3, every row's mean token loss weighs the same",
        ["train.loss_weighting=sample", "trainable={lora: 1.0e-3}"],
    ),
}

MODALITIES = list(_EIGHT)
STAGES: dict[str, tuple[str, dict[str, tuple[str, list[str]]], list[str]]] = {
    "align_image": ("configs/small/align_image.yaml", ALIGN_VARIANTS, ["image"]),
    "instruct": ("configs/small/instruct.yaml", INSTRUCT_VARIANTS, MODALITIES),
}


def run(args: list[str], log: Path) -> None:
    with log.open("a", encoding="utf-8") as out:
        done = subprocess.run([*ONELLM, *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if done.returncode:
        raise SystemExit(f"align_ablation: `onellm {' '.join(args[:2])} ...` failed; see {log}")


def spreads(checkpoint: Path, data: Path, modalities: list[str]) -> dict[str, dict]:
    """``{modality: {"projector_spread"}}`` over the test split's first 50 inputs of each modality."""
    from onellm import OneLLMForConditionalGeneration, OneLLMProcessor
    from onellm.diagnose import read_split, spread_on_split

    model = OneLLMForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = OneLLMProcessor.from_pretrained(checkpoint)
    test = read_split(data, "test")
    return {m: {"projector_spread": spread_on_split(model, processor, test, data, m, 50)[0]} for m in modalities}


def score(checkpoint: Path, folder: Path, data: Path, modalities: list[str], log: Path) -> dict[str, dict]:
    """Per modality: QA accuracy and its input-blind baseline, CIDEr, distinct captions, projector spread."""
    for kind, limit in (("qa", 150), ("caption", 50)):
        out = folder / f"eval_{kind}"
        if not (out / "results.json").is_file():
            tasks = ",".join(f"synth_{m}_{kind}" for m in modalities)
            run(
                [
                    "eval",
                    "--model",
                    str(checkpoint),
                    "--tasks",
                    tasks,
                    "--limit",
                    str(limit),
                    "--no-progress",
                    "--data-dir",
                    f"synth={data}",
                    "--output",
                    str(out),
                ],
                log,
            )
    if not (folder / "diagnostics.json").is_file():
        if len(modalities) == 1:  # the whole diagnosis (probes, shuffled-input loss; ~100 s a modality)
            run(
                [
                    "diagnose",
                    str(checkpoint),
                    "--data",
                    str(data),
                    "--modalities",
                    modalities[0],
                    "--limit",
                    "50",
                    "--out",
                    str(folder / "diagnostics.json"),
                ],
                log,
            )
        else:  # the projector spread alone (seconds), as the demo's report measures it
            (folder / "diagnostics.json").write_text(json.dumps({"modalities": spreads(checkpoint, data, modalities)}))
    qa = json.loads((folder / "eval_qa/results.json").read_text())["results"]
    cap = json.loads((folder / "eval_caption/results.json").read_text())["results"]
    diag = json.loads((folder / "diagnostics.json").read_text())["modalities"]
    scores = {}
    for m in modalities:
        path = folder / f"eval_caption/samples_synth_{m}_caption.jsonl"
        samples = [json.loads(line) for line in path.open()]
        scores[m] = {
            "qa": qa[f"synth_{m}_qa"]["exact_match,none"],
            "blind": qa[f"synth_{m}_qa"]["blind_baseline,none"],
            "cider": cap[f"synth_{m}_caption"]["cider,none"],
            "distinct": distinct_caption_fraction(
                [s["prediction"] for s in samples], [s["references"] for s in samples]
            ),
            "spread": diag[m]["projector_spread"],
        }
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="synthetic corpus folder (train/val/test.jsonl)")
    parser.add_argument("--stage", choices=list(STAGES), default="align_image")
    parser.add_argument("--start", type=Path, help="instruct: the checkpoint the stage starts from (align_rest)")
    parser.add_argument("--variants", nargs="+", default=None, help="default: every variant of the stage")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/<stage>_ablation (runs/align_ablation)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    config, variants, modalities = STAGES[args.stage]
    names = args.variants or list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        print(f"align_ablation: unknown {args.stage} variant(s) {unknown}; known: {list(variants)}", file=sys.stderr)
        return 2
    if not (args.data / "train.jsonl").is_file():
        print(
            f"align_ablation: {args.data}/train.jsonl not found; write a corpus first: onellm data synth --out "
            f"{args.data}",
            file=sys.stderr,
        )
        return 2
    if args.stage == "instruct" and (args.start is None or not (args.start / "config.json").is_file()):
        print(
            "align_ablation: --stage instruct needs --start CKPT, a finished align_rest checkpoint (e.g. "
            "runs/small/align_rest/final from `onellm train configs/small/curriculum.yaml`)",
            file=sys.stderr,
        )
        return 2
    out_root = args.out or REPO / (
        "runs/align_ablation" if args.stage == "align_image" else f"runs/{args.stage}_ablation"
    )
    stage_name = Path(config).stem
    rows = []
    for name in names:
        what, overrides = variants[name]
        folder = out_root / name
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "log.txt"
        seconds = None
        if name == "start":
            checkpoint = args.start
        else:
            # an instruct stage's final/ holds the base without LoRA, merged/ the adapter folded in; a variant without
            # LoRA (upm_only: the align recipe) writes final/ alone
            stage_dir = folder / stage_name
            if not (stage_dir / "DONE").is_file():
                sets = [f"output_dir={folder}", f"data.root={args.data}"]
                if args.start is not None:
                    sets += ["init_from.stage=null", f"init_from.path={args.start.resolve()}"]
                started = time.perf_counter()
                sets += overrides
                run(["train", str(REPO / config), *[part for s in sets for part in ("--set", s)]], log)
                seconds = time.perf_counter() - started
            checkpoint = stage_dir / "merged" if (stage_dir / "merged").is_dir() else stage_dir / "final"
        for modality, scores in score(checkpoint, folder, args.data, modalities, log).items():
            row = {"variant": name, "what": what, "modality": modality, "train_seconds": seconds, **scores}
            rows.append(row)
            print(f"{name}: {json.dumps(row)}", flush=True)
    print(f"\n{os.cpu_count()} CPUs; test split of {args.data}\n")
    print("| variant | modality | QA | blind | QA − blind | CIDEr | distinct | spread | train s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        secs = f"{r['train_seconds']:.0f}" if r["train_seconds"] else "–"
        print(
            f"| {r['variant']}: {r['what']} | {r['modality']} | {r['qa']:.2f} | {r['blind']:.2f} | "
            f"{r['qa'] - r['blind']:+.2f} | {r['cider']:.2f} | {r['distinct']:.2f} | {r['spread']:.3f} | {secs} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
