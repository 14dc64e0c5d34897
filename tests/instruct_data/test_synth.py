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
import torch
from PIL import Image

from onellm.instruct_data.cli import main as data_cli
from onellm.instruct_data.schema import read_manifest
from onellm.instruct_data.synth import SPLITS, generator_names, get_generator, synthesize
from onellm.instruct_data.synth.base import BACKGROUNDS, COLOURS
from onellm.instruct_data.synth.corpus import QA_PER_ITEM
from onellm.instruct_data.synth.point import FORMS, point_cloud
from onellm.modalities import default_modality_names, get_modality, marker, modality_names

PER_MODALITY = 5
SEED = 7
EXTENDED = ["xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"]  # opt-in: --modalities all


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
    # The default corpus: OneLLM's eight (the other six are opt-in); depth and normal add a paired RGB each.
    assert len(first) == PER_MODALITY * (len(default_modality_names()) + 2)
    assert first == second  # PNG, MP4, WAV and NPY bytes identical
    other = tmp_path / "c"
    synthesize(other, per_modality=PER_MODALITY, seed=SEED + 1, modalities=["image"])
    assert (other / "train.jsonl").read_bytes() != (corpus / "train.jsonl").read_bytes()


def test_counts_report_and_info(corpus, records):
    info = json.loads((corpus / "synth_info.json").read_text())
    assert info["seed"] == SEED and info["per_modality"] == PER_MODALITY and info["generator_version"]
    assert set(info["vocabulary"]) == set(default_modality_names()) == set(info["modalities"])
    assert info["vocabulary"]["image"]["shapes"][:3] == ["circle", "square", "triangle"]
    for name in default_modality_names():
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
        where = f"at the {obj['position']}"
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
    ("point", "tall"): lambda a, q: "yes" if a["form"] == "tall thin" else "no",
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
    # The six beyond OneLLM's eight.
    ("xray", "count"): lambda a, q: str(len(a["objects"])),
    ("xray", "shape"): lambda a, q: a["shape"],
    ("xray", "size"): lambda a, q: a["size"],
    ("xray", "position"): lambda a, q: a["objects"][0]["position"],
    ("xray", "presence"): lambda a, q: "yes" if any(_phrase(o["position"]) in q for o in a["objects"]) else "no",
    ("infrared", "count"): lambda a, q: str(len(a["spots"])),
    ("infrared", "hottest"): lambda a, q: max(a["spots"], key=lambda s: s["delta"])["cell"],
    ("infrared", "side"): lambda a, q: max(a["spots"], key=lambda s: s["delta"])["cell"].split()[-1],
    ("infrared", "presence"): lambda a, q: "yes" if _asked_cell(q) in {s["cell"] for s in a["spots"]} else "no",
    ("hyperspectral", "dominant"): lambda a, q: a["background"],
    ("hyperspectral", "patch"): lambda a, q: a["patch"],
    ("hyperspectral", "position"): lambda a, q: a["position"],
    ("hyperspectral", "size"): lambda a, q: a["size"],
    ("hyperspectral", "presence"): lambda a, q: (
        "yes" if any(f" {m} in" in q for m in (a["background"], a["patch"])) else "no"
    ),
    ("timeseries", "channels"): lambda a, q: str(a["channels"]),
    ("timeseries", "trend"): lambda a, q: a["trend"],
    ("timeseries", "spikes"): lambda a, q: str(a["spikes"]),
    ("timeseries", "seasonal"): lambda a, q: "yes" if a["seasonal"] else "no",
    ("timeseries", "spike_channel"): lambda a, q: f"channel {a['spike_channel']}",
    ("tabular", "largest"): lambda a, q: max((f for f in a["fields"] if isinstance(f[1], int)), key=lambda f: f[1])[0],
    ("tabular", "smallest"): lambda a, q: min((f for f in a["fields"] if isinstance(f[1], int)), key=lambda f: f[1])[0],
    ("tabular", "count"): lambda a, q: str(len(a["fields"])),
    ("tabular", "category"): lambda a, q: next(
        v for n, v in a["fields"] if q.startswith(f"<tabular>\nWhat is the {n}?")
    ),
    ("tabular", "compare"): lambda a, q: _compare(dict(a["fields"]), q),
    ("tabular", "threshold"): lambda a, q: next(
        ("yes" if v > 50 else "no") for n, v in a["fields"] if f"the {n} above" in q
    ),
    ("graph", "nodes"): lambda a, q: str(len(a["colours"])),
    ("graph", "edges"): lambda a, q: str(len(a["edges"])),
    ("graph", "cycle"): lambda a, q: "yes" if _graph_has_cycle(a) else "no",
    ("graph", "hub"): lambda a, q: a["colours"][int(np.argmax(_graph_degrees(a)))],
    ("graph", "hub_degree"): lambda a, q: str(max(_graph_degrees(a))),
}


