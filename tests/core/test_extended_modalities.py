"""The six modalities beyond OneLLM's eight (issue 12): what each one's preprocessing and tokenizer promise.

The contracts every modality shares (path = bytes = fixed shape, dummy inputs, bad input named with its reason) are
tested over all fourteen in test_modalities.py; the model end to end in test_model.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from media_factory import GRAPH, ROW, grey16_png_bytes, npy_bytes, series_csv_bytes
from PIL import Image

from onellm.modalities import MediaError, get_modality
from onellm.modalities.base import WRONG_SHAPE, npy_header_shape
from onellm.modalities.hyperspectral import band_resampler
from onellm.modalities.timeseries import resample
from onellm.presets import family_modalities

TINY = family_modalities("tiny", "extended")
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # image-path outputs in [0, 1]
# Tokens per input at the tiny preset's options (the projector turns any count into N + 2 placeholders).
TINY_TOKENS = {"hyperspectral": 16, "timeseries": 8 + 8, "tabular": 8, "graph": 16}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(TINY_TOKENS))
def test_tokenizer_shapes_and_gradients(name):
    modality, options = get_modality(name), TINY[name]
    tokenizer = modality.build_tokenizer(64, 8, **options)
    batch = torch.stack([modality.dummy_input(**options)] * 2)
    tokens = tokenizer(batch, None)
    assert tokens.shape == (2, TINY_TOKENS[name], 64) and torch.isfinite(tokens).all()
    tokens.pow(2).mean().backward()
    assert all(p.grad is not None for p in tokenizer.parameters())
    # bfloat16 (vLLM on the CPU, autocast): structure columns (flags, hash digits, adjacency) survive the cast.
    half = tokenizer.to(torch.bfloat16)(batch.to(torch.bfloat16), None)
    assert half.dtype == torch.bfloat16 and (half.float() - tokens.detach()).abs().max() < 0.1
    # fp32 weights under bf16 autocast (training with `precision: auto` on a bf16 CPU/GPU): activations are bf16.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = tokenizer.float()(batch, None)
    assert torch.isfinite(mixed).all() and (mixed.float() - tokens.detach()).abs().max() < 0.1


# --- X-ray and infrared: single-channel images through the frozen patch embedding ---------------------------------------
@pytest.mark.parametrize("name", ["xray", "infrared"])
def test_grey_images_reach_the_patch_embedding_as_three_equal_channels(name):
    modality = get_modality(name)
    assert modality.image_like and modality.input_shape(**TINY[name]) == (3, 32, 32)
    grey = np.random.default_rng(0).integers(0, 60_000, (40, 48)).astype(np.uint16)
    out = modality.preprocess(png(grey), **{**TINY[name], **PLAIN})
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]) and 0 <= out.min() and out.max() <= 1
    # The same picture as a 16-bit PNG, a .npy array, an 8-bit PNG and a grey RGB PNG: the same input.
    as_npy = modality.preprocess(npy_bytes(grey.astype(np.float32)), **TINY[name])
    assert torch.allclose(modality.preprocess(png(grey), **TINY[name]), as_npy, atol=1e-5)
    eight = (grey // 256).astype(np.uint8)
    rgb = modality.preprocess(png(np.repeat(eight[..., None], 3, axis=-1)), **TINY[name])
    assert torch.allclose(modality.preprocess(png(eight), **TINY[name]), rgb, atol=1e-5)


def test_xray_window_ignores_dose_and_keeps_dense_matter_bright():
    xray = get_modality("xray")
    counts = np.full((64, 64), 8_000.0)
    counts[20:40, 20:40] = 50_000.0  # a metal object
    counts += np.random.default_rng(0).normal(0, 200, counts.shape)
    low, high = (xray.preprocess(counts * dose, image_size=32, **PLAIN) for dose in (0.5, 1.0))
    assert torch.allclose(low, high, atol=1e-4)  # the percentile window removes the exposure
    assert high[0, 12:18, 12:18].min() > 0.95 and high[0, :4, :4].max() < 0.2
    flat = xray.preprocess(np.full((8, 8), 7.0), image_size=32, **PLAIN)
    assert flat.abs().max() == 0  # a blank detector: black, not NaN


def test_infrared_scalings_make_hot_spots_bright():
    infrared = get_modality("infrared")
    kelvin = np.full((64, 64), 293.0)
    kelvin[8:16, 40:48] = 333.0  # a hot spot at the top right
    minmax = infrared.preprocess(kelvin * 100, image_size=32, **PLAIN)
    assert minmax[0, 5, 21] == 1.0 and minmax[0, 25, 5] == 0.0
    z = infrared.preprocess(kelvin, image_size=32, scaling="standardize", **PLAIN)
    assert z[0, 5, 21] > 0.9 and 0.4 < z[0, 25, 5] < 0.5  # the background just below the middle grey
    with pytest.raises(ValueError, match="scaling='gamma' is not one of"):
        infrared.preprocess(kelvin, scaling="gamma")


def test_grey_images_refuse_too_many_pixels_from_the_npy_header():
    header = npy_bytes(np.zeros((300, 400), np.float32))
    assert npy_header_shape(header) == (300, 400) and npy_header_shape(b"not numpy") is None
    assert "120000 pixels" in get_modality("xray").precheck(header, {"max_image_pixels": 100_000})
    assert get_modality("infrared").precheck(header, {"max_image_pixels": 200_000}) is None
    assert get_modality("xray").precheck(grey16_png_bytes((400, 300)), {"max_image_pixels": 100_000})


# --- hyperspectral: any band count, one token per patch -----------------------------------------------------------------
def test_band_resampling_keeps_the_spectrum_shape():
    assert np.allclose(band_resampler(16, 16), np.eye(16))
    line = np.linspace(0.1, 0.9, 100)
    assert np.allclose(line @ band_resampler(100, 16), np.linspace(0.1, 0.9, 16))
    assert np.allclose(band_resampler(7, 32).sum(axis=0), 1.0)  # every output band a convex mix


def test_hyperspectral_reads_any_band_count_and_keeps_spectra_apart():
    hyper = get_modality("hyperspectral")
    outputs = []
    for bands in (3, 50, 224):
        spectrum = np.linspace(0, 1, bands)
        cube = np.tile(spectrum, (20, 20, 1))
        cube[:, 10:] = spectrum[::-1]  # the right half: another material (a falling spectrum)
        out = hyper.preprocess(cube.astype(np.float32), **TINY["hyperspectral"])
        assert out.shape == (16, 32, 32) and abs(float(out.mean())) < 1e-5
        outputs.append(out)
        assert out[-1, 16, 2] > out[0, 16, 2] and out[-1, 16, 30] < out[0, 16, 30]  # rising left, falling right
    assert torch.allclose(outputs[1], outputs[2], atol=0.05)  # 50 or 224 samples of the same spectra: the same input
    with pytest.raises(MediaError, match="at least 2 bands") as caught:
        hyper.preprocess(np.zeros((4, 4, 1), np.float32))
    assert caught.value.reason == WRONG_SHAPE


# --- time series: any channel count ------------------------------------------------------------------------------------
def test_timeseries_any_channel_count_gives_the_fixed_shape():
    series = get_modality("timeseries")
    options = TINY["timeseries"]
    for channels in (1, 3, 8):
        values = np.random.default_rng(channels).normal(size=(200, channels)) * 5 + 100
        out = series.preprocess(values, **options)
        assert out.shape == (8, 3 + 64)
        assert out[:, 0].tolist() == [1.0] * channels + [0.0] * (8 - channels)  # present flags
        assert torch.all(out[channels:] == 0)
        assert out[:channels, 1].mean() > 4  # the level (signed_log of ~100) is kept beside the z-scores
    one = series.preprocess(np.arange(50.0), **options)  # [T]: one channel
    assert one[0, 0] == 1 and one[1, 0] == 0


def test_timeseries_csv_header_matches_the_array():
    series = get_modality("timeseries")
    with_header = series.preprocess(series_csv_bytes(), **TINY["timeseries"])
    plain = series.preprocess(series_csv_bytes(header=False), **TINY["timeseries"])
    values = np.loadtxt(io.BytesIO(series_csv_bytes(header=False)), delimiter=",")
    assert torch.equal(with_header, plain) and torch.allclose(plain, series.preprocess(values, **TINY["timeseries"]))


def test_timeseries_shortening_keeps_a_one_step_spike():
    signal = np.zeros((240, 1))
    signal[100] = 6.0  # inside the bin [97.5, 101.25) of 3.75 steps
    short = resample(signal, 64)
    assert short.max() == pytest.approx(6.0 * 64 / 240) and short.sum() == pytest.approx(6.0 * 64 / 240)
    assert np.allclose(resample(np.arange(4.0)[:, None], 7)[:, 0], np.linspace(0, 3, 7))


def test_timeseries_tokenizer_does_not_fix_the_channel_count():
    """One tokenizer reads 1 or 8 channels; a spike in channel 3 shows in channel 3's token and in the time tokens."""
    series = get_modality("timeseries")
    options = TINY["timeseries"]
    torch.manual_seed(0)
    tokenizer = series.build_tokenizer(32, 8, **options)
    calm = np.random.default_rng(0).normal(size=(128, 4))
    spiky = calm.copy()
    spiky[60:63, 2] += 20.0
    with torch.no_grad():
        a, b = (tokenizer(series.preprocess(v, **options)[None], None)[0] for v in (calm, spiky))
        single = tokenizer(series.preprocess(calm[:, :1], **options)[None], None)
    assert single.shape == a[None].shape
    changed = (a - b).norm(dim=-1)  # [8 time + 8 channel tokens]
    assert changed[8 + 2] > 10 * changed[8 + 0]  # channel 3's token, not channel 1's
    assert changed[:8].argmax() == 3  # steps 60-62 of 128 fall in the 4th of 8 time patches
    assert torch.equal(a[8 + 4 :], b[8 + 4 :])  # absent channels: the pad vector


