"""``bench/region_probe.py`` on the tiny preset: the per-object probes find an object's colour where the features
still hold it and report chance where the path has dropped it."""

from __future__ import annotations

from collections import Counter

import torch
from bench_scripts import load_bench

from onellm.instruct_data.synth import synthesize
from onellm.presets import build_preset


def test_region_probe_locates_where_colour_is_lost(tmp_path):
    bench = load_bench("region_probe")
    synthesize(tmp_path, per_modality=150, seed=0, modalities=["image"], workers=1)
    model, processor = build_preset("tiny", modalities=["image"], queries="pooled", expert="mlp")
    with torch.no_grad():  # a projector whose out-projection ignores its input: constant soft tokens
        model.projector.head("image").proj_out[0].weight.zero_()
    rows = {row["point"]: row for row in bench.probe(model, processor, tmp_path, 120, ["val", "test"])}

    depth = model.encoder.model.config.num_hidden_layers
    expected = [f"encoder block {k}" for k in range(depth + 1)]
    assert list(rows) == [*expected, "encoder regions", "projector queries", "projector experts", "soft tokens"]
    experts, soft = rows["projector experts"]["colour"], rows["soft tokens"]["colour"]
    assert experts["n_test"] == soft["n_test"] >= 40  # every object of the 30 val + test images
    assert experts["accuracy"] >= experts["chance"] + 0.15, experts  # the colour reaches the experts' output ...
    test_colours = Counter(
        obj["colour"]
        for split in ("val", "test")
        for record in bench.image_items(tmp_path, split, None)
        for obj in record.meta["attributes"]["objects"]
    )
    best_constant = max(test_colours.values()) / sum(test_colours.values())
    assert soft["accuracy"] <= best_constant, soft  # ... and gone from constant soft tokens: one answer for all
    for row in rows.values():
        assert 0.0 <= row["size"]["accuracy"] <= 1.0
