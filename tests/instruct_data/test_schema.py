"""Record schema: dataclass round trips, JSONL manifests, validation messages, datasets.Dataset conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onellm.instruct_data.schema import (
    ModalityInput,
    Record,
    SchemaError,
    Turn,
    caption_prompt,
    check_manifest,
    from_hf_dataset,
    qa_prompt,
    read_manifest,
    record_problems,
    to_hf_dataset,
    write_manifest,
)
from onellm.modalities import marker, modality_names


def _record(**overrides) -> dict:
    data = {
        "id": "synth-image-000012",
        "inputs": [{"modality": "image", "path": "media/image/000012.png"}],
        "conversation": [
            {"role": "user", "content": f"{marker('image')}\nProvide a one-sentence caption for the provided image."},
            {"role": "assistant", "content": "a large red circle on the left"},
        ],
        "task": "caption",
        "references": ["a large red circle on the left", "an image of a large red circle on the left"],
        "meta": {"source": "test"},
    }
    data.update(overrides)
    return data


def _multi() -> Record:
    """Several inputs of several modalities, inline arrays of different ranks, a paired RGB."""
    return Record(
        id="multi-1",
        inputs=[
            ModalityInput("image", path="a.png"),
            ModalityInput("imu", array=[[0.0, 1.0, 2.0, 3.0, 4.0, 5.5]] * 3, sample_rate=50),
            ModalityInput("audio", array=np.linspace(-1, 1, 5)),
            ModalityInput("depth", path="d.png", rgb_path="d_rgb.png"),
            ModalityInput("image", path="b.png"),
        ],
        conversation=[
            Turn("user", f"{marker('image')} then {marker('imu')} and {marker('audio')}"),
            Turn("assistant", "ok"),
            Turn("user", f"{marker('depth')} vs {marker('image')}?"),
            Turn("assistant", "the second"),
        ],
        task="chat",
    )


def test_record_round_trip_through_dict_and_json():
    data = _record()
    record = Record.from_dict(data)
    assert record.inputs[0] == ModalityInput("image", path="media/image/000012.png")
    assert record.answer == "a large red circle on the left"
    assert record.to_dict() == data
    multi = _multi()
    again = Record.from_dict(json.loads(json.dumps(multi.to_dict())))
    assert again.to_dict() == multi.to_dict()
    assert again.inputs[2].array == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])  # ndarray written as a list
    assert "task" not in Record("x", [], [Turn("user", "hi"), Turn("assistant", "yo")]).to_dict()


def test_prompts_use_the_modality_marker():
    assert caption_prompt("image") == f"{marker('image')}\nProvide a one-sentence caption for the provided image."
    assert caption_prompt("point").endswith("for the provided point cloud.")
    assert qa_prompt("audio", " How many beeps? ") == (
        f"{marker('audio')}\nHow many beeps? Answer the question using a single word or phrase."
    )


def test_the_schema_knows_the_six_beyond_onellms_eight():
    """Nouns, markers and allowed keys come from each modality's file: nothing in the schema names them."""
    nouns = {
        "xray": "X-ray image", "infrared": "infrared image", "hyperspectral": "hyperspectral image",
        "timeseries": "time series", "tabular": "table row", "graph": "graph",
    }  # fmt: skip
    for modality, noun in nouns.items():
        assert caption_prompt(modality) == f"<{modality}>\nProvide a one-sentence caption for the provided {noun}."
        record = _record(
            inputs=[{"modality": modality, "path": f"media/{modality}/000001.json"}],
            conversation=[{"role": "user", "content": caption_prompt(modality)}, {"role": "assistant", "content": "x"}],
        )
        assert record_problems(record) == []
    timed = _record(inputs=[{"modality": "timeseries", "path": "s.csv", "sample_rate": 10}])
    assert any("sample_rate is only allowed for audio, imu inputs" in p for p in record_problems(timed))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": [{"modality": "imgae", "path": "x.png"}]}, "inputs[0].modality 'imgae' is not a known modality"),
        ({"inputs": [{"modality": "image"}]}, "inputs[0] needs exactly one of 'path' or 'array', found neither"),
        (
            {"inputs": [{"modality": "image", "path": "x", "array": [1]}]},
            "exactly one of 'path' or 'array', found both",
        ),
        ({"inputs": [{"modality": "image", "path": "x", "fps": 3}]}, "inputs[0] has unknown key(s) ['fps']"),
        ({"inputs": [{"modality": "image", "path": "x", "sample_rate": 5}]}, "inputs[0].sample_rate is only allowed"),
        ({"inputs": [{"modality": "image", "path": "x", "rgb_path": "y"}]}, "inputs[0].rgb_path is only allowed"),
        ({"inputs": [{"modality": "image", "array": [[1, 2], [3]]}]}, "inputs[0].array is not a rectangular array"),
        ({"inputs": [{"modality": "image", "array": [1.0, float("nan")]}]}, "inputs[0].array has 1 NaN/inf value(s)"),
        ({"inputs": []}, "conversation has 1 <image> placeholder(s) but inputs has 0 image input(s)"),
        ({"id": ""}, "id must be a non-empty string"),
        ({"conversations": []}, "unknown key(s) ['conversations']"),
        ({"task": "captioning"}, "task 'captioning' is not one of caption, qa, mc, chat"),
        ({"references": ["ok", " "]}, "references[1] must be a non-empty string"),
        ({"meta": "source"}, "meta must be a JSON object"),
    ],
)
def test_each_problem_names_its_field(change, message):
    problems = record_problems(_record(**change))
    assert any(message.replace("<image>", marker("image")) in p for p in problems), problems


