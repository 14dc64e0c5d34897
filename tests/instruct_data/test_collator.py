"""The collator: labels on assistant turns only, placeholders expanded by the shared count, padding, media order."""

from __future__ import annotations

import pytest
import torch

from onellm.instruct_data.collator import (
    CollateError,
    Collator,
    SystemTurns,
    conversation_segments,
    encode_conversation,
)
from onellm.modeling import IGNORE_INDEX


def conversation(answer="a red circle", question="<image>\nDescribe it."):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def example(processor, media_paths, record_id="r0", answer="a red circle", modality="image"):
    tensor = processor.preprocess(modality, media_paths[modality])
    return {
        "id": record_id,
        "conversation": conversation(answer, f"<{modality}>\nDescribe it."),
        "media": [(modality, tensor)],
        "keys": [f"key-{record_id}"],
    }


def test_labels_cover_exactly_the_answer_and_end_of_turn(tiny):
    _, processor = tiny
    ids, labels = encode_conversation(processor, conversation("a red circle"))
    target = [t for t in labels if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(target) == "a red circle<|im_end|>"
    # everything before the answer is context (-100), including the expanded placeholders
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert all(t == IGNORE_INDEX for t in labels[:first])
    assert ids[first : first + len(target)] == target


def test_training_ids_match_inference_tokenisation(tiny, media_paths):
    """The prompt part of a training row is token for token what the processor builds at inference time, and the
    whole row equals the processor's tokenisation of the rendered conversation."""
    _, processor = tiny
    turns = conversation()
    ids, _ = encode_conversation(processor, turns)
    prompt = processor.apply_chat_template(turns[:1], add_generation_prompt=True)
    served = processor(text=prompt, image=[media_paths["image"]])["input_ids"][0].tolist()
    assert ids[: len(served)] == served
    full = processor.apply_chat_template(turns, add_generation_prompt=False)
    assert ids == processor(text=full, image=[media_paths["image"]])["input_ids"][0].tolist()


def test_each_marker_expands_to_the_shared_count(tiny):
    _, processor = tiny
    turns = [{"role": "user", "content": "<image>\n<audio>\nCompare."}, {"role": "assistant", "content": "same"}]
    ids, _ = encode_conversation(processor, turns)
    n = processor.num_placeholder_tokens
    assert ids.count(processor.token_id("image")) == n
    assert ids.count(processor.token_id("audio")) == n


def test_system_turns_open_a_seeded_share_of_the_rows_and_leave_the_labels_alone(tiny, media_paths):
    _, processor = tiny
    texts = ("You are a helpful assistant.", "Be brief.")
    plain = Collator(processor)
    some = Collator(processor, system_turns=SystemTurns(texts, share=0.3, seed=0))
    picks = [some.system_turns.pick(f"r{i}") for i in range(400)]
    assert 0.22 < sum(p is not None for p in picks) / 400 < 0.38 and {p for p in picks if p} == set(texts)
    assert picks == [SystemTurns(texts, 0.3, 0).pick(f"r{i}") for i in range(400)]  # by seed and record id alone
    assert picks != [SystemTurns(texts, 0.3, 1).pick(f"r{i}") for i in range(400)]
    chosen = next(i for i, p in enumerate(picks) if p is not None)
    row = example(processor, media_paths, record_id=f"r{chosen}")
    ids, labels = some.encode(row)
    system = [{"role": "system", "content": picks[chosen]}, *row["conversation"]]
    assert (ids, labels) == encode_conversation(processor, system)
    assert processor.tokenizer.decode(ids).startswith(f"<|im_start|>system\n{picks[chosen]}<|im_end|>\n")
    plain_ids, plain_labels = plain.encode(row)
    assert [t for t in labels if t != IGNORE_INDEX] == [t for t in plain_labels if t != IGNORE_INDEX]
    assert ids[-len(plain_ids) :] == plain_ids  # the same row after the system turn
    # A row the system turn would push past max_length keeps its place, without the turn.
    tight = Collator(processor, max_length=len(plain_ids), system_turns=SystemTurns(texts, share=1.0))
    assert tight.encode(row) == (plain_ids, plain_labels)


def test_multi_turn_labels_every_assistant_turn_and_no_user_turn(tiny):
    _, processor = tiny
    turns = [
        {"role": "user", "content": "<image>\nWhat shape?"},
        {"role": "assistant", "content": "circle"},
        {"role": "user", "content": "What colour?"},
        {"role": "assistant", "content": "red"},
    ]
    segments = conversation_segments(processor, turns)
    assert [text for text, target in segments if target] == ["circle<|im_end|>", "red<|im_end|>"]
    assert "".join(text for text, _ in segments) == processor.apply_chat_template(turns, add_generation_prompt=False)
    _, labels = encode_conversation(processor, turns)
    decoded = processor.tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert decoded == "circle<|im_end|>red<|im_end|>"
    assert "colour" not in decoded and "shape" not in decoded


def test_batch_is_right_padded_and_media_keep_sample_order(tiny, media_paths):
    _, processor = tiny
    examples = [
        example(processor, media_paths, "short", "red"),
        example(processor, media_paths, "long", "a large blue square on the left and a red circle"),
        example(processor, media_paths, "audio", "a beep", modality="audio"),
    ]
    batch = Collator(processor)(examples)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    lengths = mask.sum(1)
    assert lengths[0] < lengths[1]
    pad = processor.tokenizer.pad_token_id
    assert (ids[0, lengths[0] :] == pad).all() and (labels[0, lengths[0] :] == IGNORE_INDEX).all()
    assert batch["mm_inputs"]["image"].shape == (2, *processor.preprocess("image", media_paths["image"]).shape)
    assert batch["mm_inputs"]["audio"].shape[0] == 1
    assert batch["mm_keys"] == {"image": ["key-short", "key-long"], "audio": ["key-audio"]}
    assert batch["ids"] == ["short", "long", "audio"]
    assert batch["num_label_tokens"] == int((labels[:, 1:] != IGNORE_INDEX).sum())


def test_batch_trains_the_tiny_model(tiny, media_paths):
    model, processor = tiny
    batch = Collator(processor)([example(processor, media_paths, "a"), example(processor, media_paths, "b", "blue")])
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        mm_inputs=batch["mm_inputs"],
    )
    assert torch.isfinite(out.loss)


