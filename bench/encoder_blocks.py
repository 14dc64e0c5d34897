"""Seconds to encode a batch of each modality with the small preset reading DINOv2's last block (``feature_layers:
[-1]``, the default before 2026-12-03) against block 6 (the default since: blocks 7-12 are not run).

    .venv/bin/python bench/encoder_blocks.py --data runs/demo/data [--modalities image video audio point]
        [--batch 8] [--repeats 5] [--precision auto|fp32|bf16]

For each modality, the inputs of the corpus's first ``--batch`` training records are preprocessed once. Two things
are timed, each as a median over ``--repeats``, with the two settings alternating on one model in one process:
- ``model.encode`` (tokenizer + encoder + the modality's pooling) without gradients. This is what evaluation pays for
  each input, and what a stage with a frozen path pays once before its features are cached.
- For modalities whose tokenizer trains in the alignment stages (audio, point, IMU, fMRI), the same forward plus
  the backward pass into the tokenizer. That is the encoder's share of every training step there.

The ratio printed is block 6 over the last block: below 1 means block 6 is cheaper.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from onellm.hardware import fast_bf16
from onellm.instruct_data.loader import resolve_input
from onellm.instruct_data.schema import read_manifest
from onellm.presets import SMALL_FEATURE_LAYERS, build_preset

LAST_BLOCK = (-1,)


def first_inputs(data: Path, modality: str, batch: int, processor) -> torch.Tensor:
    rows = []
    for record in read_manifest(data / "train.jsonl"):
        if not record.inputs or record.inputs[0].modality != modality:
            continue
        item = record.inputs[0]
        source, extras = resolve_input(item, data)
        rows.append(processor.preprocess(modality, source, extras))
        if len(rows) == batch:
            return torch.stack(rows)
    raise SystemExit(f"{data / 'train.jsonl'}: fewer than {batch} {modality} records; pass a smaller --batch")


def encode_seconds(model, modality: str, values: torch.Tensor, bf16: bool, backward: bool) -> float:
    """One ``model.encode`` (and, with ``backward``, the backward pass into the modality tokenizer), in seconds."""
    tick = time.perf_counter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast, contextlib.nullcontext() if backward else torch.no_grad():
        out = model.encode(modality, values)
    if backward:
        out.float().pow(2).mean().backward()
        model.mm_tokenizers[modality].zero_grad(set_to_none=True)
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a synthetic corpus (onellm data synth)")
    parser.add_argument("--modalities", nargs="+", default=["image", "video", "audio", "point"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if not (args.data / "train.jsonl").is_file():
        sys.exit(f"{args.data}: no train.jsonl here; write a corpus first: onellm data synth --out {args.data}")

    torch.manual_seed(0)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and fast_bf16("cpu"))
    model, processor = build_preset("small")
    model.eval().requires_grad_(False)  # as in alignment: the encoder is frozen; a tokenizer trains (below)
    settings = {"last block": LAST_BLOCK, "block 6": tuple(SMALL_FEATURE_LAYERS)}
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, batch {args.batch}, median of {args.repeats}"
    )
    print("| modality | pass | last block (s) | block 6 (s) | ratio block 6 / last |")
    print("|---|---|---:|---:|---:|")
    rows = []
    for modality in args.modalities:
        values = first_inputs(args.data, modality, args.batch, processor)
        tokenizer = model.mm_tokenizers[modality]
        trains = any(p.numel() for p in tokenizer.parameters())
        tokenizer.requires_grad_(trains)
        passes = {"forward": False, "forward + backward into the tokenizer": True} if trains else {"forward": False}
        for name, backward in passes.items():
            times = {label: [] for label in settings}
            for round_ in range(1 + args.repeats):  # the first round warms up, untimed
                for label, layers in settings.items():
                    model.encoder.feature_layers = layers
                    took = encode_seconds(model, modality, values, bf16, backward)
                    if round_:
                        times[label].append(took)
            last, six = (statistics.median(times[label]) for label in settings)
            rows.append(
                {"modality": modality, "pass": name, "last_block_s": last, "block6_s": six, "ratio": six / last}
            )
            print(f"| {modality} | {name} | {last:.3f} | {six:.3f} | {six / last:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