def _phrase(position: str) -> str:
    return f"at the {position}"


def _asked_cell(question: str) -> str:
    """ "Is there a hot spot at the top left?" -> "top left"; "... in the center?" -> "center"."""
    where = re.fullmatch(r"<infrared>\nIs there a hot spot (.+)\? .*", question).group(1)
    return "center" if where == "in the center" else where.removeprefix("at the ")


def _compare(fields: dict, question: str) -> str:
    first, second = re.fullmatch(r"<tabular>\nIs the (\w+) greater than the (\w+)\? .*", question).groups()
    return "yes" if fields[first] > fields[second] else "no"


def _graph_degrees(attrs) -> list[int]:
    degrees = [0] * len(attrs["colours"])
    for i, j in attrs["edges"]:
        degrees[i] += 1
        degrees[j] += 1
    return degrees


def _graph_has_cycle(attrs) -> bool:
    """Union-find: an edge joining two nodes already connected closes a cycle."""
    parent = list(range(len(attrs["colours"])))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in attrs["edges"]:
        if root(i) == root(j):
            return True
        parent[root(i)] = root(j)
    return False


def _caption_words(modality, attrs) -> list[str]:
    """Words the caption must contain: what the media shows (the depth/normal colour is in the RGB only)."""
    if modality == "image":  # each shape's place first, then what is there: "at the top a small red star"
        return [f"{_phrase(o['position'])} a {o['size']} {o['colour']} {o['shape']}" for o in attrs["objects"]]
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
    if modality == "xray":
        return [attrs["shape"], attrs["size"], *(_phrase(o["position"]) for o in attrs["objects"])]
    if modality == "infrared":
        return ["hot spot", max(attrs["spots"], key=lambda s: s["delta"])["cell"]]
    if modality == "hyperspectral":
        return [attrs["background"], attrs["patch"], attrs["size"], _phrase(attrs["position"])]
    if modality == "timeseries":
        return ["channel", attrs["trend"] if attrs["trend"] != "flat" else "no trend"]
    if modality == "tabular":
        return [value for _, value in attrs["fields"] if isinstance(value, str)]
    if modality == "graph":
        return [
            "with a cycle" if _graph_has_cycle(attrs) else "without cycles",
            attrs["colours"][int(np.argmax(_graph_degrees(attrs)))],
        ]
    return [attrs["shape"], attrs["colour"]]  # video, point, fmri


@pytest.mark.parametrize("selection", [None, "extended"], ids=["eight", "extended"])
def test_qa_answers_follow_from_the_attributes(tmp_path, selection):
    synthesize(tmp_path, per_modality=40, seed=3, modalities=selection, fmri_voxels=32, workers=1)
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
    assert set(checked) == set(default_modality_names() if selection is None else EXTENDED)
    assert min(checked.values()) >= 40


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


def test_audio_pulses_are_countable(tmp_path):
    synthesize(tmp_path, per_modality=40, seed=4, modalities=["audio"], workers=1)
    counted = 0
    for split in SPLITS:
        for record in read_manifest(tmp_path / f"{split}.jsonl"):
            attrs = record.meta["attributes"]
            if record.task != "caption" or attrs["kind"] not in ("pulses", "noise"):
                continue
            wave, rate = soundfile.read(tmp_path / record.inputs[0].path)
            info = soundfile.info(tmp_path / record.inputs[0].path)
            assert rate == 16000 and wave.shape == (32000,) and info.subtype == "PCM_16"
            loud = np.abs(wave).reshape(-1, 160).max(1) > 0.1  # 10 ms frames above the hiss
            onsets = int(loud[0]) + int(np.sum(loud[1:] & ~loud[:-1]))
            assert onsets == attrs["count"], (record.id, attrs)
            counted += 1
    assert counted >= 5


def test_audio_captions_say_what_is_heard_before_how_often(tmp_path):
    """Every audio caption starts "a ..." and names pitch, length and kind before the count, which comes last: a
    greedy decoder that cannot count yet still says which sound it heard (BENCHMARKS.md, "The demo", 2026-12-06)."""
    synthesize(tmp_path, per_modality=40, seed=4, modalities=["audio"], workers=1)
    times = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
    seen = set()
    for split in SPLITS:
        for record in read_manifest(tmp_path / f"{split}.jsonl"):
            if record.task != "caption":
                continue
            attrs, caption = record.meta["attributes"], record.conversation[1].content
            assert caption.startswith("a "), caption
            if attrs["kind"] == "pulses":
                heard = f"a {attrs['pitch']}-pitched {attrs['length']} pulse heard {times[attrs['count']]}"
                assert caption == heard
            elif attrs["kind"] == "noise":
                assert caption == f"a burst of noise heard {times[attrs['count']]}"
            else:
                assert not any(word in caption.split() for word in ("once", "twice", "times"))
            seen.add(attrs["kind"])
    assert seen == {"pulses", "tone", "sweep", "noise", "chord"}


