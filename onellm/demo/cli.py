"""``onellm demo``'s arguments and entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onellm.commands import add_overrides_argument, mount, standalone
from onellm.demo import __doc__ as DEMO_DOC
from onellm.demo.pipeline import DEFAULT_CURRICULUM, DEFAULT_OUT, DEFAULT_PER_MODALITY, PROFILES, DemoError, run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="default",
        help="default: the ~20-minute curriculum; long: 2.5-13x the steps on 6x the corpus (up to 3 h on 2 cores); "
        "all: all fourteen modalities (configs/small/curriculum-all.yaml: the six beyond OneLLM's eight aligned "
        "after them, instruction tuning on fourteen)",
    )
    parser.add_argument(
        "--curriculum", type=Path, default=None, help=f"curriculum YAML (default: the profile's, {DEFAULT_CURRICULUM})"
    )
    parser.add_argument(
        "--per-modality",
        type=int,
        default=None,
        help=f"synthetic items per modality (default: the profile's, {DEFAULT_PER_MODALITY}: 80%% train, 10%% val, "
        "10%% test = 50 test items, each with a caption and 3 questions)",
    )
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    add_overrides_argument(parser, "override a key of every stage, as in `onellm train --set` (e.g. train.steps=4)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score only the first N test samples of each task, after every stage (default: see eval_plan)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="samples per generate call (default 32: 1.4x faster than 8 on 2 cores)",
    )


def run(args: argparse.Namespace) -> int:
    from onellm.train.config import ConfigError, parse_overrides

    curriculum, per_modality = PROFILES[args.profile]
    args.curriculum = args.curriculum or curriculum
    args.per_modality = args.per_modality if args.per_modality is not None else per_modality
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
    except (DemoError, ConfigError, FileNotFoundError) as exc:  # e.g. a stage's checkpoint deleted after it finished
        print(f"onellm demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_demo_command(subparsers) -> argparse.ArgumentParser:
    what = "build the small preset, train the whole curriculum, evaluate every modality, write a report"
    return mount(subparsers, "demo", what, add_arguments, run, DEMO_DOC)


def main(argv: list[str] | None = None) -> int:
    return standalone("onellm demo", add_arguments, run, argv, DEMO_DOC)


if __name__ == "__main__":
    sys.exit(main())
