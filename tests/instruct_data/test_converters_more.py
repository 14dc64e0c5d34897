"""Converters for the benchmark sources (GQA, TextVQA, OK-VQA, OneLLM's Ego4D IMU and NSD fMRI caption files):
small files in each source's real layout -> exact records, counts and rejected entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onellm.eval.runner import prepare_task
from onellm.eval.sources import DataDirs
from onellm.eval.task import load_task
from onellm.instruct_data.converters import converter_names, get_converter
from onellm.instruct_data.schema import caption_prompt, qa_prompt, read_manifest


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _dicts(path: Path) -> list[dict]:
    return [r.to_dict() for r in read_manifest(path)]


def test_benchmark_formats_are_registered():
    assert {"gqa", "textvqa", "okvqa", "ego4d_imu", "nsd_fmri"} <= set(converter_names())


def _gqa_entry(image_id: str, question: str, answer: str | None, full: str) -> dict:
    entry = {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "woman (1)"}],
        "entailed": [], "equivalent": [], "question": question, "imageId": image_id, "isBalanced": True,
        "groups": {"global": None, "local": "10c-woman_man"}, "fullAnswer": full,
        "types": {"structural": "choose", "semantic": "rel", "detailed": "relChooser"},
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}}, "semanticStr": "select: woman (1)",
    }  # fmt: skip
    if answer is not None:
        entry["answer"] = answer
    return entry


def test_gqa(tmp_path):
    source = _write_json(
        tmp_path / "testdev_balanced_questions.json",
        {
            "201307251": _gqa_entry("n435808", "Is the woman to the left or to the right of the man?", "left",
                                    "The woman is to the left of the man."),
            "20968379": _gqa_entry("n288870", "Is the sky blue?", "yes", "Yes, the sky is blue."),
            "201640614": _gqa_entry("n51046", "Who wears the hat?", None, "The man wears the hat."),
        },
    )  # fmt: skip
    out = tmp_path / "gqa.jsonl"
    report = get_converter("gqa")(source, out, media_prefix="images")
    assert report.kept == 2
    assert report.rejected == [
        ("testdev_balanced_questions.json entries[2] (id 201640614)", "no 'answer' (test / challenge files have none)")
    ]
    records = _dicts(out)
    assert [r["id"] for r in records] == ["gqa-201307251", "gqa-20968379"]
    assert records[0] == {
        "id": "gqa-201307251",
        "inputs": [{"modality": "image", "path": "images/n435808.jpg"}],
        "conversation": [
            {"role": "user", "content": qa_prompt("image", "Is the woman to the left or to the right of the man?")},
            {"role": "assistant", "content": "left"},
        ],
        "task": "qa",
        "references": ["left"],
        "meta": {"source": "gqa", "question_id": "201307251", "image_id": "n435808",
                 "full_answer": "The woman is to the left of the man.",
                 "types": {"structural": "choose", "semantic": "rel", "detailed": "relChooser"}},
    }  # fmt: skip
    with pytest.raises(ValueError, match="expected a GQA questions file"):
        get_converter("gqa")(_write_json(tmp_path / "v.json", {"questions": []}), out)


def test_textvqa(tmp_path):
    answers = ["nokia", "nokia", "toshiba", "nokia", "nokia", "nokia", "nokia", "nokia", "nokia", "nokia"]
    common = {"image_classes": ["Mobile phone"], "flickr_original_url": "https://farm6.staticflickr.com/x_o.jpg",
              "flickr_300k_url": "https://c4.staticflickr.com/x_z.jpg", "image_width": 1024, "image_height": 730,
              "set_name": "val"}  # fmt: skip
    source = _write_json(
        tmp_path / "TextVQA_0.5.1_val.json",
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
            {**common, "question": "what is the brand of phone?", "image_id": "0054c91397f2fe05",
             "answers": answers, "question_tokens": ["what", "is", "the", "brand", "of", "phone"],
             "question_id": 34602},
            {**common, "question": "what number is on the jersey?", "image_id": "00685bc495504d61",
             "answers": ["22", "22", "22", "22", "21", "21", "21", "21", "2", "22 "],
             "question_tokens": ["what", "number"], "question_id": 34603},
            {**common, "question": "what is written on the sign?", "image_id": "01ab8a2c3b6d2c2f",
             "answers": [], "question_tokens": ["what"], "question_id": 34604},
        ]},
    )  # fmt: skip
    out = tmp_path / "textvqa.jsonl"
    report = get_converter("textvqa")(source, out, media_prefix="train_images")
    assert report.kept == 2
    assert report.rejected == [
        ("TextVQA_0.5.1_val.json data[2] (id 34604)", "'answers' must be a non-empty list of answer strings, found []")
    ]
    first, second = _dicts(out)
    assert first == {
        "id": "textvqa-34602",
        "inputs": [{"modality": "image", "path": "train_images/0054c91397f2fe05.jpg"}],
        "conversation": [
            {"role": "user", "content": qa_prompt("image", "what is the brand of phone?")},
            {"role": "assistant", "content": "nokia"},
        ],
        "task": "qa",
        "references": answers,
        "meta": {"source": "textvqa", "question_id": 34602, "image_id": "0054c91397f2fe05", "set_name": "val"},
    }
    # answers are stripped before counting: "22 " counts as "22" (5 votes against 4 for "21")
    assert second["conversation"][1]["content"] == "22" and len(second["references"]) == 10
    with pytest.raises(ValueError, match="expected a TextVQA file with keys \\['data'\\]"):
        get_converter("textvqa")(_write_json(tmp_path / "q.json", {"questions": []}), out)


def test_okvqa(tmp_path):
    def answers(*pairs):  # (raw_answer, answer) pairs; OK-VQA repeats each of 5 answers twice
        given = [pair for pair in pairs for _ in (0, 1)]
        return [{"answer_id": i + 1, "raw_answer": raw, "answer_confidence": "yes", "answer": stem}
                for i, (raw, stem) in enumerate(given)]  # fmt: skip

    questions = _write_json(
        tmp_path / "OpenEnded_mscoco_val2014_questions.json",
        {"license": {}, "data_subtype": "val2014", "task_type": "Open-Ended", "data_type": "mscoco", "info": {},
         "questions": [
             {"image_id": 297147, "question": "What sport can you use this for?", "question_id": 2971475},
             {"image_id": 581929, "question": "What is the hairstyle of the blond called?", "question_id": 5819295},
             {"image_id": 1000, "question": "Which breed is this dog?", "question_id": 10005},
         ]},
    )  # fmt: skip
    race = answers(("racing", "race"), ("racing", "race"), ("motocross", "motocross"), ("riding", "ride"),
                   ("race", "race"))  # fmt: skip
    tie = answers(("pony tail", "pony tail"), ("pony tail", "pony tail"), ("braid", "braid"), ("braid", "braid"),
                  ("bun", "bun"))  # fmt: skip
    annotations = _write_json(
        tmp_path / "mscoco_val2014_annotations.json",
        {"license": {}, "data_subtype": "val2014", "data_type": "mscoco", "info": {}, "annotations": [
            {"image_id": 297147, "answer_type": "other", "question_type": "four", "question_id": 2971475,
             "answers": race, "confidence": 3},
            {"image_id": 581929, "answer_type": "other", "question_type": "five", "question_id": 5819295,
             "answers": tie, "confidence": 3},
            {"image_id": 1000, "answer_type": "other", "question_type": "eight", "question_id": 10005,
             "answers": [{"answer_id": 1, "raw_answer": "", "answer_confidence": "yes", "answer": ""}],
             "confidence": 1},
        ]},
    )  # fmt: skip
    out = tmp_path / "okvqa.jsonl"
    report = get_converter("okvqa")(questions, annotations, out, media_prefix="val2014")
    assert report.kept == 2
    assert len(report.rejected) == 1
    assert report.rejected[0][0] == "OpenEnded_mscoco_val2014_questions.json questions[2] (id 10005)"
    assert report.rejected[0][1].startswith("'answers' must be a non-empty list of {'answer': text}")
    first, second = _dicts(out)
    assert first == {
        "id": "okvqa-2971475",
        "inputs": [{"modality": "image", "path": "val2014/COCO_val2014_000000297147.jpg"}],
        "conversation": [
            {"role": "user", "content": qa_prompt("image", "What sport can you use this for?")},
            {"role": "assistant", "content": "race"},
        ],
        "task": "qa",
        "references": ["race", "race", "race", "race", "motocross", "motocross", "ride", "ride", "race", "race"],
        "meta": {"source": "okvqa", "question_id": 2971475, "image_id": 297147, "question_type": "four",
                 "answer_type": "other"},
    }  # fmt: skip
    assert second["conversation"][1]["content"] == "pony tail"  # 4 each: the one given first wins
    assert second["references"] == [a["answer"] for a in tie]


def _coco_layout(images: list[dict], captions: list[tuple[int, str]]) -> dict:
    return {
        "info": {"description": "OneLLM eval"},
        "licenses": [],
        "type": "captions",
        "images": images,
        "annotations": [
            {"image_id": image_id, "id": i, "caption": text} for i, (image_id, text) in enumerate(captions)
        ],
    }


def test_ego4d_imu(tmp_path):
    images = [
        {"id": 0, "file_name": "0_a0b1-uid", "video_uid": "a0b1-uid", "window_start": 120.5, "window_end": 123.0},
        {"id": 1, "file_name": "1_e4f5-uid", "video_uid": "e4f5-uid", "window_start": 30, "window_end": 32.5},
        {"id": 2, "file_name": "2_bad", "video_uid": "bad-uid", "window_start": 10.0, "window_end": 9.0},
        {"id": 3, "file_name": "3_nocap", "video_uid": "e4f5-uid", "window_start": 40, "window_end": 42.5},
    ]
    source = _write_json(
        tmp_path / "imu_2000_cococap.json",
        _coco_layout(
            images,
            [(0, "The person opens the fridge."), (1, "The person walks down the stairs."),
             (0, "Someone opens a fridge door."), (2, "The person sits."), (7, "orphan")],
        ),
    )  # fmt: skip
    out = tmp_path / "imu.jsonl"
    report = get_converter("ego4d_imu")(source, out, media_prefix="imu")
    assert report.kept == 2
    assert report.rejected == [
        ("imu_2000_cococap.json annotations[4] (id 4)", "image_id 7 is not in 'images'"),
        ("imu_2000_cococap.json images[3] (id 3)", "no captions"),
        ("imu_2000_cococap.json images[2] (id 2)", "window_start < window_end must be seconds >= 0, found (10.0, 9.0)"),
    ]
    first, second = _dicts(out)
    assert first == {
        "id": "ego4d-imu-0",
        "inputs": [{"modality": "imu", "path": "imu/a0b1-uid.npy"}],
        "conversation": [
            {"role": "user", "content": caption_prompt("imu")},
            {"role": "assistant", "content": "The person opens the fridge."},
        ],
        "task": "caption",
        "references": ["The person opens the fridge.", "Someone opens a fridge door."],
        "meta": {"source": "ego4d_imu", "image_id": 0, "video_uid": "a0b1-uid", "window_start": 120.5,
                 "window_end": 123.0, "layout": "ego4d"},
    }  # fmt: skip
    assert second["id"] == "ego4d-imu-1" and second["inputs"] == [{"modality": "imu", "path": "imu/e4f5-uid.npy"}]
    assert (second["meta"]["window_start"], second["meta"]["window_end"]) == (30, 32.5)
    with pytest.raises(ValueError, match="expected a COCO-layout IMU file with keys \\['images', 'annotations'\\]"):
        get_converter("ego4d_imu")(_write_json(tmp_path / "x.json", [{"video_uid": "a"}]), out)


def test_nsd_fmri(tmp_path):
    images = [
        {"id": 0, "file_name": "fmri/sub01/nsd_test_0000.npy", "height": 425, "width": 425},
        {"id": 1, "file_name": "fmri/sub01/nsd_test_0001.npy"},
        {"id": 2, "height": 425},
    ]
    source = _write_json(
        tmp_path / "fmri_eval_cococap.json",
        _coco_layout(
            images,
            [(0, "A train pulling into a station."), (0, "A yellow train on the tracks."), (1, "Two giraffes eating."),
             (1, "  "), (2, "A dog.")],
        ),
    )  # fmt: skip
    out = tmp_path / "fmri.jsonl"
    report = get_converter("nsd_fmri")(source, out)
    assert report.kept == 2
    assert report.rejected == [
        ("fmri_eval_cococap.json annotations[3] (id 3)", "empty caption"),
        ("fmri_eval_cococap.json images[2] (id 2)", "missing ['file_name']"),
    ]
    assert _dicts(out) == [
        {
            "id": "nsd-fmri-0",
            "inputs": [{"modality": "fmri", "path": "fmri/sub01/nsd_test_0000.npy"}],
            "conversation": [
                {"role": "user", "content": caption_prompt("fmri")},
                {"role": "assistant", "content": "A train pulling into a station."},
            ],
            "task": "caption",
            "references": ["A train pulling into a station.", "A yellow train on the tracks."],
            "meta": {"source": "nsd_fmri", "image_id": 0},
        },
        {
            "id": "nsd-fmri-1",
            "inputs": [{"modality": "fmri", "path": "fmri/sub01/nsd_test_0001.npy"}],
            "conversation": [
                {"role": "user", "content": caption_prompt("fmri")},
                {"role": "assistant", "content": "Two giraffes eating."},
            ],
            "task": "caption",
            "references": ["Two giraffes eating."],
            "meta": {"source": "nsd_fmri", "image_id": 1},
        },
    ]


def test_benchmark_tasks_run_their_converter(tmp_path):
    """Each benchmark YAML's converter step reads its official file names and yields samples of its modality."""

    def touch(folder: Path, name: str) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()  # prepare_task only checks that media files exist

    root = tmp_path / "data"
    gqa = root / "gqa"
    gqa.mkdir(parents=True)
    _write_json(gqa / "testdev_balanced_questions.json", {"1": _gqa_entry("n1", "Is it red?", "yes", "Yes, it is.")})
    touch(gqa, "images/n1.jpg")
    textvqa = root / "textvqa"
    textvqa.mkdir()
    _write_json(textvqa / "TextVQA_0.5.1_val.json", {"data": [
        {"question": "what brand?", "image_id": "abc", "question_id": 7, "answers": ["nokia"] * 10}]})  # fmt: skip
    touch(textvqa, "train_images/abc.jpg")
    okvqa = root / "okvqa"
    okvqa.mkdir()
    _write_json(
        okvqa / "OpenEnded_mscoco_val2014_questions.json",
        {"data_subtype": "val2014", "questions": [{"image_id": 5, "question": "Why?", "question_id": 50}]},
    )
    _write_json(okvqa / "mscoco_val2014_annotations.json", {"data_subtype": "val2014", "annotations": [
        {"question_id": 50, "image_id": 5, "answers": [{"answer": "rain", "raw_answer": "rain"}] * 10}]})  # fmt: skip
    touch(okvqa, "val2014/COCO_val2014_000000000005.jpg")
    imu = root / "ego4d_imu"
    imu.mkdir()
    _write_json(
        imu / "imu_2000_cococap.json",
        _coco_layout(
            [{"id": 0, "file_name": "x", "video_uid": "u1", "window_start": 1.0, "window_end": 3.5}], [(0, "walks")]
        ),
    )
    touch(imu, "imu/u1.npy")
    nsd = root / "nsd"
    nsd.mkdir()
    _write_json(nsd / "fmri_eval_cococap.json", _coco_layout([{"id": 3, "file_name": "f/3.npy"}], [(3, "a cat")]))
    touch(nsd, "f/3.npy")

    for name, modality in (("gqa", "image"), ("textvqa", "image"), ("okvqa", "image"),
                           ("ego4d_imu_cap", "imu"), ("nsd_fmri_cap", "fmri")):  # fmt: skip
        prepared = prepare_task(load_task(name), DataDirs(root=root), tmp_path / "scratch")
        assert (prepared.available, prepared.data["kept"], prepared.data["rejected"]) == (1, 1, 0), name
        assert prepared.samples[0].request.media[0].modality == modality
