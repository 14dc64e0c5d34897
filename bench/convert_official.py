"""Time and memory of `onellm convert official` on a synthetic checkpoint in the official layout (issue 13).

    .venv/bin/python bench/convert_official.py [--scale small|medium|7b] [--shard-gb 0.25] [--keep DIR]

Writes a random bf16 checkpoint with official key names and shapes (``consolidated.00-of-01.pth``, a torch pickle as
released; sizes per ``--scale``), then runs, each in its own process: the reference, a plain ``torch.load`` of that
file (one full copy in memory: what a converter that loads the checkpoint first needs at least), and the conversion.
A sampler reads each process's resident memory from ``/proc`` every 20 ms: anonymous memory (the process's own
copies) and file-backed memory (pages of the memory-mapped source, which the kernel can drop). Prints checkpoint
size, seconds, peak anonymous and peak total resident memory, and their ratios to the reference measured in the same
run. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the official-layout generator lives beside the parity fixture's helpers

# dims of official_state(); "7b" is OneLLM-7B's shapes (15 GB in bf16: needs the disk and the time).
SCALES = {
    "small": dict(
        dim=512,
        layers=8,
        vocab=32000,
        ffn=1408,
        clip_width=256,
        clip_layers=6,
        experts=3,
        depth=2,
        expert_hidden=704,
        voxels=2048,
        point_groups=1024,
    ),
    "medium": dict(
        dim=1024,
        layers=12,
        vocab=32000,
        ffn=2816,
        clip_width=768,
        clip_layers=12,
        experts=3,
        depth=8,
        expert_hidden=2048,
        voxels=15724,
        point_groups=1024,
    ),
    "7b": dict(
        dim=4096,
        layers=32,
        vocab=32000,
        ffn=11008,
        clip_width=1024,
        clip_layers=24,
        experts=3,
        depth=8,
        expert_hidden=2816,
        voxels=15724,
        point_groups=1024,
    ),
}
HEADS = {"small": 8, "medium": 16, "7b": 32}


def memory_kib(pid: int) -> tuple[int, int]:
    """(RssAnon, RssAnon + RssFile) of ``pid`` in KiB; zeros once it has exited."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    return fields.get("RssAnon", 0), fields.get("RssAnon", 0) + fields.get("RssFile", 0)


def measure(command: list[str]) -> dict:
    """Run ``command``; its seconds and peak memory (GiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0, 0]

    def sample() -> None:
        while process.poll() is None:
            anon, total = memory_kib(process.pid)
            peak[0], peak[1] = max(peak[0], anon), max(peak[1], total)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output = process.communicate()[0]
    sampler.join()
    if process.returncode:
        raise SystemExit(f"convert_official: {' '.join(command[:4])} ... failed:\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - started, "peak_anon_gib": peak[0] / 2**20, "peak_rss_gib": peak[1] / 2**20}


def main() -> int:
    import torch
    from official_fixture import official_state, stand_in_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--shard-gb", type=float, default=0.25)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        dims = SCALES[args.scale]
        checkpoint = work / "consolidated.00-of-01.pth"
        torch.save(official_state(**dims, dtype=torch.bfloat16), checkpoint)
        (work / "params.json").write_text(
            json.dumps({"dim": dims["dim"], "n_heads": HEADS[args.scale], "n_layers": dims["layers"], "norm_eps": 1e-5})
        )
        stand_in_tokenizer(work / "tokenizer", dims["vocab"])
        size = checkpoint.stat().st_size / 2**30
        load = measure([sys.executable, "-c", f"import torch; torch.load({str(checkpoint)!r}, weights_only=True)"])
        convert = measure(
            [
                sys.executable,
                "-m",
                "onellm.cli",
                "convert",
                "official",
                str(checkpoint),
                "--params",
                str(work / "params.json"),
                "--tokenizer",
                str(work / "tokenizer"),
                "--out",
                str(work / "out"),
                "--shard-gb",
                str(args.shard_gb),
            ]
        )
        written = sum(p.stat().st_size for p in (work / "out").glob("*.safetensors")) / 2**30
    print(
        f"checkpoint: scale {args.scale}, {size:.2f} GiB bf16 (.pth); converted folder {written:.2f} GiB; "
        f"shards of {args.shard_gb} GB\n"
    )
    print("| process | seconds | peak anonymous GiB | peak resident GiB (incl. file pages) |")
    print("|---|---:|---:|---:|")
    for name, row in (("torch.load of the checkpoint (reference)", load), ("onellm convert official", convert)):
        print(f"| {name} | {row['seconds']:.1f} | {row['peak_anon_gib']:.2f} | {row['peak_rss_gib']:.2f} |")
    print(
        f"\nconversion / reference: peak anonymous {convert['peak_anon_gib'] / load['peak_anon_gib']:.2f}, "
        f"time {convert['seconds'] / load['seconds']:.1f}; throughput {size / convert['seconds']:.2f} GiB/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
