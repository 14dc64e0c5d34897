"""Evaluation seconds with the HF backend's encoder-feature reuse on and off, measured side by side.

    .venv/bin/python bench/eval_reuse.py --model runs/demo/train/instruct/merged --data runs/demo/data \
        [--modalities image video] [--items 25] [--batch-size 32] [--json out.json]

Per modality: the demo's two tasks (``synth_<m>_caption`` on ``--items`` test items, then ``synth_<m>_qa`` on
their questions), once with ``feature_cache_mb=0`` (every request's inputs encoded) and once with the default
memory, in alternating order over the modalities so that a drift of the host's speed falls on both sides. Prints
the generation seconds of both tasks (preprocessing + encoder + LLM; scoring, which does not depend on the backend,
left out), the ratio reuse/no-reuse, the inputs encoded, and whether the predictions are identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from onellm.eval.backends.hf import HFBackend
from onellm.eval.runner import evaluate
from onellm.eval.sources import DataDirs
from onellm.eval.task import load_tasks
from onellm.instruct_data.synth.corpus import QA_PER_ITEM


def predictions(folder: Path, tasks: list[str]) -> list[str]:
    out = []
    for task in tasks:
        with open(folder / f"samples_{task}.jsonl") as f:
            out.extend(json.loads(line)["filtered_resps"][0] for line in f)
    return out


def run(model: str, data: Path, modality: str, items: int, batch_size: int, cache_mb: float) -> dict:
    tasks = [f"synth_{modality}_caption", f"synth_{modality}_qa"]
    backend = HFBackend(model, feature_cache_mb=cache_mb)
    with tempfile.TemporaryDirectory() as out:
        results = evaluate(
            load_tasks(tasks),
            backend,
            out,
            data_dirs=DataDirs(overrides={"synth": data}),
            limit={tasks[0]: items, tasks[1]: items * QA_PER_ITEM},
            batch_size=batch_size,
            progress=False,
            report=False,
        )
        seconds = sum(results["timings"][task]["generate_s"] for task in tasks)
        preds = predictions(Path(out), tasks)
    row = {"seconds": round(seconds, 2), "hits": backend.features.hits, "misses": backend.features.misses}
    backend.close()
    return row | {"predictions": preds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--data", required=True, type=Path, help="the synthetic corpus (onellm data synth)")
    parser.add_argument("--modalities", nargs="+", default=["image", "video"])
    parser.add_argument("--items", type=int, default=25, help="test items per modality (each: 1 caption + questions)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for index, modality in enumerate(args.modalities):
        order = [0.0, 256.0] if index % 2 == 0 else [256.0, 0.0]
        runs = {mb: run(args.model, args.data, modality, args.items, args.batch_size, mb) for mb in order}
        off, on = runs[0.0], runs[256.0]
        row = {
            "modality": modality,
            "requests": len(on["predictions"]),
            "seconds_encode_each": off["seconds"],
            "seconds_reuse": on["seconds"],
            "ratio": round(on["seconds"] / off["seconds"], 3),
            "encoded_each": off["misses"],
            "encoded_reuse": on["misses"],
            "reused": on["hits"],
            "identical_predictions": sum(a == b for a, b in zip(off["predictions"], on["predictions"], strict=True)),
        }
        rows.append(row)
        print(
            f"{modality:8s} {row['requests']:4d} requests: encode each {row['seconds_encode_each']:7.2f} s, "
            f"reuse {row['seconds_reuse']:7.2f} s, ratio {row['ratio']:.3f}; inputs encoded "
            f"{row['encoded_each']} -> {row['encoded_reuse']}; identical predictions "
            f"{row['identical_predictions']}/{row['requests']}",
            flush=True,
        )
    total_off = sum(r["seconds_encode_each"] for r in rows)
    total_on = sum(r["seconds_reuse"] for r in rows)
    print(f"all      encode each {total_off:.2f} s, reuse {total_on:.2f} s, ratio {total_on / total_off:.3f}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
