"""``onellm convert official CHECKPOINT --params params.json [--tokenizer tokenizer.model] --out DIR``.

Converts the released OneLLM weights into a onellm HF checkpoint folder (see :mod:`onellm.convert.official`):
`onellm serve DIR`, `onellm eval --model DIR` and transformers' `AutoModelForImageTextToText` load it unchanged.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from onellm.commands import mount


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    official = sources.add_parser(
        "official",
        help="the released OneLLM checkpoint (consolidated.00-of-01.pth, keys llma.*)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    official.add_argument("checkpoint", help="the official checkpoint: .pth (memory-mapped) or .safetensors")
    official.add_argument("--params", required=True, help="LLaMA-2's params.json (as given to the official MetaModel)")
    official.add_argument(
        "--tokenizer",
        default=None,
        help="LLaMA-2's tokenizer.model or a tokenizer folder (default: tokenizer.model beside the checkpoint)",
    )
    official.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    official.add_argument("--clip-head-width", type=int, default=64, help="CLIP attention head width (open_clip: 64)")
    official.add_argument("--expert-heads", type=int, default=16, help="attention heads of the UPM experts (16)")
    official.add_argument("--shard-gb", type=float, default=4.0, help="safetensors shard size in GB (default 4)")


def run(args: argparse.Namespace) -> int:
    from onellm.convert.official import ConversionError, convert_official

    started = time.perf_counter()
    try:
        summary = convert_official(
            args.checkpoint,
            args.params,
            args.out,
            tokenizer=args.tokenizer,
            clip_head_width=args.clip_head_width,
            expert_heads=args.expert_heads,
            max_shard_bytes=int(args.shard_gb * (1 << 30)),
        )
    except ConversionError as exc:
        print(f"onellm convert official: {exc}", file=sys.stderr)
        return 2
    print(
        f"converted {summary['tensors']} tensors ({summary['bytes'] / 2**30:.2f} GiB, {summary['dtype']}, "
        f"{summary['shards']} shard(s); modalities {', '.join(summary['modalities'])}) to {args.out} in "
        f"{time.perf_counter() - started:.0f} s; serve it: onellm serve {args.out}"
    )
    return 0


def add_convert_command(subparsers: Any) -> argparse.ArgumentParser:
    return mount(
        subparsers, "convert", "convert another project's checkpoint into a onellm folder", add_arguments, run, __doc__
    )
