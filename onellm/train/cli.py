"""``onellm train``: one stage YAML, or a curriculum (``--curriculum``, or a YAML with a ``stages:`` list).

    onellm train configs/tiny/align_image.yaml
    onellm train --curriculum configs/tiny/curriculum.yaml --set data.root=data/synth-tiny
    torchrun --nproc_per_node 2 -m onellm.train configs/tiny/curriculum.yaml          # DDP (gloo on CPU)
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m onellm.train ...  # GPU clusters

Running the same command again skips finished stages and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onellm.commands import add_overrides_argument, mount, standalone


def add_train_command(subparsers) -> argparse.ArgumentParser:
    """Mount ``train`` on an argparse subparsers object (``onellm train ...``)."""
    return mount(subparsers, "train", "train one stage or a whole curriculum from YAML", add_arguments, run, __doc__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a stage YAML, or a curriculum YAML (one with `stages:`)")
    parser.add_argument("--curriculum", metavar="YAML", help="a curriculum YAML: run its stages in order")
    add_overrides_argument(
        parser, "override a stage key for every stage, e.g. --set train.steps=20 --set output_dir=runs/x (repeatable)"
    )
    parser.add_argument("--check", action="store_true", help="validate the config(s), print the plan and exit")


def missing_manifests(stages) -> str | None:
    """The first training manifest a stage reads that does not exist, as one line with the command that fixes it."""
    for stage in stages:
        if stage.data is None:
            continue
        root = Path(stage.data.root)
        manifests = [source.manifest for source in stage.data.sources]
        manifests += [stage.data.replay.manifest] if stage.data.replay.modalities else []
        for manifest in manifests:
            if not (root / manifest).is_file():
                what = "no folder" if not root.is_dir() else f"no {manifest} in it"
                return (
                    f"{stage.source}: data.root {str(root)!r}: {what}. Create the corpus with "
                    f"`onellm data synth --out {root}`, or point the stage at one with --set data.root=DIR"
                )
    return None


def start_mismatch(stages) -> str | None:
    """Before any model loads: the first stage started from a checkpoint folder (``init_from.path``) that lacks one
    of the stage's modalities, as one line (read from its config.json; stages chained by name are checked when
    they start)."""
    from onellm.train.common import missing_start_modalities

    for stage in stages:
        if stage.init_from.path is None or stage.init_from.stage is not None:
            continue
        config = Path(stage.init_from.path) / "config.json"
        try:
            has = list(json.loads(config.read_text(encoding="utf-8"))["modality_configs"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no checkpoint there, or not ours: load_start names it
        problem = missing_start_modalities(stage, has)
        if problem:
            return problem
    return None


def run(args: argparse.Namespace) -> int:
    from onellm.train.config import ConfigError, is_curriculum, load_curriculum, load_stage, parse_overrides

    if bool(args.config) == bool(args.curriculum):
        print("onellm train: give a stage YAML or --curriculum YAML (exactly one)", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.overrides)
        path = args.curriculum or args.config
        if args.curriculum or is_curriculum(path):
            curriculum = load_curriculum(path, overrides)
            stages = curriculum.stages
        else:
            stages, curriculum = [load_stage(path, overrides)], None
    except (ConfigError, FileNotFoundError) as exc:
        print(f"onellm train: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for stage in stages:
            print(f"{stage.name:<14} {stage.recipe:<15} {', '.join(stage.modalities) or '-':<40} -> {stage.stage_dir}")
        return 0

    missing = missing_manifests(stages) or start_mismatch(stages)  # --check: the configs alone (no corpus yet)
    if missing:
        print(f"onellm train: {missing}", file=sys.stderr)
        return 2
    from onellm.train.checkpoint import CheckpointWriteError
    from onellm.train.common import make_accelerator
    from onellm.train.curriculum import run_curriculum
    from onellm.train.recipes import run_stage

    accelerator = make_accelerator()
    try:
        if curriculum is not None:
            run_curriculum(curriculum, accelerator)
        else:
            run_stage(stages[0], accelerator)
    except CheckpointWriteError as exc:
        print(f"onellm train: {exc.strerror}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError) as exc:  # found once a stage starts: its start model, its records
        print(f"onellm train: {exc}", file=sys.stderr)
        return 2
    accelerator.end_training()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m onellm.train`` (what ``onellm train`` runs; also usable under torchrun / accelerate launch)."""
    return standalone("onellm train", add_arguments, run, argv, __doc__)


__all__ = ["add_train_command", "main", "run"]
