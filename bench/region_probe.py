"""Where along the image path does an object's colour or shape stop being readable? Per-object linear probes.

    .venv/bin/python bench/region_probe.py --model runs/demo/train/align_image/final --data runs/demo/data \
        [--train-items 400] [--json out.json]

For every object of the synthetic image corpus (``onellm data synth``: 1-3 shapes at known positions,
``meta.attributes``), a linear probe (``onellm.diagnose.linear_probe``: closed-form ridge, trained on the objects of
``--train-items`` training images, tested on the objects of every image of ``--test-splits``, by default the
validation and test splits, which training never fits on) predicts the object's colour, shape
and size from features taken **at the object's place** — one probe per point of the path:

- ``encoder block k`` (k = 0 .. depth; 0 = the tokens entering the first block): the mean of the patch tokens within
  one patch of the object's centre, each block after the encoder's final norm;
- ``encoder regions``: the model's own encoder features pooled to the projector's query grid (sqrt(N) x sqrt(N)),
  the region(s) holding the object's centre;
- ``projector queries``, ``projector experts``, ``soft tokens``: inside the UPM, at the same region(s): the pooled
  queries the experts start from, the routed mixture of the experts' outputs, and what the LLM receives.

A probe on a whole image's mean-pooled features (what ``onellm diagnose`` reports per question kind) dilutes a small
shape among 64 patches; at the object's place it measures whether the attribute is there. The region rows need the
``pooled`` query source with a square N (the small preset); other layouts print the encoder rows only. Chance: always
answering the most frequent training label.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from onellm.diagnose import DiagnoseError, input_values, linear_probe, read_split
from onellm.encoder import UniversalEncoder
from onellm.eval.backends.hf import HFBackend
from onellm.instruct_data.synth.image import POSITIONS, SIZE
from onellm.projectors.queries import build_queries

ATTRIBUTES = ("colour", "shape", "size")


def image_items(data: Path, split: str, limit: int | None) -> list:
    """One record per distinct image of the split, in order, with its generator attributes."""
    chosen: dict[str, object] = {}
    for record in read_split(data, split):
        attributes = (record.meta or {}).get("attributes")
        if record.inputs[0].modality == "image" and attributes and "objects" in attributes:
            chosen.setdefault(record.inputs[0].path, record)
    items = list(chosen.values())
    return items if limit is None else items[:limit]


def near(cells: int, centre: float, reach: float) -> list[int]:
    """Cells (of unit width, ``cells`` of them) whose centre lies within ``reach`` of ``centre``; at least the nearest."""
    hits = [c for c in range(cells) if abs(c + 0.5 - centre) <= reach + 1e-6]
    return hits or [min(range(cells), key=lambda c: abs(c + 0.5 - centre))]


def at_objects(grid_features: torch.Tensor, items: list, reach: float) -> tuple[torch.Tensor, dict[str, list]]:
    """``[n, side, side, F]`` features of n images -> one row per object (mean over the cells near its centre)."""
    side = grid_features.shape[1]
    rows, labels = [], {a: [] for a in ATTRIBUTES}
    for features, record in zip(grid_features, items, strict=True):
        for obj in record.meta["attributes"]["objects"]:
            cx, cy = POSITIONS[obj["position"]]
            u, v = (cx + obj.get("dx", 0)) / SIZE * side, (cy + obj.get("dy", 0)) / SIZE * side
            cols, rows_ = near(side, u, reach), near(side, v, reach)
            rows.append(features[rows_][:, cols].mean(dim=(0, 1)))
            for a in ATTRIBUTES:
                labels[a].append(obj[a])
    return torch.stack(rows), labels


def to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """``[n, L, F]`` row-major square token grid -> ``[n, side, side, F]``."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
    return tokens.reshape(tokens.shape[0], side, side, tokens.shape[2])


