"""Connector ablation for the image alignment stage (issue 11): each variant trains `configs/small/align_image.yaml`
with a few overrides, then is scored on the held-out test split beside the input-blind baseline.

    .venv/bin/python bench/align_ablation.py --data runs/demo/data [--variants default linear llava] [--out DIR]

Per variant: `onellm train` (same corpus, steps, batch, optimizer), `onellm eval` (150 questions, exact match;
50 captions, CIDEr-D), `onellm diagnose` (projector spread, encoder spread). Printed as one markdown table:
variant, QA, blind, QA - blind, CIDEr, distinct captions, spread, train seconds. Seconds are wall time on this
machine, comparable only between variants of the same run. The corpus must exist (`onellm data synth`); a
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
STAGE = REPO / "configs/small/align_image.yaml"
ONELLM = [sys.executable, "-m", "onellm.cli"]

# name -> (what it is, stage overrides). "default" is the small preset as shipped.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": ("4x4 pooled regions -> per-token MLP experts (the small preset)", []),
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
        ],
    ),
    "text_scale": ("default + soft tokens at the text-embedding RMS (0.136)", ["init_from.preset_args.out_rms=text"]),
    "rms8": ("default + soft tokens RMS-normalised to 8", ["init_from.preset_args.out_rms=8"]),
    "rms64": ("default + soft tokens RMS-normalised to 64", ["init_from.preset_args.out_rms=64"]),
    "mid_layer": (
        "rms64 + DINOv2 block 6 concatenated with the last",
        ["init_from.preset_args.out_rms=64", "init_from.preset_args.feature_layers=[6,-1]"],
    ),
    "bf16": ("default, bf16 autocast (same steps)", ["train.precision=bf16"]),
    "bf16_2x": ("default, bf16 autocast, twice the steps", ["train.precision=bf16", "train.steps=300"]),
}


def run(args: list[str], log: Path) -> None:
    with log.open("a", encoding="utf-8") as out:
        done = subprocess.run([*ONELLM, *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if done.returncode:
        raise SystemExit(f"align_ablation: `onellm {' '.join(args[:2])} ...` failed; see {log}")


def score(folder: Path, data: Path, log: Path) -> dict:
    checkpoint = folder / "align_image" / "final"
    for task, limit in (("synth_image_qa", 150), ("synth_image_caption", 50)):
        out = folder / f"eval_{task}"
        if not (out / "results.json").is_file():
            run(
                ["eval", "--model", str(checkpoint), "--tasks", task, "--limit", str(limit), "--no-progress",
                 "--data-dir", f"synth={data}", "--output", str(out)],
                log,
            )
    if not (folder / "diagnostics.json").is_file():
        run(
            ["diagnose", str(checkpoint), "--data", str(data), "--modalities", "image", "--limit", "50",
             "--out", str(folder / "diagnostics.json")],
            log,
        )
    qa = json.loads((folder / "eval_synth_image_qa/results.json").read_text())["results"]["synth_image_qa"]
    cap = json.loads((folder / "eval_synth_image_caption/results.json").read_text())["results"]["synth_image_caption"]
    samples = [json.loads(line) for line in (folder / "eval_synth_image_caption/samples_synth_image_caption.jsonl").open()]
    diag = json.loads((folder / "diagnostics.json").read_text())["modalities"]["image"]
    return {
        "qa": qa["exact_match,none"],
        "blind": qa["blind_baseline,none"],
        "cider": cap["cider,none"],
        "distinct": distinct_caption_fraction([s["prediction"] for s in samples], [s["references"] for s in samples]),
        "spread": diag["projector_spread"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="synthetic corpus folder (train/val/test.jsonl)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=REPO / "runs/align_ablation")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    if not (args.data / "train.jsonl").is_file():
        print(f"align_ablation: {args.data}/train.jsonl not found; write a corpus first: onellm data synth --out "
              f"{args.data}", file=sys.stderr)
        return 2
    rows = []
    for name in args.variants:
        what, overrides = VARIANTS[name]
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "log.txt"
        seconds = None
        if not (folder / "align_image" / "DONE").is_file():
            sets = [f"output_dir={folder}", f"data.root={args.data}", *overrides]
            started = time.perf_counter()
            run(["train", str(STAGE), *[part for s in sets for part in ("--set", s)]], log)
            seconds = time.perf_counter() - started
        row = {"variant": name, "what": what, "train_seconds": seconds, **score(folder, args.data, log)}
        rows.append(row)
        print(f"{name}: {json.dumps(row)}", flush=True)
    print(f"\n{os.cpu_count()} CPUs; test split of {args.data}\n")
    print("| variant | QA | blind | QA − blind | CIDEr | distinct | spread | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        secs = f"{r['train_seconds']:.0f}" if r["train_seconds"] else "–"
        print(
            f"| {r['variant']}: {r['what']} | {r['qa']:.2f} | {r['blind']:.2f} | {r['qa'] - r['blind']:+.2f} | "
            f"{r['cider']:.2f} | {r['distinct']:.2f} | {r['spread']:.3f} | {secs} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
