"""The word-slot fit (``train.word_fit_steps``) on a finished alignment stage: loss and seconds of each schedule,
all from the same starting point in one process, the first variant the baseline of the ratios.

    .venv/bin/python bench/word_fit.py --stage-dir runs/demo/train/align_image --data runs/demo/data \\
        [--config configs/small/align_image.yaml] [--variants 200:64:0.01:constant 400:32:0.01:constant ...]

The fit runs after a stage's last step, before its last checkpoint is written, so that checkpoint already holds
fitted slots; the one before it (``save_interval`` steps earlier, at the end of the rate's decay) holds slots as the
LLM's word loss left them. Each variant loads those trainable weights into the stage's ``final`` model and runs
the stage's own fit (``Trainer.fit_slots``: every distinct training input through the projector once, then the Adam
steps). A variant is ``steps:batch:lr:schedule``. Loss = the fit's set-matching loss over all of those inputs (lower:
each input's slots name its distinctive words with more probability). Seconds = the fit's steps for that modality
(``fit_word_slots``), without the projector pass before them. Nothing is written into the stage folder.
"""

from __future__ import annotations

import argparse
import copy
import platform
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

import onellm.train.loop as loop
from onellm.train.checkpoint import list_checkpoints
from onellm.train.common import build_data, freeze, load_start, make_accelerator
from onellm.train.config import load_stage
from onellm.train.lexical import word_tags
from onellm.train.recipes import build_trainer

REPO = Path(__file__).resolve().parents[1]
FITTED = re.compile(r"(\w+) word slots fitted on (\d+) inputs: loss ([\d.]+) -> ([\d.]+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage-dir", type=Path, required=True, help="a finished alignment stage's output folder")
    parser.add_argument("--data", type=Path, required=True, help="the corpus it trained on")
    parser.add_argument("--config", type=Path, help="its stage YAML (default: configs/small/<stage folder name>.yaml)")
    parser.add_argument(
        "--variants", nargs="+", default=["200:64:0.01:constant", "400:32:0.01:constant", "400:32:0.01:cosine"]
    )
    args = parser.parse_args()
    config = args.config or REPO / "configs/small" / f"{args.stage_dir.name}.yaml"
    steps = list_checkpoints(args.stage_dir / "checkpoints")
    if len(steps) < 2 or not (args.stage_dir / "final" / "config.json").is_file():
        raise SystemExit(f"{args.stage_dir}: needs final/ and two step checkpoints in checkpoints/ (a finished stage)")
    start_step = steps[-2][1]  # the last one was written after the fit
    variants = []
    for text in args.variants:
        count, batch, lr, schedule = text.split(":")
        variants.append((text, int(count), int(batch), float(lr), schedule))

    seconds: list[float] = []
    fit = loop.fit_word_slots

    def timed_fit(*args, **kwargs):
        tick = time.perf_counter()
        result = fit(*args, **kwargs)
        seconds.append(time.perf_counter() - tick)
        return result

    loop.fit_word_slots = timed_fit  # the Trainer's fit, timed per modality
    accelerator = make_accelerator()
    with tempfile.TemporaryDirectory() as tmp:
        stage = load_stage(
            config,
            {"data.root": str(args.data), "output_dir": tmp, "init_from": {"path": str(args.stage_dir / "final")}},
        )
        model, processor = load_start(stage)
        model.load_state_dict(load_file(str(start_step / "trainable.safetensors")), strict=False)
        _, groups = freeze(model, stage.trainable)
        data = build_data(stage, processor, accelerator)
        trainer = build_trainer(stage, accelerator, model, model, processor, replace(data, val=None), groups, False)
        start = {key: copy.deepcopy(tag.state_dict()) for key, tag in word_tags(trainer.core).items()}
        print(
            f"# bench/word_fit.py  {time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}; {args.stage_dir} from {start_step.name}"
        )
        print(
            "| fit (steps:batch:lr:schedule) | modality | inputs | loss before | loss after | seconds | seconds / first |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        baseline: dict[str, float] = {}
        for text, count, batch, lr, schedule in variants:
            for key, tag in word_tags(trainer.core).items():
                tag.load_state_dict(start[key])
            trainer.cfg = replace(
                trainer.cfg, word_fit_steps=count, word_fit_batch=batch, word_fit_lr=lr, word_fit_schedule=schedule
            )
            said: list[str] = []
            seconds.clear()
            trainer.fit_slots(said.append)
            fitted = [found.groups() for line in said if (found := FITTED.search(line))]
            for (modality, inputs, before, after), took in zip(fitted, seconds, strict=True):
                first = baseline.setdefault(modality, took)
                print(
                    f"| {text} | {modality} | {inputs} | {before} | {after} | {took:.1f} | {took / first:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