def test_each_audio_kind_has_one_word_said_of_it_alone(tmp_path):
    """A word slot names one token of the LLM's vocabulary, so each kind's answer word must be one SmolLM2 token
    ("beeps" is two, "Ġbe" "eps"), and the captions must say a kind's word of that kind only (sweeps and chords
    captioned "tone" made the slots name "tone" for them, and LoRA answered "tone" for every kind)."""
    from transformers import AutoTokenizer

    from onellm.instruct_data.synth.audio import KINDS
    from onellm.weights import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    stems = {kind: kind.removesuffix("s") if kind == "pulses" else kind for kind in KINDS}  # "a pulse heard once"
    for word in [*KINDS, *stems.values()]:
        assert len(tokenizer.tokenize(" " + word)) == 1, word
    synthesize(tmp_path, per_modality=60, seed=5, modalities=["audio"], workers=1)
    said = {kind: 0 for kind in KINDS}
    for split in SPLITS:
        for record in read_manifest(tmp_path / f"{split}.jsonl"):
            if record.task != "caption":
                continue
            kind = record.meta["attributes"]["kind"]
            for text in record.references:
                words = set(text.replace("-", " ").split())
                named = {k for k, stem in stems.items() if {k, stem} & words}
                assert named <= {kind}, (kind, text)
                said[kind] += kind in named or stems[kind] in words
    assert all(said.values()), said


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


def test_point_forms_survive_the_encoders_normalisation():
    """The encoder sees a cloud centred and scaled to the unit sphere, so the words a point caption uses must name
    what survives that: proportions, not absolute sizes (a cloud twice as large is the same input)."""
    point = get_modality("point")

    def seen(form: str, scale: float = 1.0) -> torch.Tensor:
        attrs = {"shape": "cylinder", "colour": "red", "form": form, "yaw": 0, "pitch": 0}
        cloud = point_cloud(attrs, np.random.default_rng(0))
        cloud[:, :3] *= scale
        return point.preprocess(cloud, num_points=512)

    assert torch.allclose(seen("regular"), seen("regular", scale=2.0), atol=1e-5)  # why sizes are not named

    def height_over_width(cloud: torch.Tensor) -> float:
        xyz = cloud[:, :3]
        return float((xyz[:, 2].max() - xyz[:, 2].min()) / (xyz[:, 0].max() - xyz[:, 0].min()))

    ratios = {form: height_over_width(seen(form)) for form in FORMS}
    assert ratios["tall thin"] > 2.0 > ratios["regular"] > 0.6 > ratios["short wide"], ratios


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
    assert data_cli(["synth", "--out", str(tmp_path / "all"), "--per-modality", "3", "--modalities", "all"]) == 0
    assert sorted(p.name for p in (tmp_path / "all" / "media").iterdir()) == sorted(modality_names())
    with pytest.raises(KeyError, match="no synthetic generator for \\['sound'\\]; known: image, video"):
        synthesize(tmp_path, per_modality=1, seed=0, modalities=["sound"])


# --- the six beyond OneLLM's eight: their media show what the text says --------------------------------------------------


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("synth_extended")
    synthesize(out, per_modality=12, seed=SEED, modalities="extended", workers=1)
    return out, [r for split in SPLITS for r in read_manifest(out / f"{split}.jsonl") if r.task == "caption"]


def _extended_items(extended, modality):
    root, captions = extended
    items = [(root / r.inputs[0].path, r.meta["attributes"]) for r in captions if r.inputs[0].modality == modality]
    assert len(items) == 12
    return items


def test_all_and_extended_selections(extended):
    root, _ = extended
    assert json.loads((root / "synth_info.json").read_text())["modalities"] == EXTENDED
    assert sorted(p.name for p in (root / "media").iterdir()) == sorted(EXTENDED)
    with pytest.raises(KeyError, match="no synthetic generator for \\['smell'\\]"):
        synthesize(root / "x", per_modality=1, seed=0, modalities="extended,smell")


