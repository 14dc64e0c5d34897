"""Seconds of the lexical end tags of one batch, a frozen word table's rows kept (``word_rows``) or made per call;
and of a head's word slots, each tag's own forward or all computed together (``slot_words``).

    .venv/bin/python bench/lexical_tag.py [--heads 8] [--batch 8] [--slots 3] [--repeats 20] [--json out.json]

An instruct batch of the small curriculum calls up to eight heads' ``LexicalTag`` (one per modality in the batch),
each against SmolLM2-135M's word table (49,152 x 576; random values of its RMS here: the time does not depend on
them). "recompute" empties ``word_rows``' cache before every head: each call normalises the table and casts it for
the mixture, as before the cache. "kept" is the shipped path. Two settings: ``train`` (align: gradient into the
tag's projection) and ``no_grad`` (instruct with the UPM frozen, evaluation). Precision as training picks it
(``precision: auto``: bf16 autocast where native). Both sides alternate within each repeat, so a drift of the host's
speed falls on both; medians.

The second table: each head with ``--slots`` word slots (the small curriculum: three, ``extra_slots: 1``; two without).
"separate" calls each slot's ``LexicalTag`` (two vocabulary matmuls each, forward; two more backward); "together"
is the shipped :func:`slot_words` (two for all of a head's slots).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from onellm.hardware import fast_bf16
from onellm.projectors.upm import LexicalTag, forget_word_rows, slot_words

VOCAB, WIDTH, HIDDEN = 49_152, 576, 576  # SmolLM2-135M's text vocabulary and width; the small UPM's width


def word_table() -> torch.Tensor:
    """A random table of SmolLM2-135M's text vocabulary and width at its embedding RMS (times do not depend on the
    values)."""
    torch.manual_seed(0)
    return torch.randn(VOCAB, WIDTH) * 0.136


def alternating_medians(sides: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each side's call over ``repeats``, after ``warmup`` untimed rounds; the sides alternate
    their order every round, so a drift of the host's speed falls on all of them."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for round_ in range(warmup + repeats):
        for name in order if round_ % 2 else order[::-1]:
            seconds = sides[name]()
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def batch_seconds(tags: list[LexicalTag], table: torch.Tensor, summary: torch.Tensor, grad: bool, keep: bool) -> float:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if fast_bf16("cpu") else contextlib.nullcontext()
    start = time.perf_counter()
    with autocast, torch.set_grad_enabled(grad):
        total = 0.0
        for tag in tags:
            if not keep:
                forget_word_rows()
            end, _ = tag(summary, table[:VOCAB])
            total = total + end.float().square().mean()
    if grad:
        total.backward()
    return time.perf_counter() - start


def slots_seconds(heads: list[list[LexicalTag]], table, summary, grad: bool, together: bool) -> float:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if fast_bf16("cpu") else contextlib.nullcontext()
    start = time.perf_counter()
    with autocast, torch.set_grad_enabled(grad):
        total = 0.0
        for tags in heads:
            if together:
                words = slot_words(tags, summary, table[:VOCAB])
            else:
                words = torch.stack([tag(summary, table[:VOCAB])[0] for tag in tags], dim=1)
            total = total + words.float().square().mean()
    if grad:
        total.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="inputs per head")
    parser.add_argument(
        "--slots", type=int, default=3, help="word slots per head (second table; the small curriculum: 3)"
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    table = word_table()
    tags = [LexicalTag(HIDDEN, WIDTH) for _ in range(args.heads)]
    summary = torch.randn(args.batch, HIDDEN)
    heads = [[LexicalTag(HIDDEN, WIDTH) for _ in range(args.slots)] for _ in range(args.heads)]
    rows, slot_rows = [], []
    for setting, grad in (("train", True), ("no_grad", False)):
        kept = alternating_medians(
            {
                "recompute": functools.partial(batch_seconds, tags, table, summary, grad, keep=False),
                "kept": functools.partial(batch_seconds, tags, table, summary, grad, keep=True),
            },
            args.repeats,
            warmup=2,
        )
        rows.append(
            {"setting": setting, **{f"{k}_s": v for k, v in kept.items()}, "ratio": kept["kept"] / kept["recompute"]}
        )
        slots = alternating_medians(
            {
                "separate": functools.partial(slots_seconds, heads, table, summary, grad, together=False),
                "together": functools.partial(slots_seconds, heads, table, summary, grad, together=True),
            },
            args.repeats,
            warmup=2,
        )
        ratio = slots["together"] / slots["separate"]
        slot_rows.append({"setting": setting, **{f"{k}_s": v for k, v in slots.items()}, "ratio": ratio})
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"bf16 autocast: {fast_bf16('cpu')}; {args.heads} heads x {args.batch} inputs, {args.repeats} repeats"
    )
    print("| setting | recompute (s) | kept (s) | ratio kept/recompute |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['setting']} | {row['recompute_s']:.4f} | {row['kept_s']:.4f} | {row['ratio']:.3f} |")
    print(f"\n{args.slots} word slots per head\n| setting | separate (s) | together (s) | ratio together/separate |")
    print("|---|---:|---:|---:|")
    for row in slot_rows:
        print(f"| {row['setting']} | {row['separate_s']:.4f} | {row['together_s']:.4f} | {row['ratio']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"word_rows": rows, "slots": slot_rows}, f, indent=1)


if __name__ == "__main__":
    main()