# --- tabular: one token per field ----------------------------------------------------------------------------------------
def test_tabular_json_and_csv_rows_agree():
    table = get_modality("tabular")
    options = TINY["tabular"]
    from_json = table.preprocess(json.dumps(ROW).encode(), **options)
    csv_row = b"age,height,city,member,note\n41,1.82,Oslo,true,\n"
    from_csv = table.preprocess(csv_row, **options)
    assert torch.equal(from_json, from_csv)
    assert from_json[:, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # null / empty: a missing field, left out
    assert from_json[:4, 1].tolist() == [0, 0, 1, 1]  # numeric, numeric, categorical (text), categorical (bool)
    assert from_json[0, 6] == pytest.approx(np.log1p(41), rel=1e-6)
    assert from_json[:, 2:6].max() < 256  # hash buckets as base-256 digits: exact in bfloat16
    assert torch.equal(table.preprocess({"age": 41}, **options)[0], from_json[0])  # a dict in memory


def test_tabular_tokens_follow_the_fields_not_their_order():
    table = get_modality("tabular")
    options = TINY["tabular"]
    torch.manual_seed(0)
    tokenizer = table.build_tokenizer(32, 8, **options)
    row = {"price": 12.5, "colour": "red", "count": 3}
    shuffled = {"count": 3, "price": 12.5, "colour": "red"}
    with torch.no_grad():
        a = tokenizer(table.preprocess(row, **options)[None], None)[0]
        b = tokenizer(table.preprocess(shuffled, **options)[None], None)[0]
        c = tokenizer(table.preprocess({**row, "colour": "blue"}, **options)[None], None)[0]
    assert torch.allclose(a[[2, 0, 1]], b[:3]) and torch.equal(a[3:], b[3:])
    assert not torch.allclose(a[1], c[1]) and torch.equal(a[0], c[0])  # another category: only its token changes


# --- graph: one token per node, structure-aware --------------------------------------------------------------------------
def test_graph_formats_agree_and_the_adjacency_is_symmetric():
    graph = get_modality("graph")
    options = TINY["graph"]
    edges = GRAPH["edges"]
    as_json = graph.preprocess(json.dumps({"nodes": 5, "edges": edges}).encode(), **options)
    as_pairs = graph.preprocess(json.dumps(edges).encode(), **options)
    as_lines = graph.preprocess(b"# five nodes\n" + "\n".join(f"{i} {j} 1.0" for i, j in edges).encode(), **options)
    as_array = graph.preprocess(np.asarray(edges), **options)
    assert torch.equal(as_json, as_pairs) and torch.equal(as_json, as_lines) and torch.equal(as_json, as_array)
    adjacency = as_json[:, 1 + 8 :]
    assert torch.equal(adjacency, adjacency.T) and adjacency.sum() == 2 * len(edges) and adjacency.trace() == 0
    assert as_json[:, 0].tolist() == [1.0] * 5 + [0.0] * 11
    featured = graph.preprocess(json.dumps(GRAPH).encode(), **options)
    assert featured[0, 1:3].tolist() == pytest.approx([np.log1p(1), 0.0])  # features, signed_log, zero-padded


def test_graph_tokenizer_is_permutation_equivariant_and_sees_cycles():
    graph = get_modality("graph")
    options = TINY["graph"]
    torch.manual_seed(0)
    tokenizer = graph.build_tokenizer(32, 8, **options)
    nodes = np.eye(5, 4).tolist()
    order = [3, 0, 4, 1, 2]  # new node i = old node order[i]
    old_to_new = {old: new for new, old in enumerate(order)}
    moved = {"nodes": [nodes[o] for o in order], "edges": [[old_to_new[i], old_to_new[j]] for i, j in GRAPH["edges"]]}
    with torch.no_grad():
        a = tokenizer(graph.preprocess({"nodes": nodes, "edges": GRAPH["edges"]}, **options)[None], None)[0]
        b = tokenizer(graph.preprocess(moved, **options)[None], None)[0]
        path = [[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]]
        ring = tokenizer(graph.preprocess({"nodes": 5, "edges": path}, **options)[None], None)[0]
        line = tokenizer(graph.preprocess({"nodes": 5, "edges": path[:-1] + [[0, 2]]}, **options)[None], None)[0]
    assert torch.allclose(a[order], b[:5], atol=1e-5) and torch.equal(a[5:], b[5:])
    # A 5-cycle and a triangle with a tail have the same degrees at nodes 3, 4... but not the same walks.
    assert not torch.allclose(ring, line, atol=1e-3)


def test_graph_and_tabular_encode_rows_for_apis():
    """The OpenAI eval backend sends an in-memory graph / row as a JSON part; the modality reads it back."""
    for name, value in (("graph", GRAPH), ("tabular", ROW), ("graph", np.asarray(GRAPH["edges"]))):
        modality = get_modality(name)
        data, fmt = modality.encode_array(value)
        assert fmt == "json"
        assert modality.preprocess(data, **TINY[name]).shape == modality.input_shape(**TINY[name])