def test_xray_objects_are_bright_where_described(extended):
    centres = {"left": (20, 48), "right": (76, 48), "top": (48, 20), "bottom": (48, 76), "center": (48, 48)}
    for path, attrs in _extended_items(extended, "xray"):
        image = Image.open(path)
        counts = np.asarray(image).astype(float)
        assert image.mode == "I;16" and counts.shape == (96, 96)
        tissue = np.median(counts)
        for obj in attrs["objects"]:
            x, y = centres[obj["position"]]
            assert counts[y + obj["dy"], x + obj["dx"]] > 2.5 * tissue, (path, attrs)
        empty = [p for p in centres if p not in {o["position"] for o in attrs["objects"]}]
        assert all(counts[centres[p][1], centres[p][0]] < 1.5 * tissue for p in empty)


def test_infrared_hottest_spot_is_where_described(extended):
    cells = {"top left": (12, 12), "top": (32, 12), "top right": (52, 12), "left": (12, 32), "center": (32, 32),
             "right": (52, 32), "bottom left": (12, 52), "bottom": (32, 52), "bottom right": (52, 52)}  # fmt: skip
    for path, attrs in _extended_items(extended, "infrared"):
        kelvin = np.asarray(Image.open(path)).astype(float) / 100
        y, x = np.unravel_index(np.argmax(kelvin), kelvin.shape)
        nearest = min(cells, key=lambda c: (cells[c][0] - x) ** 2 + (cells[c][1] - y) ** 2)
        assert nearest == max(attrs["spots"], key=lambda s: s["delta"])["cell"], (path, attrs)
        assert abs(np.median(kelvin) - attrs["ambient"]) < 2


def test_hyperspectral_patch_has_its_material_spectrum(extended):
    from onellm.instruct_data.synth.hyperspectral import POSITIONS, spectrum

    for path, attrs in _extended_items(extended, "hyperspectral"):
        cube = np.load(path)
        assert cube.shape == (24, 24, attrs["bands"]) and cube.dtype == np.float32
        x, y = POSITIONS[attrs["position"]]
        inside = cube[y + attrs["dy"], x + attrs["dx"]] / attrs["illumination"]
        corner = {"left": (23, 0), "right": (0, 0), "top": (0, 23), "bottom": (0, 0), "center": (0, 0)}[
            attrs["position"]
        ]
        outside = cube[corner] / attrs["illumination"]
        for pixel, material in ((inside, attrs["patch"]), (outside, attrs["background"])):
            assert np.abs(pixel - spectrum(material, attrs["bands"])).max() < 0.06, (path, attrs, material)


def test_timeseries_show_their_channels_trend_and_spikes(extended):
    for path, attrs in _extended_items(extended, "timeseries"):
        values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
        assert values.shape == (attrs["steps"], attrs["channels"]) and path.suffix == f".{attrs['format']}"
        scale = np.array([2.0, 15.0, 1.0, 8.0])[: attrs["channels"]]
        z = (values - np.median(values, axis=0)) / scale
        third = attrs["steps"] // 3
        change = np.median(z[-third:], axis=0) - np.median(z[:third], axis=0)
        expected = {"rising": 2.0, "falling": -2.0, "flat": 0.0}[attrs["trend"]]  # 3 x (5/6 - 1/6)
        assert np.all(np.abs(change - expected) < 0.8), (path, attrs, change)
        peaks = np.abs(np.diff(z, axis=0)) > 2.0  # a spike's steep edges; noise and trend steps are far below
        spiky = [c + 1 for c in range(attrs["channels"]) if peaks[:, c].any()]
        assert spiky == ([attrs["spike_channel"]] if attrs["spikes"] else []), (path, attrs)


def test_tabular_and_graph_files_hold_the_described_content(extended):
    for path, attrs in _extended_items(extended, "tabular"):
        assert json.loads(path.read_text()) == dict(attrs["fields"])
    for path, attrs in _extended_items(extended, "graph"):
        data = json.loads(path.read_text())
        assert [["red", "green", "blue", "yellow"][row.index(1.0)] for row in data["nodes"]] == attrs["colours"]
        assert sorted(sorted(edge) for edge in data["edges"]) == attrs["edges"]


def test_commands_mount_under_onellm_data(tmp_path):
    from onellm.cli import make_parser

    args = make_parser().parse_args(["data", "synth", "--out", str(tmp_path), "--per-modality", "3", "--seed", "2"])
    assert (args.per_modality, args.seed, args.func.__name__) == (3, 2, "_run_synth")
    args = make_parser().parse_args(["data", "convert", "cap3d", "x.csv", "--out", "y.jsonl"])
    assert (args.format, args.captions_csv, args.out_manifest, args.media_prefix) == ("cap3d", "x.csv", "y.jsonl", "")