@torch.no_grad()
def path_features(model, values: torch.Tensor, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Every probe point's features ``[n, side, side, F]`` for preprocessed images ``values``."""
    vision = model.encoder.model
    depth = vision.config.num_hidden_layers
    every_block = UniversalEncoder(vision, list(range(depth + 1)))
    tokenizer = model.mm_tokenizers["image"]
    upm = model.projector
    head = upm.head("image")
    side = math.isqrt(upm.num_queries)
    regions = upm.query_source == "pooled" and side * side == upm.num_queries
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, values.shape[0], batch_size):
        chunk = values[start : start + batch_size].to(model.dtype)
        blocks = every_block(tokenizer(chunk, every_block))[:, 1:].float()  # [b, L, C * (depth + 1)]
        for k, block in enumerate(blocks.chunk(depth + 1, dim=-1)):
            out.setdefault(f"encoder block {k}", []).append(to_grid(block))
        if not regions:
            continue
        features = model.encode("image", chunk)
        grid = to_grid(features[:, 1:].float()).permute(0, 3, 1, 2)
        pooled = nn.functional.adaptive_avg_pool2d(grid, side).permute(0, 2, 3, 1)
        x = head.project_in(features)
        queries = build_queries(upm.query_source, head.queries, x)
        seq = torch.cat([queries, x], dim=1)
        weights = head.router(x, head.queries)
        mixed = sum(weights[..., k : k + 1] * expert(seq)[:, : upm.num_queries] for k, expert in enumerate(upm.experts))
        soft = upm.query_positions(model.embed_modality("image", features=features))
        for name, tokens in (
            ("encoder regions", pooled.flatten(1, 2)),
            ("projector queries", queries),
            ("projector experts", mixed),
            ("soft tokens", soft),
        ):
            out.setdefault(name, []).append(to_grid(tokens.float()))
    return {name: torch.cat(parts) for name, parts in out.items()}


def probe(model, processor, data: Path, train_items: int, test_splits: list[str]) -> list[dict]:
    train = image_items(data, "train", train_items)
    test = [item for split in test_splits for item in image_items(data, split, None)]
    if not train or not test:
        raise SystemExit(f"{data}: no synthetic image records with meta.attributes in train/test (onellm data synth)")
    was_training = model.training
    model.eval()
    try:
        train_points = path_features(model, input_values(processor, train, data))
        test_points = path_features(model, input_values(processor, test, data))
    finally:
        model.train(was_training)
    rows = []
    for name in train_points:
        reach = 1.0 if name.startswith("encoder block") else 0.5  # a patch neighbourhood; the region holding the centre
        x_train, y_train = at_objects(train_points[name], train, reach)
        x_test, y_test = at_objects(test_points[name], test, reach)
        row = {"point": name}
        for a in ATTRIBUTES:
            result = linear_probe(x_train, y_train[a], x_test, y_test[a])
            row[a] = {
                "accuracy": result.accuracy,
                "chance": result.chance,
                "n_train": result.n_train,
                "n_test": result.n_test,
            }
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a onellm checkpoint folder with an image head")
    parser.add_argument("--data", type=Path, required=True, help="a synthetic corpus (onellm data synth)")
    parser.add_argument("--train-items", type=int, default=400, help="training images the probes fit on")
    parser.add_argument("--test-splits", default="val,test", help="splits whose images the probes are tested on")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    backend = HFBackend(args.model)
    try:
        rows = probe(backend.model, backend.processor, args.data, args.train_items, args.test_splits.split(","))
    except DiagnoseError as error:
        raise SystemExit(f"region_probe: {error}") from None
    finally:
        backend.close()
    first = rows[0]["colour"]
    print(f"{args.model}: objects {first['n_train']} train / {first['n_test']} test; test accuracy (chance)")
    print("| point | colour | shape | size |")
    print("|---|---:|---:|---:|")
    for row in rows:
        cells = " | ".join(f"{row[a]['accuracy']:.2f} ({row[a]['chance']:.2f})" for a in ATTRIBUTES)
        print(f"| {row['point']} | {cells} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "data": str(args.data), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
