"""The `onellm` command. Each part of the stack contributes its sub-commands; only installed parts appear.

onellm build PRESET --out DIR        save a preset as an HF checkpoint folder
onellm data synth|convert|validate|stats ...
onellm train STAGE.yaml | --curriculum CURRICULUM.yaml
onellm serve CHECKPOINT
onellm ui CHECKPOINT                 a chat web page on the engine onellm serve uses
onellm eval --model CHECKPOINT | --api URL --tasks a,b
onellm diagnose CHECKPOINT --data DIR  does the model look at its inputs? (spread, probes, shuffled loss, QA vs blind)
onellm convert official CKPT --params params.json --out DIR   the released OneLLM weights -> a onellm folder
onellm demo                          the whole stack on the small preset (what `make demo` runs)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# (module, function adding the sub-command(s)); a part whose module is absent contributes nothing.
_COMMANDS = [
    ("onellm.instruct_data.cli", "add_data_commands"),
    ("onellm.train.cli", "add_train_command"),
    ("onellm.serving.cli", "add_serve_command"),
    ("onellm.eval.cli", "add_eval_command"),
    ("onellm.diagnose", "add_diagnose_command"),
    ("onellm.convert.cli", "add_convert_command"),
    ("onellm.demo.cli", "add_demo_command"),
    ("onellm.serving.ui", "add_ui_command"),
]


def _build(args: argparse.Namespace) -> int:
    from onellm.presets import build_preset

    if args.preset == "7b":
        missing = [
            flag for flag, value in (("--llm-path", args.llm_path), ("--encoder-path", args.encoder_path)) if not value
        ]
        if missing:
            print(
                f"onellm build: the 7b preset is built from local checkpoints; give {' and '.join(missing)} "
                "(HF folders of LLaMA-2-7B and CLIP ViT-L/14)",
                file=sys.stderr,
            )
            return 2
        kwargs = {"llm_path": args.llm_path, "encoder_path": args.encoder_path}
        if args.modalities:
            print("onellm build: the 7b preset is the official layout: OneLLM's eight modalities, no --modalities",
                  file=sys.stderr)  # fmt: skip
            return 2
    else:
        kwargs = {"seed": args.seed} if args.preset == "tiny" else {}
        if args.modalities:
            kwargs["modalities"] = args.modalities
    try:
        model, processor = build_preset(args.preset, **kwargs)
    except (FileNotFoundError, KeyError) as exc:
        print(f"onellm build: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"saved the {args.preset} preset to {out}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onellm", description="Align every modality with a language model.")
    sub = parser.add_subparsers(dest="command", required=True)
    from onellm.presets import preset_names

    build = sub.add_parser("build", help="save a preset as an HF checkpoint folder")
    build.add_argument("preset", choices=preset_names())
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--seed", type=int, default=0, help="tiny only: the random seed")
    build.add_argument("--llm-path", help="7b only: a local LLaMA-2-7B HF folder")
    build.add_argument("--encoder-path", help="7b only: a local CLIP ViT-L/14 HF folder")
    build.add_argument(
        "--modalities",
        help="tiny/small: the modalities to build: 'all' (fourteen), a set ('extended'), or names separated by commas "
        "(default: OneLLM's eight and installed plugins)",
    )
    build.set_defaults(func=_build)
    for module_name, function in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        getattr(module, function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # the reader left (`onellm eval --list-tasks | head`): stop quietly, like other tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush of stdout fails silently too
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
