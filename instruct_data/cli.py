"""``onellm data ...`` commands: ``synth`` (the synthetic corpus) and ``convert FORMAT`` (public formats).

``onellm/cli.py`` calls :func:`add_data_commands` with its top-level sub-command group, which adds ``data`` and
its sub-commands. Every command sets ``func`` (``args -> exit code``). Without the ``onellm data`` prefix, for
testing: ``python -m onellm.instruct_data.cli synth ...``.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Sequence
from typing import Any

from onellm.instruct_data.converters import converter_names, get_converter
from onellm.instruct_data.synth import generator_names, synthesize


def _run_synth(args: argparse.Namespace) -> int:
    report = synthesize(
        args.out,
        per_modality=args.per_modality,
        seed=args.seed,
        modalities=args.modalities or None,
        fmri_voxels=args.fmri_voxels,
        workers=args.workers,
    )
    print(report.summary())
    return 0


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write the synthetic corpus (media + train/val/test.jsonl + synth_info.json): OneLLM's eight "
        "modalities, or all fourteen with --modalities all",
        description="Write the synthetic corpus: media under OUT/media/<modality>/, OUT/{train,val,test}.jsonl "
        "(80/10/10, disjoint by content) and OUT/synth_info.json. Same seed = same corpus.",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--per-modality", type=int, required=True, help="items per modality (each = 1 caption + 3 QA)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--modalities",
        default=None,
        help="'all' (fourteen), a set ('extended': the six beyond OneLLM's), or comma-separated names of "
        f"{','.join(generator_names())} (default: OneLLM's eight)",
    )
    parser.add_argument("--fmri-voxels", type=int, default=2048, help="length of the fMRI voxel vector (default 2048)")
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: CPU count for >= 200)")
    parser.set_defaults(func=_run_synth)


# --- convert: arguments generated from each converter's signature ---------------------------------------------------


def _param_help(fn: Any) -> dict[str, str]:
    """``name: text`` lines of the converter docstring's ``Args:`` section."""
    doc = inspect.getdoc(fn) or ""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    return dict(re.findall(r"^\s*(\w+): (.+)$", section, flags=re.MULTILINE))


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a public dataset format to a onellm JSONL manifest",
        description="Convert a public dataset to the onellm record schema. Rejected entries are listed, never dropped.",
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name in converter_names():
        fn = get_converter(name)
        helps = _param_help(fn)
        summary = (inspect.getdoc(fn) or name).splitlines()[0]
        sub = formats.add_parser(name, help=summary, description=summary)
        for param in inspect.signature(fn).parameters.values():
            text = helps.get(param.name, "")
            if param.name == "out_manifest":
                sub.add_argument("--out", dest="out_manifest", required=True, help="output JSONL manifest")
            elif param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                sub.add_argument(param.name, help=text)
            elif param.default is inspect.Parameter.empty:
                sub.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, required=True, help=text)
            elif isinstance(param.default, bool):
                sub.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, action="store_true", help=text)
            else:
                sub.add_argument(
                    f"--{param.name.replace('_', '-')}",
                    dest=param.name,
                    type=type(param.default),
                    default=param.default,
                    help=f"{text} (default: {param.default!r})",
                )
        sub.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    fn = get_converter(args.format)
    kwargs = {name: getattr(args, name) for name in inspect.signature(fn).parameters}
    report = fn(**kwargs)
    print(report.summary())
    return 0


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``data`` to the top-level sub-command group (``onellm data ...``); returns the ``data`` group."""
    data = subparsers.add_parser("data", help="build and check instruction data (synth, convert, validate, stats)")
    group = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    add_data_subcommands(group)
    return group


def add_data_subcommands(group: argparse._SubParsersAction) -> None:
    """Register ``synth`` and ``convert FORMAT`` on the ``data`` group (each sets ``func``: args -> exit code)."""
    _add_synth(group)
    _add_convert(group)
    _add_validate(group)
    _add_stats(group)


# --- validate / stats: decode every input the way the model will, or count what a manifest holds -------------------


def _model_options(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--model", help="a onellm checkpoint folder: check against its processor (token counts too)")
    choice.add_argument(
        "--preset", default="small", help="check against a preset's modality options (default: small, the demo's)"
    )


def _processor_or_options(args: argparse.Namespace) -> Any:
    if args.model:
        from transformers import AutoProcessor

        import onellm  # noqa: F401  (registers the processor class)

        return AutoProcessor.from_pretrained(args.model)
    from onellm.presets import preset_modality_options

    return preset_modality_options(args.preset)


def _run_validate(args: argparse.Namespace) -> int:
    from onellm.instruct_data.loader import validate_manifest

    checker = _processor_or_options(args)
    print(f"checking against {'the processor of ' + args.model if args.model else 'the ' + args.preset + ' preset'}")
    rejected = 0
    for manifest in args.manifests:
        report = validate_manifest(manifest, args.media_root, checker, on_error="skip", max_length=args.max_length)
        print(report.summary(limit=args.show))
        rejected += len(report.rejected)
    return 1 if rejected else 0


def _add_validate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="decode every input of a manifest and report kept / rejected records (exit 1 if any is rejected)",
        description="Decode every input with the model's preprocessing; list each rejected record with its file, "
        "modality and reason (missing file, undecodable, wrong shape, NaN, too long, empty answer, placeholder "
        "count). Exit code 1 when anything was rejected.",
    )
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL manifest(s)")
    parser.add_argument(
        "--media-root", default=None, help="folder relative paths start from (default: each manifest's)"
    )
    parser.add_argument("--max-length", type=int, default=None, help="reject records longer than this (needs --model)")
    parser.add_argument("--show", type=int, default=None, help="list at most this many rejections per manifest")
    _model_options(parser)
    parser.set_defaults(func=_run_validate)


def _run_stats(args: argparse.Namespace) -> int:
    from onellm.instruct_data.loader import manifest_stats

    processor = _processor_or_options(args) if args.model else None
    for manifest in args.manifests:
        print(manifest_stats(manifest, processor).summary())
    return 0


def _add_stats(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stats", help="counts per modality and task, answer lengths and vocabulary, token lengths (with --model)"
    )
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL manifest(s)")
    parser.add_argument("--model", help="a onellm checkpoint folder: also count tokens after placeholder expansion")
    parser.set_defaults(func=_run_stats)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m onellm.instruct_data.cli`` (the same commands without the ``onellm data`` prefix)."""
    parser = argparse.ArgumentParser(prog="python -m onellm.instruct_data.cli", description=__doc__.splitlines()[0])
    add_data_subcommands(parser.add_subparsers(dest="data_command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
