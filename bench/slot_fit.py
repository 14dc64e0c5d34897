"""Seconds per step of the word-slot fit (``train.word_fit_steps``; onellm/train/lexical.py, ``fit_word_slots``):
the shipped loss beside the plain one it replaced, alternating within each repeat.

    .venv/bin/python bench/slot_fit.py [--slots 3] [--batch 64] [--steps 20] [--repeats 5] [--json out.json]

One step = the slots' word logits for a batch of summaries, the set-matching loss (:func:`slot_loss`), backward and
an Adam step on the slots' word projections, against SmolLM2-135M's word table (49,152 x 576; random values of its
RMS: the time does not depend on them) under bf16 autocast where native, as the fit runs in the demo.

- ``plain``: each slot's logits from its own matmul against the table, a full ``[n, K, V]`` log-softmax, and each
  row matched on its own (the fit before 2026-12-05 evening).
- ``shipped``: :func:`slot_logits` (one matmul for all slots), the same log-softmax, rows with equal word counts
  matched together in one gather.

Both compute the same loss (tests/train/test_lexical.py checks it against a brute-force pairing); medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import torch
from lexical_tag import HIDDEN, VOCAB, WIDTH, alternating_medians, word_table  # bench/, beside this script

from onellm.hardware import fast_bf16
from onellm.projectors.upm import LexicalTag, slot_logits
from onellm.train.lexical import _pairings, slot_loss


def plain_loss(tags, summary, table, targets) -> torch.Tensor:
    log_p = torch.stack([tag.logits(summary, table) for tag in tags], dim=1).float().log_softmax(dim=-1)
    per_row = []
    for row, words in zip(log_p, targets, strict=True):
        chosen = row[:, words.nonzero().squeeze(1)]  # [K, T]
        pairings = _pairings(*chosen.shape)
        per_row.append(-chosen.gather(1, pairings.T).mean(dim=0).max())
    return torch.stack(per_row).mean()


def shipped_loss(tags, summary, table, targets) -> torch.Tensor:
    return slot_loss(slot_logits(tags, summary, table).float().log_softmax(dim=-1), targets).mean()


def step_seconds(loss_fn, tags, optimizer, table, summary, targets, steps: int) -> float:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if fast_bf16("cpu") else contextlib.nullcontext()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(tags, summary, table, targets)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=3, help="word slots (the small curriculum: three)")
    parser.add_argument("--batch", type=int, default=64, help="inputs per step (train.word_fit_steps' batch)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    table = word_table()
    tags = [LexicalTag(HIDDEN, WIDTH) for _ in range(args.slots)]
    optimizer = torch.optim.Adam([p for tag in tags for p in tag.parameters()], lr=1e-3)
    summary = torch.randn(args.batch, HIDDEN)
    targets = torch.zeros(args.batch, VOCAB, dtype=torch.bool)
    for row in range(args.batch):  # 1 to 6 distinctive words per input, as the demo's corpus says
        targets[row, torch.randperm(2000)[: 1 + row % 6]] = True
    medians = alternating_medians(
        {
            name: lambda loss_fn=loss_fn: step_seconds(loss_fn, tags, optimizer, table, summary, targets, args.steps)
            for name, loss_fn in (("plain", plain_loss), ("shipped", shipped_loss))
        },
        args.repeats,
        warmup=1,
    )
    plain, shipped = medians["plain"], medians["shipped"]
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"bf16 autocast: {fast_bf16('cpu')}; {args.slots} slots, batch {args.batch}, {args.steps} steps x "
        f"{args.repeats} repeats"
    )
    print("| plain (ms/step) | shipped (ms/step) | ratio shipped/plain |\n|---:|---:|---:|")
    print(f"| {plain * 1e3:.1f} | {shipped * 1e3:.1f} | {shipped / plain:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"slots": args.slots, "batch": args.batch, "plain_s": plain, "shipped_s": shipped}, f, indent=1)


if __name__ == "__main__":
    main()