def test_marker_without_input_is_an_error_naming_the_record(tiny, media_paths):
    _, processor = tiny
    bad = example(processor, media_paths, "orphan")
    bad["media"], bad["keys"] = [], []
    with pytest.raises(CollateError, match="orphan"):
        Collator(processor)([bad])


def test_too_long_is_an_error_not_a_truncation(tiny, media_paths):
    _, processor = tiny
    with pytest.raises(CollateError, match="exceed max_length 10"):
        Collator(processor, max_length=10)([example(processor, media_paths)])


@pytest.mark.parametrize(
    ("lengths", "parts", "starts"),
    [
        ([5, 5, 5, 5], 2, [2]),  # two equal halves
        ([9, 1, 1, 1, 1, 1], 2, [1]),  # the long one alone: 9 | 5
        ([3, 4, 5], 1, []),  # one row: no cut
        ([3, 4], 5, [1]),  # more rows asked than samples: one sample a row
        ([10, 1, 1], 3, [1]),  # a third row would not shorten the longest (10): two rows
        ([2, 8, 2, 2, 2], 3, [1, 2]),  # 2 | 8 | 6
    ],
)
def test_balanced_split_cuts_in_order_for_the_shortest_longest_row(lengths, parts, starts):
    from onellm.instruct_data.collator import balanced_split

    assert balanced_split(lengths, parts) == starts


def test_packed_rows_hold_each_sample_whole_with_its_own_positions(tiny, media_paths):
    """Samples in order, end to end; positions restart at each; the padding is its own run; a sample's first label is
    cleared; segments name the sample of each position; media keep their order."""
    from onellm.instruct_data.collator import pack

    _, processor = tiny
    answers = ["a red circle", "a", "a large blue square on a white background", "two green triangles"]
    examples = [example(processor, media_paths, f"r{i}", answer) for i, answer in enumerate(answers)]
    batch = Collator(processor)(examples)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    packed = pack(batch, 2, processor.tokenizer.pad_token_id)
    rows, width = packed["input_ids"].shape
    assert rows == 2 and width < batch["input_ids"].numel() // 2 + max(lengths)
    assert "attention_mask" not in packed and packed["mm_inputs"] is batch["mm_inputs"]
    seen = []
    for row in range(rows):
        segments = packed["segments"][row]
        for sample in segments[segments >= 0].unique_consecutive().tolist():
            at = (segments == sample).nonzero().squeeze(1)
            n = lengths[sample]
            assert at.tolist() == list(range(int(at[0]), int(at[0]) + n))  # whole and contiguous
            assert torch.equal(packed["input_ids"][row, at], batch["input_ids"][sample, :n])
            assert torch.equal(packed["position_ids"][row, at], torch.arange(n))
            assert packed["labels"][row, at[0]] == IGNORE_INDEX
            assert torch.equal(packed["labels"][row, at[1:]], batch["labels"][sample, 1:n])
            seen.append(sample)
        tail = (segments < 0).nonzero().squeeze(1)
        assert (packed["input_ids"][row, tail] == processor.tokenizer.pad_token_id).all()
        assert (packed["labels"][row, tail] == IGNORE_INDEX).all()
        if tail.numel():
            assert packed["position_ids"][row, tail[0]] == 0  # the padding starts a run of its own
    assert seen == list(range(len(examples)))
    assert torch.equal(packed["padded_labels"], batch["labels"])
