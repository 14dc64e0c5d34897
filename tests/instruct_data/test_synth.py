"""Synthetic corpus: determinism, content-disjoint splits, answers that follow from the content, media that show it."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from onellm.instruct_data.cli import main as data_cli
from onellm.instruct_data.schema import read_manifest
from onellm.instruct_data.synth import SPLITS, generator_names, get_generator, synthesize
from onellm.instruct_data.synth.base import BACKGROUNDS, COLOURS
from onellm.instruct_data.synth.corpus import QA_PER_ITEM
from onellm.modalities import marker, modality_names

PER_MODALITY = 5
SEED = 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_a")
    synthesize(out, per_modality=PER_MODALITY, seed=SEED, workers=1)
    return out


@pytest.fixture(scope="module")
def records(corpus) -> dict[str, list]:
    return {split: read_manifest(corpus / f"{split}.jsonl") for split in SPLITS}  # read_manifest validates


def _all(records):
    return [r for split in SPLITS for r in records[split]]


def _media(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "media").rglob("*")) if p.is_file()}


def test_every_modality_has_a_generator():
    assert sorted(generator_names()) == sorted(modality_names())


def test_same_seed_gives_identical_files_whatever_the_worker_count(corpus, tmp_path):
    again = tmp_path / "b"
    report = synthesize(again, per_modality=PER_MODALITY, seed=SEED, workers=2)  # the multiprocessing path
    assert report.workers == 2
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "synth_info.json"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    first, second = _media(corpus), _media(again)
    assert len(first) == PER_MODALITY * (len(generator_names()) + 2)  # depth and normal add a paired RGB each
    assert first == second  # PNG, MP4, WAV and NPY bytes identical
    other = tmp_path / "c"
    synthesize(other, per_modality=PER_MODALITY, seed=SEED + 1, modalities=["image"])
    assert (other / "train.jsonl").read_bytes() != (corpus / "train.jsonl").read_bytes()


def test_counts_report_and_info(corpus, records):
    info = json.loads((corpus / "synth_info.json").read_text())
    assert info["seed"] == SEED and info["per_modality"] == PER_MODALITY and info["generator_version"]
    assert set(info["vocabulary"]) == set(generator_names())
    assert info["vocabulary"]["image"]["shapes"][:3] == ["circle", "square", "triangle"]
    for name in generator_names():
        counts = info["items"][name]
        assert sum(counts.values()) == PER_MODALITY
        assert all(counts[split] >= 1 for split in SPLITS), (name, counts)  # every modality in every split
        for split in SPLITS:
            in_split = [r for r in records[split] if r.inputs[0].modality == name]
            assert len(in_split) == counts[split] * (1 + QA_PER_ITEM)
    assert info["records"] == {split: len(records[split]) for split in SPLITS}


def test_records_follow_the_prompt_conventions(records):
    for record in _all(records):
        modality = record.inputs[0].modality
        assert record.inputs[0].path.startswith(f"media/{modality}/")
        user = record.conversation[0].content
        assert user.startswith(marker(modality) + "\n") and user.count(marker(modality)) == 1
        if record.task == "caption":
            assert re.fullmatch(r"synth-[a-z]+-\d{6}", record.id)
            assert user.startswith(f"{marker(modality)}\nProvide a one-sentence caption for the provided ")
            assert record.references[0] == record.answer and 2 <= len(record.references) <= 5
            assert len(set(record.references)) == len(record.references)
        else:
            assert record.task == "qa" and re.fullmatch(r"synth-[a-z]+-\d{6}-qa\d", record.id)
            assert user.endswith("? Answer the question using a single word or phrase.")
            assert record.references == [record.answer]
        if modality in ("depth", "normal"):
            assert record.inputs[0].rgb_path == record.inputs[0].path.replace(".png", "_rgb.png")
        assert (record.inputs[0].sample_rate == 50) == (modality == "imu")


def test_splits_are_disjoint_by_content(records):
    seen: dict[tuple[str, str], str] = {}
    for split in SPLITS:
        for record in records[split]:
            modality = record.inputs[0].modality
            key = get_generator(modality)(SEED).content_key(record.meta["attributes"])  # recomputed, not trusted
            assert seen.setdefault((modality, key), split) == split, (
                f"{record.id} content also in {seen[(modality, key)]}"
            )
            assert record.meta["split"] == split


def test_repeated_content_stays_in_one_split(tmp_path):
    # 300 fMRI items over 96 stimuli: repeats are certain; each stimulus must sit in exactly one split.
    report = synthesize(tmp_path, per_modality=300, seed=1, modalities=["fmri"], fmri_voxels=64, workers=1)
    assert report.repeated_content["fmri"] > 100
    split_of: dict[tuple, set] = {}
    for split in SPLITS:
        for record in read_manifest(tmp_path / f"{split}.jsonl"):
            a = record.meta["attributes"]
            split_of.setdefault((a["colour"], a["shape"], a["size"]), set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values())
    assert {s for splits in split_of.values() for s in splits} == set(SPLITS)
    assert np.load(tmp_path / "media/fmri/000000.npy").shape == (64,)


# --- answers follow from the attributes (an oracle written independently of the generators) -------------------------


def _object(attrs, question):
    """The image object a question refers to: by shape type, by position or by colour+shape."""
    objs = attrs["objects"]
    for obj in objs:
        where = {
            "left": "on the left",
            "right": "on the right",
            "top": "at the top",
            "bottom": "at the bottom",
            "center": "in the center",
        }[obj["position"]]
        if where in question or f"the {obj['colour']} {obj['shape']}" in question:
            return obj
    matches = [o for o in objs if f"the {o['shape']}" in question]
    assert len(matches) == 1, question
    return matches[0]


ORACLE = {
    ("image", "count"): lambda a, q: str(len(a["objects"])),
    ("image", "background"): lambda a, q: a["background"],
    ("image", "color"): lambda a, q: _object(a, q)["colour"],
    ("image", "shape"): lambda a, q: _object(a, q)["shape"],
    ("image", "size"): lambda a, q: _object(a, q)["size"],
    ("image", "position"): lambda a, q: _object(a, q)["position"],
    ("image", "presence"): lambda a, q: (
        "yes" if any(f" {o['colour']} {o['shape']}?" in q for o in a["objects"]) else "no"
    ),
    ("video", "shape"): lambda a, q: a["shape"],
    ("video", "color"): lambda a, q: a["colour"],
    ("video", "color_end"): lambda a, q: a["colour_to"],
    ("video", "direction"): lambda a, q: a["motion"],
    ("video", "moving"): lambda a, q: (
        "yes" if a["motion"] in ("left to right", "right to left", "up", "down") else "no"
    ),
    ("video", "size_change"): lambda a, q: {"grow": "bigger", "shrink": "smaller"}[a["motion"]],
    ("audio", "count"): lambda a, q: str(a["count"]),
    ("audio", "pitch"): lambda a, q: a["pitch"],
    ("audio", "kind"): lambda a, q: a["kind"],
    ("audio", "trend"): lambda a, q: {"rising": "rise", "falling": "fall"}.get(a.get("direction"), "stay the same"),
    ("point", "shape"): lambda a, q: a["shape"],
    ("point", "color"): lambda a, q: a["colour"],
    ("point", "presence"): lambda a, q: "yes" if f" {a['shape']}?" in q else "no",
    ("depth", "shape"): lambda a, q: a["shape"],
    ("depth", "distance"): lambda a, q: a["distance"],
    ("depth", "side"): lambda a, q: a["side"],
    ("normal", "shape"): lambda a, q: a["shape"],
    ("normal", "distance"): lambda a, q: a["distance"],
    ("normal", "side"): lambda a, q: a["side"],
    ("imu", "activity"): lambda a, q: "standing still" if a["activity"] == "still" else a["activity"],
    ("imu", "fall"): lambda a, q: "yes" if a["activity"] == "falling" else "no",
    ("imu", "turn"): lambda a, q: a["activity"].split()[1],
    ("imu", "jumps"): lambda a, q: str(a["jumps"]),
    ("fmri", "shape"): lambda a, q: a["shape"],
    ("fmri", "color"): lambda a, q: a["colour"],
    ("fmri", "size"): lambda a, q: a["size"],
}


def _caption_words(modality, attrs) -> list[str]:
    """Words the caption must contain: what the media shows (the depth/normal colour is in the RGB only)."""
    if modality == "image":
        return [word for obj in attrs["objects"] for word in (obj["colour"], obj["shape"], obj["size"])]
    if modality == "imu":
        verbs = {"still": "still", "jumping": "jumps", "turning left": "turns left", "turning right": "turns right"}
        return [verbs.get(attrs["activity"], attrs["activity"]).replace("falling", "falls")]
    if modality == "audio":
        return (
            [attrs["pitch"]]
            if "pitch" in attrs
            else [{"rising": "rising", "falling": "falling"}.get(attrs.get("direction"), "noise")]
        )
    if modality in ("depth", "normal"):
        return [attrs["shape"], attrs["distance"], attrs["side"]]
    return [attrs["shape"], attrs["colour"]]  # video, point, fmri


def test_qa_answers_follow_from_the_attributes(tmp_path):
    synthesize(tmp_path, per_modality=40, seed=3, fmri_voxels=32, workers=1)
    checked: dict[str, int] = {}
    for split in SPLITS:
        for record in read_manifest(tmp_path / f"{split}.jsonl"):
            modality, attrs = record.inputs[0].modality, record.meta["attributes"]
            if record.task == "caption":
                assert all(word in record.answer for word in _caption_words(modality, attrs)), (record.answer, attrs)
                continue
            oracle = ORACLE.get((modality, record.meta["question_kind"]))
            if oracle:
                question = record.conversation[0].content
                assert record.answer == oracle(attrs, question), (record.id, question, record.answer, attrs)
                checked[modality] = checked.get(modality, 0) + 1
    assert set(checked) == set(generator_names()) and min(checked.values()) >= 40


# --- the media show what the text says ---------------------------------------------------------------------------


def _first(records, modality, predicate=lambda a: True):
    for record in _all(records):
        if record.inputs[0].modality == modality and record.task == "caption" and predicate(record.meta["attributes"]):
            return record
    return None


def test_image_pixels_show_the_described_shapes(corpus, records):
    centres = {"left": (24, 64), "right": (104, 64), "top": (64, 24), "bottom": (64, 104), "center": (64, 64)}
    for record in _all(records):
        if record.inputs[0].modality != "image" or record.task != "caption":
            continue
        pixels = np.asarray(Image.open(corpus / record.inputs[0].path))
        assert pixels.shape == (128, 128, 3)
        attrs = record.meta["attributes"]
        assert tuple(pixels[2, 2]) == BACKGROUNDS[attrs["background"]]
        for obj in attrs["objects"]:
            x, y = centres[obj["position"]]
            assert tuple(pixels[y + obj["dy"], x + obj["dx"]]) == COLOURS[obj["colour"]], (record.id, obj)


def test_video_frames_move_as_described(tmp_path):
    synthesize(tmp_path, per_modality=30, seed=2, modalities=["video"], workers=1)
    seen = set()
    for record in read_manifest(tmp_path / "train.jsonl"):
        attrs = record.meta["attributes"]
        if record.task != "caption" or attrs["motion"] not in ("left to right", "right to left", "up", "down", "grow"):
            continue
        with av.open(str(tmp_path / record.inputs[0].path)) as container:
            frames = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (64, 64, 3)
        background = np.array(BACKGROUNDS[attrs["background"]])
        masks = [np.abs(f - background).sum(-1) > 60 for f in frames]
        xs = [np.nonzero(m)[1].mean() for m in masks]
        ys = [np.nonzero(m)[0].mean() for m in masks]
        sizes = [m.sum() for m in masks]
        change = {
            "left to right": xs[-1] - xs[0],
            "right to left": xs[0] - xs[-1],
            "down": ys[-1] - ys[0],
            "up": ys[0] - ys[-1],
            "grow": sizes[-1] - sizes[0],
        }[attrs["motion"]]
        assert change > 20, (record.id, attrs)
        # The colour survives the yuv420p encode: the shape's median pixel is nearest to the described colour.
        median = np.median(frames[0][masks[0]], axis=0)
        nearest = min(COLOURS, key=lambda name: np.abs(median - COLOURS[name]).sum())
        assert nearest == attrs["colour"], (record.id, median, attrs)
        seen.add(attrs["motion"])
    assert len(seen) >= 3


def test_audio_beeps_are_countable(tmp_path):
    synthesize(tmp_path, per_modality=40, seed=4, modalities=["audio"], workers=1)
    counted = 0
    for split in SPLITS:
        for record in read_manifest(tmp_path / f"{split}.jsonl"):
            attrs = record.meta["attributes"]
            if record.task != "caption" or attrs["kind"] not in ("beeps", "noise"):
                continue
            wave, rate = soundfile.read(tmp_path / record.inputs[0].path)
            info = soundfile.info(tmp_path / record.inputs[0].path)
            assert rate == 16000 and wave.shape == (32000,) and info.subtype == "PCM_16"
            loud = np.abs(wave).reshape(-1, 160).max(1) > 0.1  # 10 ms frames above the hiss
            onsets = int(loud[0]) + int(np.sum(loud[1:] & ~loud[:-1]))
            assert onsets == attrs["count"], (record.id, attrs)
            counted += 1
    assert counted >= 5


def test_geometry_media(corpus, records):
    depth = _first(records, "depth")
    mm = np.asarray(Image.open(corpus / depth.inputs[0].path))
    assert Image.open(corpus / depth.inputs[0].path).mode == "I;16" and mm.shape == (128, 128)
    attrs = depth.meta["attributes"]
    assert abs(int(mm[0, 0]) - attrs["wall"] * 1000) < 20  # the corner sees the wall, in millimetres
    nearest_col = np.unravel_index(np.argmin(mm), mm.shape)[1]
    assert {"left": nearest_col < 64, "right": nearest_col > 64, "center": 40 < nearest_col < 88}[attrs["side"]]
    assert mm.min() < {"close": 1600, "far": 3200}[attrs["distance"]]
    rgb = np.asarray(Image.open(corpus / depth.inputs[0].rgb_path))
    assert rgb.shape == (128, 128, 3)
    normal = _first(records, "normal")
    encoded = np.asarray(Image.open(corpus / normal.inputs[0].path))
    assert tuple(encoded[0, 0]) == (128, 128, 255)  # the wall faces the camera: n = (0, 0, 1)
    unit = encoded.astype(float) / 255 * 2 - 1
    assert np.allclose(np.linalg.norm(unit, axis=-1), 1, atol=0.02)

    point = _first(records, "point")
    cloud = np.load(corpus / point.inputs[0].path)
    assert cloud.shape == (2048, 6) and cloud.dtype == np.float32
    assert cloud[:, 3:].min() >= 0 and cloud[:, 3:].max() <= 1
    assert np.allclose(cloud[:, 3:].mean(0), np.array(COLOURS[point.meta["attributes"]["colour"]]) / 255, atol=0.03)


def test_imu_and_fmri_signals(tmp_path):
    synthesize(tmp_path, per_modality=60, seed=5, modalities=["imu", "fmri"], fmri_voxels=512, workers=1)
    activity_std: dict[str, list] = {}
    responses: dict[tuple, list] = {}
    for split in SPLITS:
        for record in read_manifest(tmp_path / f"{split}.jsonl"):
            if record.task != "caption":
                continue
            attrs, data = record.meta["attributes"], np.load(tmp_path / record.inputs[0].path)
            if record.inputs[0].modality == "imu":
                assert data.shape == (200, 6) and data.dtype == np.float32
                activity_std.setdefault(attrs["activity"], []).append(data[:, :3].std(0).sum())
                if attrs["activity"] == "still":
                    assert np.abs(data[:, 3:]).max() < 0.1 and abs(np.linalg.norm(data[:, :3].mean(0)) - 9.81) < 0.1
                if attrs["activity"].startswith("turning"):
                    sign = 1 if attrs["activity"] == "turning left" else -1
                    assert sign * data[:, 5].sum() / 50 > 1.2  # integrated yaw ~ +-pi/2 rad
            else:
                assert data.shape == (512,)
                responses.setdefault((attrs["colour"], attrs["shape"], attrs["size"]), []).append(data)
    assert np.mean(activity_std["running"]) > np.mean(activity_std["walking"]) > np.mean(activity_std["still"])
    # Class-conditional: responses to one stimulus correlate more than responses to two different stimuli.
    stimuli = list(responses)
    same = [np.corrcoef(v[0], v[1])[0, 1] for v in responses.values() if len(v) > 1]
    different = [np.corrcoef(responses[a][0], responses[b][0])[0, 1] for a, b in itertools.pairwise(stimuli)]
    assert same and np.mean(same) > np.mean(different) + 0.2


def test_cli_synth_and_bad_modality(tmp_path, capsys):
    assert (
        data_cli(["synth", "--out", str(tmp_path), "--per-modality", "3", "--seed", "1", "--modalities", "image,audio"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "image" in printed and "audio" in printed and "records: train" in printed
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == ["audio", "image"]
    with pytest.raises(KeyError, match="no synthetic generator for \\['sound'\\]; known: image, video"):
        synthesize(tmp_path, per_modality=1, seed=0, modalities=["sound"])


def test_commands_mount_under_onellm_data(tmp_path):
    from onellm.cli import make_parser

    args = make_parser().parse_args(["data", "synth", "--out", str(tmp_path), "--per-modality", "3", "--seed", "2"])
    assert (args.per_modality, args.seed, args.func.__name__) == (3, 2, "_run_synth")
    args = make_parser().parse_args(["data", "convert", "cap3d", "x.csv", "--out", "y.jsonl"])
    assert (args.format, args.captions_csv, args.out_manifest, args.media_prefix) == ("cap3d", "x.csv", "y.jsonl", "")
