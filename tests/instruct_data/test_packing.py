"""Records that share their inputs merged into multi-turn conversations (``data.turns_per_input``)."""

from __future__ import annotations

import pytest

from onellm.instruct_data.packing import merge_by_input, mergeable
from onellm.instruct_data.schema import Record, caption_prompt, qa_prompt


def single(record_id: str, path: str, prompt: str, answer: str, task: str, modality: str = "image") -> Record:
    return Record.from_dict(
        {
            "id": record_id,
            "inputs": [{"modality": modality, "path": path}],
            "conversation": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "task": task,
        }
    )


def item(name: str, questions: int = 3) -> list[Record]:
    """A caption and ``questions`` QA records about one image, as the synthetic corpus writes them."""
    path = f"media/{name}.png"
    records = [single(name, path, caption_prompt("image"), f"a shape called {name}", "caption")]
    records += [
        single(f"{name}-qa{k}", path, qa_prompt("image", f"Question {k}?"), f"answer {k}", "qa")
        for k in range(questions)
    ]
    return records


def test_records_about_one_input_become_one_conversation_with_one_marker():
    records = item("a") + item("b")
    merged = merge_by_input(records, turns=4, seed=0)
    assert [r.id for r in merged] == ["a+3", "b+3"]
    for record, originals in zip(merged, (records[:4], records[4:]), strict=True):
        record.validate()  # the schema's rules: one marker per input, alternating turns
        user = [t.content for t in record.conversation if t.role == "user"]
        assert user[0].startswith("<image>\n") and not any("<image>" in text for text in user[1:])
        pairs = {
            (u.content.split("\n")[-1], a.content)
            for u, a in zip(record.conversation[::2], record.conversation[1::2], strict=True)
        }
        assert pairs == {(r.conversation[0].content.split("\n")[-1], r.answer) for r in originals}  # nothing lost
        assert record.task == "chat" and sorted(record.meta["merged"]) == sorted(r.id for r in originals)
        assert record.inputs == originals[0].inputs


def test_turn_order_is_shuffled_per_input_and_the_same_for_the_same_seed():
    records = [r for name in "abcdefgh" for r in item(name)]
    first = [m.meta["merged"][0] for m in merge_by_input(records, turns=4, seed=0)]
    assert first == [m.meta["merged"][0] for m in merge_by_input(records, turns=4, seed=0)]
    assert len({name.split("-")[-1] for name in first}) > 1  # the caption does not always come first
    assert first != [m.meta["merged"][0] for m in merge_by_input(records, turns=4, seed=1)]


def test_a_share_of_the_inputs_is_merged_and_the_rest_stays_single():
    records = [r for k in range(200) for r in item(f"i{k}")]  # 200 images, 4 records each
    out = merge_by_input(records, turns=2, seed=0, share=0.5)
    merged = [r for r in out if len(r.conversation) == 4]
    single_ids = {r.id for r in out if len(r.conversation) == 2}
    merged_ids = {i for r in merged for i in r.meta["merged"]}
    assert merged_ids.isdisjoint(single_ids) and len(merged_ids) + len(single_ids) == len(records)  # nothing lost
    inputs = {r.inputs[0].path for r in merged}
    assert 70 <= len(inputs) <= 130 and len(merged) == 2 * len(inputs)  # about half the images, two conversations each
    assert all(r.inputs[0].path not in inputs for r in out if r.id in single_ids)  # an input is merged whole or not
    assert out == merge_by_input(records, turns=2, seed=0, share=0.5)
    assert merge_by_input(records, turns=2, seed=0, share=0.0) == records
    assert all(len(r.conversation) == 4 for r in merge_by_input(records, turns=2, seed=0, share=1.0))
    with pytest.raises(ValueError, match="share"):
        merge_by_input(records, turns=2, seed=0, share=1.5)


def test_groups_larger_than_turns_split_and_turns_one_changes_nothing():
    records = item("a", questions=6)  # 7 records
    assert merge_by_input(records, turns=1, seed=0) == records
    merged = merge_by_input(records, turns=3, seed=0)
    assert [len(r.conversation) // 2 for r in merged] == [3, 3, 1]
    assert merged[-1] is records[-1]  # a group of one stays the record it was
    with pytest.raises(ValueError, match="turns_per_input"):
        merge_by_input(records, turns=0, seed=0)


def test_what_cannot_be_merged_passes_through_and_too_long_merges_stay_single():
    multi = Record.from_dict(
        {
            "id": "chat",
            "inputs": [{"modality": "image", "path": "media/a.png"}],
            "conversation": [
                {"role": "user", "content": "<image>\nHi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Shape?"},
                {"role": "assistant", "content": "circle"},
            ],
        }
    )
    marker_late = single("late", "media/a.png", "Look: <image>", "ok", "qa")
    text_only = Record.from_dict(
        {
            "id": "text",
            "inputs": [],
            "conversation": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        }
    )
    assert not any(mergeable(r) for r in (multi, marker_late, text_only))
    records = [multi, *item("a"), marker_late, text_only, *item("b")]
    merged = merge_by_input(records, turns=4, seed=0, fits=lambda record: not record.id.startswith("b"))
    assert [r.id for r in merged] == ["chat", "a+3", "late", "text", "b", "b-qa0", "b-qa1", "b-qa2"]
