"""Manifest validation (every rejection counted, listed and explained), statistics and the lazy dataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from media_factory import json_bytes, npy_bytes

from onellm.instruct_data.loader import (
    DataValidationError,
    ManifestDataset,
    content_key,
    manifest_stats,
    validate_manifest,
)
from onellm.instruct_data.schema import caption_prompt

ALL = ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]
EXTENDED = ["xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"]


def record(record_id, modality, path, answer="a thing", prompt=None, **extra):
    item = {"modality": modality, "path": path, **extra}
    return {
        "id": record_id,
        "inputs": [item],
        "conversation": [
            {"role": "user", "content": prompt or caption_prompt(modality)},
            {"role": "assistant", "content": answer},
        ],
        "task": "caption",
    }


@pytest.fixture()
def corpus(tmp_path, media_dir, media_paths):
    """A manifest with one good record per modality and one record per rejection reason."""
    media = tmp_path / "media"
    shutil.copytree(media_dir, media)
    (media / "broken.png").write_bytes(b"\x89PNG not really")
    (media / "imu_4ch.npy").write_bytes(npy_bytes(np.zeros((300, 4), np.float32)))
    with_nan = np.zeros(2048, np.float32)
    with_nan[7] = np.nan
    (media / "scan_nan.npy").write_bytes(npy_bytes(with_nan))
    rows = [record(f"good-{m}", m, f"media/{media_paths[m].name}") for m in ALL]
    rows += [
        record("missing", "image", "media/nope.png"),
        record("broken", "image", "media/broken.png"),
        record("shape", "imu", "media/imu_4ch.npy"),
        record("nan", "fmri", "media/scan_nan.npy"),
        record("long", "image", "media/cat.png", answer=" ".join(["circle"] * 200)),
        record("empty", "image", "media/cat.png", answer="   "),
        record("twice", "image", "media/cat.png", prompt="<image>\n<image>\nDescribe."),
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_every_bad_record_is_rejected_with_its_reason_and_file(corpus, tiny):
    _, processor = tiny
    report = validate_manifest(corpus, corpus.parent, processor, on_error="skip", max_length=200)
    assert sorted(r.id for r in report.kept) == sorted(f"good-{m}" for m in ALL)
    reasons = {r.record_id: r.reason for r in report.rejected}
    assert reasons == {
        "missing": "missing file",
        "broken": "undecodable",
        "shape": "wrong shape",
        "nan": "NaN",
        "long": "too long",
        "empty": "empty answer",
        "twice": "placeholder count",
        None: "schema",  # the line that is not JSON has no id
    }
    by_id = {r.record_id: r for r in report.rejected}
    assert by_id["missing"].file == "media/nope.png" and by_id["missing"].modality == "image"
    assert by_id[None].where == "train.jsonl:16"
    # nothing disappears: kept + rejected = every line of the manifest
    assert len(report.kept) + len(report.rejected) == len(corpus.read_text().splitlines())
    summary = report.summary()
    assert "kept 8, rejected 8" in summary
    for line in ("nope.png", "broken.png", "imu_4ch.npy", "scan_nan.npy"):
        assert line in summary
    assert report.counts()["missing file"] == 1
    assert json.loads(json.dumps(report.to_dict()))["kept"] == 8


def test_on_error_fail_raises_with_the_full_listing(corpus, tiny):
    _, processor = tiny
    with pytest.raises(DataValidationError) as caught:
        validate_manifest(corpus, corpus.parent, processor, on_error="fail", max_length=200)
    assert len(caught.value.report.rejected) == 8
    assert "nope.png" in str(caught.value) and "scan_nan.npy" in str(caught.value)
    with pytest.raises(ValueError, match="on_error"):
        validate_manifest(corpus, corpus.parent, processor, on_error="ignore")


def test_modality_filter_and_validation_without_a_model(corpus):
    report = validate_manifest(corpus, None, {"image": {"image_size": 32}, "audio": {}}, modalities=["audio", "imu"])
    kept = {r.id for r in report.kept}
    assert kept == {"good-audio"}  # the imu record is in the filter but the options say the model has no imu
    assert {r.record_id: r.reason for r in report.rejected if r.record_id}["good-imu"] == "unsupported modality"
    assert "missing" not in {r.record_id for r in report.rejected}  # image records belong to another stage


def test_stats_count_modalities_tasks_and_tokens(corpus, tiny):
    _, processor = tiny
    stats = manifest_stats(corpus, processor)
    assert stats.records == 13 and stats.invalid == 3  # empty answer, placeholder mismatch, bad JSON
    assert stats.by_modality["image"] == 4 and stats.by_modality["fmri"] == 2  # good, missing, broken, long
    assert stats.by_task == {"caption": 13}
    assert stats.answer_words["max"] == 200
    assert (
        stats.answer_words["min"] <= stats.answer_words["p50"] <= stats.answer_words["p90"] <= stats.answer_words["max"]
    )
    assert stats.answer_vocabulary > 0
    assert stats.tokens["min"] > processor.num_placeholder_tokens
    assert "by modality" in stats.summary()


def test_dataset_decodes_lazily_with_content_keys(corpus, tiny, media_paths):
    _, processor = tiny
    report = validate_manifest(corpus, corpus.parent, processor, max_length=200)
    dataset = ManifestDataset(report.kept, corpus.parent, processor)
    assert len(dataset) == 8
    for index in range(len(dataset)):
        item = dataset[index]
        ((modality, tensor),) = item["media"]
        assert tuple(tensor.shape) == tuple(processor.dummy_input(modality).shape)
        assert dataset.modalities(index) == (modality,)
        assert item["conversation"][-1] == {"role": "assistant", "content": "a thing"}
    # keys follow content, not names: a copy under another name has the same key, other bytes another one
    copy = corpus.parent / "media" / "copy.png"
    copy.write_bytes(media_paths["image"].read_bytes())
    assert content_key(copy, {}) == content_key(media_paths["image"], {})
    assert content_key(copy, {}) != content_key(media_paths["depth"], {})
    assert content_key(np.ones(3, np.float32), {}) != content_key(np.ones(4, np.float32), {})


def test_extended_modalities_validate_decode_and_name_bad_files(tmp_path, media_dir, media_paths, tiny, tiny_all):
    """The six beyond OneLLM's eight pass the same data checks; a model built without them rejects them by name."""
    media = tmp_path / "media"
    shutil.copytree(media_dir, media)
    (media / "cube_nan.npy").write_bytes(npy_bytes(np.full((4, 4, 8), np.nan, np.float32)))
    (media / "row_nested.json").write_bytes(json_bytes({"size": [1, 2]}))
    (media / "big_graph.json").write_bytes(json_bytes({"nodes": 40, "edges": [[0, 39]]}))
    rows = [record(f"good-{m}", m, f"media/{media_paths[m].name}") for m in EXTENDED]
    rows += [
        record("missing", "xray", "media/nope.png"),
        record("nan", "hyperspectral", "media/cube_nan.npy"),
        record("nested", "tabular", "media/row_nested.json"),
        record("big", "graph", "media/big_graph.json"),
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _, processor = tiny_all
    report = validate_manifest(manifest, tmp_path, processor, max_length=200)
    assert sorted(r.id for r in report.kept) == sorted(f"good-{m}" for m in EXTENDED)
    by_id = {r.record_id: r for r in report.rejected}
    assert {i: r.reason for i, r in by_id.items()} == {
        "missing": "missing file", "nan": "NaN", "nested": "wrong shape", "big": "too long"
    }  # fmt: skip
    assert by_id["big"].file == "media/big_graph.json" and "40 nodes exceeds the 16-node limit" in by_id["big"].detail
    dataset = ManifestDataset(report.kept, tmp_path, processor)
    for index in range(len(dataset)):
        ((modality, tensor),) = dataset[index]["media"]
        assert tuple(tensor.shape) == tuple(processor.dummy_input(modality).shape)
    # The tiny preset's default build (OneLLM's eight) does not take them: rejected as such, never dropped.
    default = validate_manifest(manifest, tmp_path, tiny[1], max_length=200)
    assert not default.kept and set(default.counts()) == {"unsupported modality"}
