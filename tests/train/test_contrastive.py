"""The soft-token/text contrastive loss (onellm/train/contrastive.py): which pairs count as matches, that it is low
when each input's soft tokens point at its own words and high when they point at another's, that it trains a
projector to tell its inputs apart, and that a stage with it logs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onellm.modeling import IGNORE_INDEX
from onellm.train.contrastive import captured_soft_tokens, contrastive_loss, row_texts

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
MARKER, PER_INPUT = 9, 1


def rows(answers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per input: the marker, then the answer token (labelled)."""
    input_ids = torch.tensor([[MARKER, a] for a in answers])
    labels = torch.tensor([[IGNORE_INDEX, a] for a in answers])
    return input_ids, labels


def loss_of(tokens, answers, keys, embeddings, words, temperature=0.1):
    input_ids, labels = rows(answers)
    captured = {"image": [tokens]}
    texts = row_texts(captured, input_ids, labels, {"image": MARKER}, PER_INPUT, words, embeddings.shape[0])
    return contrastive_loss(captured, {"image": keys}, texts, embeddings, temperature)


@pytest.fixture
def table():
    torch.manual_seed(0)
    embeddings = torch.randn(12, 16)
    words = torch.zeros(12, dtype=torch.bool)
    words[[3, 4, 5]] = True  # 6 is an answer without content words ("yes", "2")
    return embeddings, words


def test_soft_tokens_that_point_at_their_own_words_score_low_and_swapped_ones_high(table):
    embeddings, words = table
    answers = [3, 4, 5]
    own = embeddings[answers].unsqueeze(1).repeat(1, 4, 1)  # [3 inputs, 4 tokens, D]
    keys = ["a", "b", "c"]
    matched = loss_of(own, answers, keys, embeddings, words)
    swapped = loss_of(own[[1, 2, 0]], answers, keys, embeddings, words)
    assert matched < 0.05 < 2.0 < swapped


def test_the_same_input_or_the_same_words_are_matches_and_wordless_rows_take_no_part(table):
    embeddings, words = table
    tokens = torch.randn(4, 4, 16)
    # rows 0 and 1: one image asked two questions; rows 2 and 3: two images both answered with word 5
    full = loss_of(tokens, [3, 4, 5, 5], ["a", "a", "b", "c"], embeddings, words)
    # by hand: cosine / temperature, matches = same key or same word
    image = torch.nn.functional.normalize(tokens.mean(1), dim=-1)
    text = torch.nn.functional.normalize(embeddings[[3, 4, 5, 5]], dim=-1)
    logits = image @ text.T / 0.1
    match = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)

    def nll(lg, m):
        return (lg.logsumexp(1) - lg.masked_fill(~m, float("-inf")).logsumexp(1)).mean()

    assert torch.allclose(full, (nll(logits, match) + nll(logits.T, match.T)) / 2, atol=1e-5)
    # a row whose answer has no content word leaves the others' loss as it was
    with_wordless = loss_of(
        torch.cat([tokens, torch.randn(1, 4, 16)]), [3, 4, 5, 5, 6], list("aabcd"), embeddings, words
    )
    assert torch.allclose(with_wordless, full, atol=1e-6)
    # fewer than two rows with words, or one text for all: nothing to contrast
    assert loss_of(tokens[:2], [6, 6], ["a", "b"], embeddings, words) is None
    assert loss_of(tokens[:2], [5, 5], ["a", "b"], embeddings, words) is None


def test_the_loss_trains_a_projector_to_tell_its_inputs_apart():
    from onellm.presets import build_preset

    torch.manual_seed(0)
    model, processor = build_preset("tiny", num_experts=1)
    tokenizer = processor.tokenizer
    from onellm.train.lexical import content_word_mask

    words = content_word_mask(tokenizer)
    names = ["Ġstar", "Ġcube", "Ġleft", "Ġsmall"]
    answers = [tokenizer.convert_tokens_to_ids(n) for n in names]
    marker = model.config.modality_token_ids["image"]
    per_input = model.num_placeholder_tokens
    input_ids = torch.tensor([[marker] * per_input + [a] for a in answers])
    labels = torch.tensor([[IGNORE_INDEX] * per_input + [a] for a in answers])
    images = torch.randn(4, *processor.dummy_input("image").shape)
    params = [p for p in model.projector.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(40):
        with captured_soft_tokens(model) as captured:
            model.embed_modality("image", images)
        vocab = model.word_embeddings()
        texts = row_texts(
            captured, input_ids, labels, model.config.modality_token_ids, per_input, words, vocab.shape[0]
        )
        loss = contrastive_loss(captured, {"image": list("abcd")}, texts, vocab, 0.07)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 1.0 and losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("text", ["row", "input"])
def test_a_stage_with_the_contrastive_loss_logs_it(synth_tiny, tmp_path, quick, accelerator, text):
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    more = {"train.contrastive_loss": 0.2, "train.batch_size": 8, "train.contrastive_text": text}
    stage = load_stage(TINY / "align_image.yaml", quick(synth_tiny, tmp_path / "on", steps=2, **more))
    run_stage(stage, accelerator)
    rows = [json.loads(line) for line in (stage.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["contrastive_loss"] < 10 for r in rows)


def test_an_inputs_description_gathers_what_every_record_says_about_it():
    from types import SimpleNamespace as NS

    from onellm.presets import tiny_tokenizer
    from onellm.train.contrastive import described_by_input, input_texts
    from onellm.train.lexical import content_word_mask

    tokenizer = tiny_tokenizer()

    class Dataset:  # what described_by_input reads of a ManifestDataset
        records = [
            NS(inputs=[NS(modality="image", path=path)], conversation=[NS(role="assistant", content=answer)])
            for path, answer in [
                ("a.png", "a small star"),
                ("a.png", "on the left"),
                ("a.png", "blue"),
                ("b.png", "a cube"),
            ]
        ]

        def __len__(self):
            return len(self.records)

        def input_keys(self, index):
            return [f"key-{self.records[index].inputs[0].path}"]

    words = content_word_mask(tokenizer)
    described = described_by_input(Dataset(), tokenizer, {"image": words})
    named = {k: {tokenizer.convert_ids_to_tokens(int(i)) for i in v} for k, v in described["image"].items()}
    # a one-word answer right after the chat template's "assistant\n" tokenizes without the word-start marker, so it
    # is no content word ("blue" here; BENCHMARKS.md, "The first token")
    assert named == {"key-a.png": {"Ġsmall", "Ġstar", "Ġleft"}, "key-b.png": {"Ġcube"}}
    texts = input_texts({"image": [None]}, {"image": ["key-b.png", "key-a.png", "key-c.png"]}, described, len(words))
    assert texts["image"].sum(dim=1).tolist() == [1, 3, 0]  # an input no record describes takes no part