def test_conversation_rules():
    image = marker("image")
    user_first = _record(conversation=[{"role": "assistant", "content": "hi"}, {"role": "user", "content": image}])
    assert "conversation[0].role is 'assistant', expected 'user'" in "; ".join(record_problems(user_first))
    ends_user = _record(conversation=[{"role": "user", "content": image}])
    assert any("ends with a user turn" in p for p in record_problems(ends_user))
    empty = _record(conversation=[{"role": "user", "content": image}, {"role": "assistant", "content": "  "}])
    assert "conversation[1].content: empty answer" in record_problems(empty)
    leaked = _record(conversation=[{"role": "user", "content": image}, {"role": "assistant", "content": image}])
    assert any("conversation[1].content contains the placeholder" in p for p in record_problems(leaked))
    two_markers = _record(conversation=[{"role": "user", "content": image * 2}, {"role": "assistant", "content": "x"}])
    assert any("has 2 " in p and "inputs has 1 image" in p for p in record_problems(two_markers))
    assert record_problems(_multi().to_dict()) == []
    text_only = {
        "id": "t",
        "inputs": [],
        "conversation": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    }
    assert record_problems(text_only) == []


def test_manifest_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "sub" / "train.jsonl"
    records = [Record.from_dict(_record()), _multi()]
    assert write_manifest(path, records) == 2
    assert [r.to_dict() for r in read_manifest(path)] == [r.to_dict() for r in records]
    first_bytes = path.read_bytes()
    assert first_bytes.count(b"\n") == 2

    def failing():
        yield records[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_manifest(path, failing())
    assert path.read_bytes() == first_bytes  # the old manifest survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.jsonl"]  # no temp file left behind


def test_manifest_errors_name_file_line_id_and_field(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps(_record())
    bad = json.dumps(_record(id="synth-image-000013", inputs=[{"modality": "imgae", "path": "x.png"}]))
    path.write_text(good + "\n\n" + bad + "\n" + "{not json\n" + good + "\n")
    with pytest.raises(SchemaError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(
        "train.jsonl:3 (id synth-image-000013): inputs[0].modality 'imgae' is not a known modality"
    )
    assert f"(known: {', '.join(modality_names())})" in message
    assert info.value.where == "train.jsonl:3" and info.value.record_id == "synth-image-000013"
    problems = check_manifest(path)
    assert len(problems) == 3
    assert problems[1].startswith("train.jsonl:4: not valid JSON")
    assert (
        problems[2]
        == "train.jsonl:5 (id synth-image-000012): id 'synth-image-000012' is already used on line 1; ids must be unique"
    )
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        read_manifest(tmp_path / "missing.jsonl")


def test_hf_dataset_round_trip():
    records = [Record.from_dict(_record()), _multi(), Record("t", [], [Turn("user", "hi"), Turn("assistant", "yo")])]
    dataset = to_hf_dataset(records)
    assert len(dataset) == 3
    row = dataset[1]
    assert row["inputs"][1]["array_shape"] == [3, 6] and row["inputs"][2]["array_shape"] == [5]
    assert row["inputs"][0]["path"] == "a.png" and row["meta"] is None
    assert json.loads(dataset[0]["meta"]) == {"source": "test"}
    back = from_hf_dataset(dataset)
    assert [r.to_dict() for r in back] == [
        {**r.to_dict(), "inputs": [json.loads(json.dumps(i.to_dict())) for i in r.inputs]} for r in records
    ]
    assert back[1].inputs[1].sample_rate == 50 and isinstance(back[1].inputs[1].sample_rate, int)


def test_record_validate_catches_code_built_records():
    record = Record("x", [ModalityInput("audio", path="a.wav")], [Turn("user", "no marker"), Turn("assistant", "y")])
    with pytest.raises(SchemaError, match=r"id x: conversation has 0 <audio> placeholder\(s\) but inputs has 1"):
        record.validate()
