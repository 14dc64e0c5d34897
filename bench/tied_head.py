"""Seconds per training step with SmolLM2's tied LM head as its own bf16 copy (shipped) against the shared fp32 table
that autocast casts at every step (before), alternating within one process.

    .venv/bin/python bench/tied_head.py [--stages align_image instruct] [--steps 20] [--warmup 6]

Under bf16 training the loop holds the frozen LLM's linear weights in bf16 (``frozen_linear_weights_in_bf16`` in
onellm/train/loop.py). SmolLM2's LM head shares its weight with the embedding table, which the lookups need in fp32;
it now gets a bf16 copy of its own while the stage trains. "before" points the head back at the shared table, so
autocast casts 49k x 576 values to bf16 in every forward. Same recipe, model, batches (a small synthetic image
corpus, batches built beforehand) and step (``Trainer.step``, compiled decoder layers as the small stages run);
the two alternate step by step and see the same batches. Both give the same loss to the last bit
(tests/train/test_attention.py). Medians; the ratio is shipped / before. Needs a CPU or GPU with native bf16 (on an
fp32 machine nothing is held in bf16 and there is nothing to compare).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from train_step import recipe_trainer, stage_config  # bench/, beside this script

from onellm.train.common import make_accelerator


def alternating(stage, accelerator, warmup: int, steps: int) -> tuple[float, float, int]:
    """(median seconds before, median seconds shipped, batch size) for ``stage``."""
    trainer, data = recipe_trainer(stage, accelerator)
    size = stage.train.batch_size
    batches = [trainer.collator([data.train[(i * size + j) % len(data.train)] for j in range(size)]) for i in range(4)]
    llm = trainer.core.language_model
    times: dict[str, list[float]] = {"before": [], "shipped": []}
    with trainer.training_setup():
        copy, table = llm.get_output_embeddings().weight, llm.get_input_embeddings().weight
        if copy is table:
            raise SystemExit(f"{stage.name}: the LM head is not held apart (fp32 training or an untied head)")
        try:
            for i in range(2 * (warmup + steps)):
                key = "before" if i % 2 == 0 else "shipped"
                llm.get_output_embeddings().weight = table if key == "before" else copy
                tick = time.perf_counter()
                trainer.step([batches[(i // 2) % len(batches)]])
                if i >= 2 * warmup:
                    times[key].append(time.perf_counter() - tick)
        finally:
            llm.get_output_embeddings().weight = copy  # what training_setup restores from
    return statistics.median(times["before"]), statistics.median(times["shipped"]), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["align_image", "instruct"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=6)
    args = parser.parse_args()

    from onellm.instruct_data.synth import synthesize

    accelerator = make_accelerator()
    print(f"# bench/tied_head.py  {time.strftime('%Y-%m-%d %H:%M')}  torch {torch.__version__}  {platform.machine()}")
    print("| stage | batch | before (shared fp32 table) | shipped (bf16 copy) | shipped / before |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        synthesize(corpus, per_modality=12, seed=0, modalities=["image"], workers=1)
        for name in args.stages:
            stage = stage_config("small", name, corpus, Path(tmp) / name, cache=True, compiled=True)
            before, shipped, size = alternating(stage, accelerator, args.warmup, args.steps)
            print(f"| {name} | {size} | {before:.3f} s | {shipped:.3f} s | {shipped / before:.3f} |", flush=True)


if __name__ == "__main__":
    main()
