"""Converters: small files in each source's real layout -> exact records, counts and rejected entries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from onellm.instruct_data.cli import main as data_cli
from onellm.instruct_data.converters import converter_names, get_converter
from onellm.instruct_data.schema import caption_prompt, qa_prompt, read_manifest
from onellm.modalities import marker

IMG, AUD, VID, PT = marker("image"), marker("audio"), marker("video"), marker("point")


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _dicts(path: Path) -> list[dict]:
    return [r.to_dict() for r in read_manifest(path)]


def test_every_format_is_registered():
    assert converter_names() == [
        "audiocaps", "cap3d", "clotho", "clotho_aqa", "coco_captions", "coco_karpathy", "ego4d_imu", "gqa",
        "llava_instruct", "msvd_qa", "nsd_fmri", "okvqa", "onellm_instruct", "pointllm", "textvqa", "vqav2",
    ]  # fmt: skip
    with pytest.raises(KeyError, match="unknown converter 'coco'; known: audiocaps"):
        get_converter("coco")


def test_coco_captions(tmp_path):
    source = _write_json(
        tmp_path / "captions_val2014.json",
        {
            "info": {}, "licenses": [],
            "images": [
                {"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", "height": 360, "width": 640},
                {"id": 522418, "file_name": "COCO_val2014_000000522418.jpg", "height": 480, "width": 640},
                {"id": 184613, "file_name": "COCO_val2014_000000184613.jpg", "height": 336, "width": 500},
            ],
            "annotations": [
                {"image_id": 391895, "id": 770337, "caption": "A man with a red helmet on a small moped.\n"},
                {"image_id": 522418, "id": 681330, "caption": "A woman wearing a net on her head cutting a cake."},
                {"image_id": 391895, "id": 771687, "caption": "Man riding a motor bike on a dirt road."},
                {"image_id": 999999, "id": 1, "caption": "orphan caption"},
            ],
        },
    )  # fmt: skip
    out = tmp_path / "coco.jsonl"
    report = get_converter("coco_captions")(source, out, media_prefix="coco/val2014")
    assert report.kept == 2
    assert report.rejected == [
        ("captions_val2014.json annotations[3] (id 1)", "image_id 999999 is not in 'images'"),
        ("captions_val2014.json images[2] (id 184613)", "no captions"),
    ]
    first = _dicts(out)[0]
    assert first == {
        "id": "coco-391895",
        "inputs": [{"modality": "image", "path": "coco/val2014/COCO_val2014_000000391895.jpg"}],
        "conversation": [
            {"role": "user", "content": caption_prompt("image")},
            {"role": "assistant", "content": "A man with a red helmet on a small moped."},
        ],
        "task": "caption",
        "references": ["A man with a red helmet on a small moped.", "Man riding a motor bike on a dirt road."],
        "meta": {"source": "coco_captions", "image_id": 391895},
    }
    per_caption = get_converter("coco_captions")(source, tmp_path / "each.jsonl", each_caption=True)
    assert [r["id"] for r in _dicts(tmp_path / "each.jsonl")] == ["coco-391895-c0", "coco-391895-c1", "coco-522418-c0"]
    assert per_caption.kept == 3
    with pytest.raises(ValueError, match="expected a COCO captions file with keys \\['images', 'annotations'\\]"):
        get_converter("coco_captions")(_write_json(tmp_path / "bad.json", {"questions": []}), out)


def test_coco_karpathy(tmp_path):
    def image(cocoid, split, raws, filepath="val2014"):
        sentences = [
            {"tokens": raw.lower().split(), "raw": raw, "imgid": cocoid, "sentid": i} for i, raw in enumerate(raws)
        ]
        return {
            "filepath": filepath,
            "sentids": list(range(len(raws))),
            "filename": f"COCO_{filepath}_{cocoid:012d}.jpg",
            "imgid": cocoid,
            "split": split,
            "sentences": sentences,
            "cocoid": cocoid,
        }

    source = _write_json(
        tmp_path / "dataset_coco.json",
        {"dataset": "coco", "images": [
            image(391895, "test", ["A man with a red helmet on a small moped.", "Man riding a motor bike."]),
            image(9, "train", ["Closeup of bins of food."], filepath="train2014"),
            image(42, "test", []),
            image(7, "restval", ["A cat."]),
        ]},
    )  # fmt: skip
    report = get_converter("coco_karpathy")(source, tmp_path / "test.jsonl", media_prefix="coco")
    assert (report.kept, report.skipped) == (
        1,
        {"split 'train' not in ['test']": 1, "split 'restval' not in ['test']": 1},
    )
    assert report.rejected == [("dataset_coco.json images[2] (id 42)", "no sentences with a 'raw' caption")]
    record = _dicts(tmp_path / "test.jsonl")[0]
    assert record["inputs"] == [{"modality": "image", "path": "coco/val2014/COCO_val2014_000000391895.jpg"}]
    assert record["references"] == ["A man with a red helmet on a small moped.", "Man riding a motor bike."]
    train = get_converter("coco_karpathy")(source, tmp_path / "train.jsonl", splits="train,restval")
    assert train.kept == 2 and [r["id"] for r in _dicts(tmp_path / "train.jsonl")] == ["coco-9", "coco-7"]
    with pytest.raises(ValueError, match="unknown \\['tset'\\]"):
        get_converter("coco_karpathy")(source, tmp_path / "x.jsonl", splits="tset")


def test_vqav2(tmp_path):
    answers = ["down", "down", "at table", "skateboard", "down", "table", "down", "down", "down", "down"]
    questions = _write_json(
        tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
        {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
         "questions": [
             {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
             {"image_id": 262148, "question": "What is he on top of?", "question_id": 262148001},
             {"image_id": 393225, "question": "Is the bowl full?", "question_id": 393225000},
         ]},
    )  # fmt: skip
    annotations = _write_json(
        tmp_path / "v2_mscoco_val2014_annotations.json",
        {"info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco", "annotations": [
            {"question_type": "none of the above", "multiple_choice_answer": "down", "image_id": 262148,
             "answer_type": "other", "question_id": 262148000,
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]},
            {"question_type": "what is", "multiple_choice_answer": "", "image_id": 262148, "answer_type": "other",
             "question_id": 262148001, "answers": [{"answer": "table", "answer_confidence": "yes", "answer_id": 1}]},
            {"question_type": "is the", "multiple_choice_answer": "yes", "image_id": 1, "answer_type": "yes/no",
             "question_id": 555, "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}]},
        ]},
    )  # fmt: skip
    out = tmp_path / "vqa.jsonl"
    report = get_converter("vqav2")(questions, annotations, out, media_prefix="coco/val2014")
    assert report.kept == 1
    assert report.rejected == [
        ("v2_OpenEnded_mscoco_val2014_questions.json questions[1] (id 262148001)", "empty multiple_choice_answer"),
        ("v2_OpenEnded_mscoco_val2014_questions.json questions[2] (id 393225000)",
         "no annotation with question_id 393225000 in v2_mscoco_val2014_annotations.json"),
        ("v2_mscoco_val2014_annotations.json annotations[2] (id 555)",
         "no question with this id in v2_OpenEnded_mscoco_val2014_questions.json"),
    ]  # fmt: skip
    assert _dicts(out) == [
        {
            "id": "vqav2-262148000",
            "inputs": [{"modality": "image", "path": "coco/val2014/COCO_val2014_000000262148.jpg"}],
            "conversation": [
                {"role": "user", "content": qa_prompt("image", "Where is he looking?")},
                {"role": "assistant", "content": "down"},
            ],
            "task": "qa",
            "references": answers,
            "meta": {"source": "vqav2", "question_id": 262148000, "image_id": 262148,
                     "question_type": "none of the above", "answer_type": "other"},
        }
    ]  # fmt: skip


def test_llava_instruct(tmp_path):
    source = _write_json(
        tmp_path / "llava_v1_5_mix665k.json",
        [
            {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
            {"id": "i6IyJda_0", "model": "", "conversations": [
                {"from": "human", "value": "How to tell if a customer segment is well segmented?"},
                {"from": "gpt", "value": "Check homogeneity, distinctiveness and stability."}]},
            {"id": "000000052846", "image": "coco/train2017/000000052846.jpg", "conversations": [
                {"from": "human", "value": "Where is the cat positioned?"},
                {"from": "gpt", "value": "On the laptop."}]},
            {"id": "bad_role", "image": "x.jpg", "conversations": [
                {"from": "system", "value": "<image> hi"}, {"from": "gpt", "value": "yo"}]},
            {"id": "ends_human", "image": "y.jpg", "conversations": [
                {"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hey"}, {"from": "human", "value": "?"}]},
        ],
    )  # fmt: skip
    out = tmp_path / "llava.jsonl"
    report = get_converter("llava_instruct")(source, out, media_prefix="llava")
    assert report.kept == 2
    assert [where for where, _ in report.rejected] == [
        "llava_v1_5_mix665k.json entries[2] (id 000000052846)",
        "llava_v1_5_mix665k.json entries[3] (id bad_role)",
        "llava_v1_5_mix665k.json entries[4] (id ends_human)",
    ]
    reasons = [reason for _, reason in report.rejected]
    assert (
        reasons[0]
        == "entry has image 'coco/train2017/000000052846.jpg' but its human turns hold 0 <image> token(s), expected 1"
    )
    assert reasons[1].startswith("conversations[0].from 'system' is not one of")
    assert "conversation ends with a user turn" in reasons[2]
    first, text_only = _dicts(out)
    assert first["id"] == "llava-000000033471" and first["task"] == "chat"
    assert first["inputs"] == [{"modality": "image", "path": "llava/coco/train2017/000000033471.jpg"}]
    assert first["conversation"][0] == {
        "role": "user",
        "content": f"{IMG}\nWhat are the colors of the bus in the image?",
    }
    assert [t["role"] for t in first["conversation"]] == ["user", "assistant", "user", "assistant"]
    assert text_only["inputs"] == [] and text_only["id"] == "llava-i6IyJda_0"


def test_clotho(tmp_path):
    header = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
    rows = [
        ["Distorted AM Radio noise.wav", "A radio dial being turned, with static.", "Static, then a voice, on a radio.",
         "A person tunes a radio, through static.", "Radio static, buzzing, changing.", "A radio is being tuned."],
        ["Footsteps, gravel.wav", "Someone walks on gravel.", "", "Feet crunch, on stones.", "", ""],
        ["empty.wav", "", "", "", "", ""],
    ]  # fmt: skip
    source = _write_csv(tmp_path / "clotho_captions_evaluation.csv", [header, *rows])
    out = tmp_path / "clotho.jsonl"
    report = get_converter("clotho")(source, out, media_prefix="clotho/evaluation")
    assert report.kept == 2 and report.rejected == [("clotho_captions_evaluation.csv:4", "all five captions are empty")]
    radio, steps = _dicts(out)
    assert radio["id"] == "clotho-Distorted AM Radio noise.wav"
    assert radio["inputs"] == [{"modality": "audio", "path": "clotho/evaluation/Distorted AM Radio noise.wav"}]
    assert radio["conversation"][0]["content"] == caption_prompt("audio")
    assert radio["conversation"][1]["content"] == "A radio dial being turned, with static."
    assert radio["references"] == rows[0][1:]
    assert steps["references"] == ["Someone walks on gravel.", "Feet crunch, on stones."]
    with pytest.raises(ValueError, match="missing column\\(s\\) \\['caption_5'\\]"):
        get_converter("clotho")(_write_csv(tmp_path / "bad.csv", [header[:-1], rows[0][:-1]]), out)


def test_audiocaps(tmp_path):
    source = _write_csv(
        tmp_path / "test.csv",
        [
            ["audiocap_id", "youtube_id", "start_time", "caption"],
            ["103549", "7fmOlUlwoNg", "20", "Constant rattling noise and sharp vibrations"],
            ["103548", "7fmOlUlwoNg", "20", "A rattling and vibrating engine"],
            ["97151", "-AheI8Epim4", "30", "A man speaks, then a drill"],
            ["1", "", "30", "no video"],
            ["2", "abc", "30", ""],
        ],
    )
    out = tmp_path / "audiocaps.jsonl"
    report = get_converter("audiocaps")(source, out, media_prefix="audiocaps/test", file_pattern="Y{youtube_id}.wav")
    assert report.kept == 2
    assert report.rejected == [
        ("test.csv:5", "need a youtube_id and an integer start_time, found '', '30'"),
        ("test.csv:6", "empty caption"),
    ]
    engine, drill = _dicts(out)
    assert engine["id"] == "audiocaps-7fmOlUlwoNg_20"
    assert engine["inputs"] == [{"modality": "audio", "path": "audiocaps/test/Y7fmOlUlwoNg.wav"}]
    assert engine["references"] == ["Constant rattling noise and sharp vibrations", "A rattling and vibrating engine"]
    assert engine["meta"]["audiocap_ids"] == ["103549", "103548"] and drill["references"] == [
        "A man speaks, then a drill"
    ]
    with pytest.raises(ValueError, match="may only use the fields"):
        get_converter("audiocaps")(source, out, file_pattern="{ytid}.wav")


def test_clotho_aqa(tmp_path):
    source = _write_csv(
        tmp_path / "clotho_aqa_test.csv",
        [
            ["file_name", "QuestionText", "answer", "confidence"],
            ["birds.wav", "Are birds chirping?", "yes", "yes"],
            ["birds.wav", "Are birds chirping?", "no", "maybe"],
            ["birds.wav", "Are birds chirping?", "yes", "yes"],
            ["birds.wav", "What is making the sound?", "bird", "yes"],
            ["birds.wav", "What is making the sound?", "birds", "yes"],
            ["rain.wav", "Is it raining?", "", "yes"],
        ],
    )
    out = tmp_path / "aqa.jsonl"
    report = get_converter("clotho_aqa")(source, out, media_prefix="clotho_aqa/audio_files")
    assert report.kept == 2 and report.rejected == [("clotho_aqa_test.csv:7", "empty answer")]
    chirp, what = _dicts(out)
    assert chirp == {
        "id": "clothoaqa-birds.wav-q0",
        "inputs": [{"modality": "audio", "path": "clotho_aqa/audio_files/birds.wav"}],
        "conversation": [
            {"role": "user", "content": qa_prompt("audio", "Are birds chirping?")},
            {"role": "assistant", "content": "yes"},
        ],
        "task": "qa",
        "references": ["yes", "no", "yes"],
        "meta": {"source": "clotho_aqa", "file_name": "birds.wav", "confidence": ["yes", "maybe", "yes"]},
    }
    assert what["id"] == "clothoaqa-birds.wav-q1" and what["conversation"][1]["content"] == "bird"  # tie -> first


def test_msvd_qa(tmp_path):
    qa = _write_json(
        tmp_path / "test_qa.json",
        [
            {"answer": "man", "id": 0, "question": "who is pouring water into a pan?", "video_id": 1},
            {"answer": "pour", "id": 1, "question": "what is the man doing?", "video_id": 2},
            {"answer": "dog", "id": 2, "question": "what is running?", "video_id": 999},
        ],
    )
    mapping = tmp_path / "youtube_mapping.txt"
    mapping.write_text("-4wsuPCjDBc_5_15 vid1\nbroken line without id\n-7KMZQEsJW4_205_208 vid2\n")
    out = tmp_path / "msvd.jsonl"
    report = get_converter("msvd_qa")(qa, mapping, out, media_prefix="msvd/YouTubeClips")
    assert report.kept == 2
    assert report.rejected == [
        ("youtube_mapping.txt:2", "expected '<clip name> vid<N>', found 'broken line without id'"),
        ("test_qa.json entries[2] (id 2)", "video_id 999 is not in youtube_mapping.txt"),
    ]
    first, second = _dicts(out)
    assert first == {
        "id": "msvdqa-0",
        "inputs": [{"modality": "video", "path": "msvd/YouTubeClips/-4wsuPCjDBc_5_15.avi"}],
        "conversation": [
            {"role": "user", "content": qa_prompt("video", "who is pouring water into a pan?")},
            {"role": "assistant", "content": "man"},
        ],
        "task": "qa",
        "references": ["man"],
        "meta": {"source": "msvd_qa", "question_id": 0, "video_id": 1, "clip": "-4wsuPCjDBc_5_15"},
    }
    assert second["inputs"][0]["path"].endswith("-7KMZQEsJW4_205_208.avi")


def test_pointllm(tmp_path):
    uid = "8b2b6e4ff4a440c5aba3ab6d1a5e4e55"
    source = _write_json(
        tmp_path / "PointLLM_complex_instruction_70K.json",
        [
            {"object_id": uid, "conversation_type": "detailed_description", "conversations": [
                {"from": "human", "value": "<point>\nOffer a detailed description of this 3D object."},
                {"from": "gpt", "value": "A red wooden chair with four legs."}]},
            {"object_id": uid, "conversation_type": "multi_round", "conversations": [
                {"from": "human", "value": "<point>\nWhat is it?"}, {"from": "gpt", "value": "A chair."},
                {"from": "human", "value": "What color?"}, {"from": "gpt", "value": "Red."}]},
            {"object_id": "f00", "conversations": [
                {"from": "human", "value": "What is this?\n<point>"}, {"from": "gpt", "value": "A lamp."}]},
            {"object_id": "nopoint", "conversation_type": "single_round", "conversations": [
                {"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A cup."}]},
        ],
    )  # fmt: skip
    out = tmp_path / "pointllm.jsonl"
    report = get_converter("pointllm")(source, out, media_prefix="pointllm/8192_npy")
    assert report.kept == 3
    assert report.rejected == [
        (
            "PointLLM_complex_instruction_70K.json entries[3] (id nopoint)",
            "human turns hold 0 <point> token(s), expected 1",
        )
    ]
    detailed, multi, brief = _dicts(out)
    assert [detailed["id"], multi["id"], brief["id"]] == [f"pointllm-{uid}", f"pointllm-{uid}-1", "pointllm-f00"]
    assert detailed["inputs"] == [{"modality": "point", "path": f"pointllm/8192_npy/{uid}_8192.npy"}]
    assert detailed["conversation"][0]["content"] == f"{PT}\nOffer a detailed description of this 3D object."
    assert detailed["task"] == "chat" and len(multi["conversation"]) == 4
    assert brief["task"] == "caption" and brief["references"] == ["A lamp."]  # default type: simple_description
    assert brief["conversation"][0]["content"] == f"What is this?\n{PT}"


def test_cap3d(tmp_path):
    source = _write_csv(
        tmp_path / "Cap3D_automated_Objaverse.csv",
        [
            ["ed51a51909ee46c780db3a85e821feb2", "A green and white rifle."],
            ["9110b606f6c547b2980fcb3c8c4b6a1c", "a small, brown wooden house with a roof, door and windows"],
            ["80d9caaa1fa04502af666135196456e1", ""],
            ["too", "many", "columns"],
        ],
    )
    out = tmp_path / "cap3d.jsonl"
    report = get_converter("cap3d")(source, out, media_prefix="pointllm/8192_npy")
    assert report.kept == 2
    assert report.rejected == [
        ("Cap3D_automated_Objaverse.csv:3", "empty uid or caption"),
        ("Cap3D_automated_Objaverse.csv:4", "expected 2 columns (uid, caption), found 3"),
    ]
    rifle, house = _dicts(out)
    assert rifle == {
        "id": "cap3d-ed51a51909ee46c780db3a85e821feb2",
        "inputs": [{"modality": "point", "path": "pointllm/8192_npy/ed51a51909ee46c780db3a85e821feb2_8192.npy"}],
        "conversation": [
            {"role": "user", "content": caption_prompt("point")},
            {"role": "assistant", "content": "A green and white rifle."},
        ],
        "task": "caption",
        "references": ["A green and white rifle."],
        "meta": {"source": "cap3d"},
    }
    assert house["conversation"][1]["content"] == "a small, brown wooden house with a roof, door and windows"


def test_onellm_instruct(tmp_path):
    convert = get_converter("onellm_instruct")
    audio = _write_json(
        tmp_path / "audiocap_train.json",
        [
            {"id": "Y1", "image": "datasets/InstructionTuning/audio/audioset2/Y1.wav", "conversations": [
                {"from": "human", "value": "Provide a one-sentence caption for the provided audio."},
                {"from": "gpt", "value": "A dog barks."}]},
            {"id": "Y1", "image": "datasets/InstructionTuning/audio/audioset2/Y1.wav", "conversations": [
                {"from": "human", "value": "<image>\nWhat animal?"}, {"from": "assistant", "value": "A dog."}]},
            {"id": "Y2", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        ],
    )  # fmt: skip
    report = convert(audio, tmp_path / "audio.jsonl", modality="audio", media_prefix="/data")
    assert report.kept == 2 and report.rejected == [
        ("audiocap_train.json entries[2] (id Y2)", "audio entry lacks 'image'")
    ]
    caption, question = _dicts(tmp_path / "audio.jsonl")
    assert caption["id"] == "onellm-audio-Y1" and question["id"] == "onellm-audio-Y1-1"
    assert caption["inputs"] == [
        {"modality": "audio", "path": "/data/datasets/InstructionTuning/audio/audioset2/Y1.wav"}
    ]
    assert caption["conversation"][0]["content"] == f"{AUD}\nProvide a one-sentence caption for the provided audio."
    assert question["conversation"] == [
        {"role": "user", "content": f"{AUD}\nWhat animal?"},  # OneLLM's <image> replaced by the audio marker
        {"role": "assistant", "content": "A dog."},
    ]

    depth = _write_json(
        tmp_path / "llava_instruct_50k_depth.json",
        [{"id": "000000442786", "image": "coco/train2017/000000442786.jpg",
          "depth_image": "depth/000000442786.png", "conversations": [
              {"from": "human", "value": "What is in the room?\n<image>"}, {"from": "gpt", "value": "A sofa."}]}],
    )  # fmt: skip
    assert convert(depth, tmp_path / "depth.jsonl", modality="rgbd").kept == 1
    record = _dicts(tmp_path / "depth.jsonl")[0]
    assert record["id"] == "onellm-rgbd-000000442786"
    assert record["inputs"] == [
        {"modality": "depth", "path": "depth/000000442786.png", "rgb_path": "coco/train2017/000000442786.jpg"}
    ]
    assert record["conversation"][0]["content"] == f"{marker('depth')}\nWhat is in the room?"

    imu = _write_json(
        tmp_path / "imu_fixed_50k.json",
        [{"id": 3, "imu_path": "ego4d/imu", "video_uid": "abc-123", "window_start": 10.0, "window_end": 12.5,
          "conversations": [{"from": "human", "value": "Describe the motion."}, {"from": "gpt", "value": "C walks."}]}],
    )  # fmt: skip
    assert convert(imu, tmp_path / "imu.jsonl", modality="imu").kept == 1
    record = _dicts(tmp_path / "imu.jsonl")[0]
    assert record["inputs"] == [{"modality": "imu", "path": "ego4d/imu/abc-123.npy"}]
    assert record["meta"] == {"source": "onellm_instruct", "source_id": 3, "window_start": 10.0, "window_end": 12.5,
                              "layout": "ego4d"}  # fmt: skip
    text = _write_json(tmp_path / "llava_v1_5_mix665k_text.json", [{"id": "t", "conversations": [
        {"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Hello"}]}])  # fmt: skip
    assert convert(text, tmp_path / "text.jsonl", modality="text").kept == 1
    assert _dicts(tmp_path / "text.jsonl")[0]["inputs"] == []
    with pytest.raises(ValueError, match="modality 'rgb' is not text, rgbd, rgbn or one of image"):
        convert(text, tmp_path / "x.jsonl", modality="rgb")


def test_cli_convert_prints_the_report(tmp_path, capsys):
    source = _write_csv(tmp_path / "Cap3D.csv", [["u1", "a chair"], ["u2", ""]])
    out = tmp_path / "out.jsonl"
    code = data_cli(["convert", "cap3d", str(source), "--out", str(out), "--media-prefix", "pc"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.splitlines()[:2] == [
        f"cap3d: kept 1, rejected 1 -> {out}",
        "  rejected Cap3D.csv:2: empty uid or caption",
    ]
    assert _dicts(out)[0]["inputs"] == [{"modality": "point", "path": "pc/u1_8192.npy"}]
    data_cli(
        [
            "convert",
            "onellm_instruct",
            str(_write_json(tmp_path / "a.json", [])),
            "--out",
            str(out),
            "--modality",
            "fmri",
        ]
    )
    assert "onellm_instruct: kept 0, rejected 0" in capsys.readouterr().out
