"""The lexical end tag's auxiliary word loss (onellm/train/lexical.py): which tokens are content words, which row's
words each input is taught, that the loss trains the tag, and that a stage with it logs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onellm.modeling import IGNORE_INDEX
from onellm.presets import tiny_tokenizer
from onellm.train.lexical import captured_word_logits, content_word_mask, lexical_loss, word_targets

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def test_content_words_are_whole_words_of_three_letters_without_function_words():
    tokenizer = tiny_tokenizer()
    mask = content_word_mask(tokenizer)
    words = {tokenizer.convert_ids_to_tokens(i) for i in mask.nonzero().squeeze(1).tolist()}
    assert {"Ġsmall", "Ġstar", "Ġcube", "Ġleft"} <= words
    vocab = tokenizer.get_vocab()
    assert {"Ġwhat", "Ġa", "Ġto"} <= set(vocab)  # present in the vocabulary, but not content words
    assert not words & {"Ġwhat", "Ġa", "Ġto"}
    assert all(w.startswith("Ġ") for w in words)


def test_each_input_is_taught_the_content_words_of_its_own_row():
    marker, per_input = 9, 2
    words = torch.zeros(12, dtype=torch.bool)
    words[[3, 4, 5, 6]] = True
    ignore = IGNORE_INDEX
    input_ids = torch.tensor([[marker, marker, 1, 3, 4], [1, 2, 2, 5, 0], [marker, marker, 2, 6, 5]])
    labels = torch.tensor([[ignore, ignore, ignore, 3, 4], [ignore, ignore, ignore, 5, ignore], [ignore] * 3 + [6, 7]])
    targets = word_targets(input_ids, labels, marker, per_input, words)
    assert targets.shape == (2, 12)  # rows 0 and 2 hold one input each; row 1 none
    assert targets[0].nonzero().squeeze(1).tolist() == [3, 4]
    assert targets[1].nonzero().squeeze(1).tolist() == [6]  # 7 is not a content word; 5 is only an input id


def test_the_loss_trains_a_lexical_tag_to_name_its_input():
    from onellm.presets import build_preset

    model, processor = build_preset("tiny", end_tag="lexical", num_experts=1)
    tokenizer = processor.tokenizer
    words = content_word_mask(tokenizer)
    marker = model.config.modality_token_ids["image"]
    per_input = model.num_placeholder_tokens
    # two images, each captioned with its own word
    names = ["Ġstar", "Ġcube"]
    ids = [tokenizer.convert_tokens_to_ids(n) for n in names]
    input_ids = torch.tensor([[marker] * per_input + [i] for i in ids])
    labels = torch.tensor([[IGNORE_INDEX] * per_input + [i] for i in ids])
    from onellm.modalities import get_modality

    image = get_modality("image")
    values = torch.stack([image.dummy_input(**processor.options("image")) for _ in range(2)])
    values[1] = -values[1]  # two different images
    with torch.no_grad():
        features = model.encode("image", values)
    tag = model.projector.heads["image"].lexical_tag
    optimizer = torch.optim.Adam(tag.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        with captured_word_logits(model) as captured:
            model.embed_modality("image", features=features)
        loss = lexical_loss(captured, input_ids, labels, model.config.modality_token_ids, per_input, words)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]
    with captured_word_logits(model) as captured:
        model.embed_modality("image", features=features)
    assert captured["image"][0].argmax(-1).tolist() == ids


def test_a_stage_with_the_word_loss_logs_it_and_one_without_a_lexical_tag_is_refused(
    synth_tiny, tmp_path, quick, accelerator
):
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    lexical = {"init_from": {"preset": "tiny", "preset_args": {"end_tag": "lexical"}, "num_experts": 1}}
    stage = load_stage(
        TINY / "align_image.yaml", quick(synth_tiny, tmp_path / "on", steps=2, **{"train.lexical_loss": 0.5}, **lexical)
    )
    run_stage(stage, accelerator)
    rows = [json.loads(line) for line in (stage.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["lexical_loss"] < 20 for r in rows)

    plain = load_stage(
        TINY / "align_image.yaml", quick(synth_tiny, tmp_path / "off", steps=2, **{"train.lexical_loss": 0.5})
    )
    with pytest.raises(ValueError, match="no lexical end tag"):
        run_stage(plain, accelerator)
