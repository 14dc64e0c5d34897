"""The lexical end tag's auxiliary word loss (onellm/train/lexical.py): which tokens are content words, which row's
words each input is taught, that the loss trains the tag, and that a stage with it logs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from onellm.modeling import IGNORE_INDEX
from onellm.presets import tiny_tokenizer
from onellm.train.lexical import (
    captured_word_logits,
    content_word_mask,
    distinctive_words,
    lexical_loss,
    said_by_input,
    word_targets,
)

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
    assert captured[("image", 0)][0].argmax(-1).tolist() == ids


def test_region_words_are_a_multiple_instance_loss_over_the_regions():
    marker, per_input, vocab = 9, 2, 6
    words = torch.ones(vocab, dtype=torch.bool)
    input_ids = torch.tensor([[marker, marker, 1, 1]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3]])  # the row says words 2 and 3
    sure, unsure = torch.full((vocab,), -9.0), torch.zeros(vocab)
    one_each = torch.stack([sure.index_fill(0, torch.tensor([2]), 9.0), sure.index_fill(0, torch.tensor([3]), 9.0)])

    def loss(logits):
        return float(lexical_loss({("image", 1): [logits]}, input_ids, labels, {"image": marker}, per_input, words))

    # one region naming each word is (almost) no loss; one tag must split its probability between the two words
    assert loss(one_each.unsqueeze(0)) < 1e-3
    split = sure.index_fill(0, torch.tensor([2, 3]), 9.0)
    assert loss(split.unsqueeze(0)) == pytest.approx(-torch.log(torch.tensor(0.5)).item(), abs=1e-3)
    # with one region the noisy-OR is the plain -log p; regions that name nothing in particular only add a little
    assert loss(split.view(1, 1, -1)) == pytest.approx(loss(split.unsqueeze(0)), abs=1e-4)
    assert loss(torch.stack([split, unsure, unsure]).unsqueeze(0)) < loss(split.unsqueeze(0))
    # no region naming the words is a large loss
    assert loss(torch.stack([sure.index_fill(0, torch.tensor([4]), 9.0)] * 2).unsqueeze(0)) > 10


def test_region_words_learn_which_region_holds_which_word():
    """Two regions, two words, one caption naming both: the loss teaches each region one word (not both to each)."""
    from onellm.projectors.upm import RegionWords

    torch.manual_seed(0)
    vocab = torch.randn(50, 16)
    words = torch.zeros(50, dtype=torch.bool)
    words[10:20] = True
    regions = RegionWords(8, 16)
    mixed = torch.randn(4, 2, 8)  # 4 inputs x 2 regions; input i's region r shows word 10 + 2 * i + r
    marker, per_input = 49, 2
    input_ids = torch.full((4, per_input + 2), 1)
    input_ids[:, :per_input] = marker
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, per_input:] = torch.tensor([[10 + 2 * i, 11 + 2 * i] for i in range(4)])
    optimizer = torch.optim.Adam(regions.parameters(), lr=5e-2)
    for _ in range(150):
        _, logits = regions(mixed, vocab)
        loss = lexical_loss({("image", 1): [logits]}, input_ids, labels, {"image": marker}, per_input, words)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out, logits = regions(mixed, vocab)
    named = logits.argmax(-1)  # [4, 2]
    assert all(set(named[i].tolist()) == {10 + 2 * i, 11 + 2 * i} for i in range(4))
    assert out.shape == (4, 2, 16)
    assert out.pow(2).mean(-1).sqrt().sub(regions.gain.abs()).abs().max() < 1e-4  # at the soft tokens' scale


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
    with pytest.raises(ValueError, match="no word tags"):
        run_stage(plain, accelerator)


def test_two_word_slots_are_taught_one_distinct_word_each():
    marker, per_input, vocab = 9, 2, 6
    words = torch.ones(vocab, dtype=torch.bool)
    input_ids = torch.tensor([[marker, marker, 1, 1]])
    sure = torch.full((vocab,), -9.0)

    def named(*ids):
        return sure.index_fill(0, torch.tensor(ids), 9.0)

    def value(start, end, said=(2, 3), distinctive=None):
        labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, *said]])
        captured = {("image", 0): [start.unsqueeze(0)], ("image", 1): [end.unsqueeze(0)]}
        return lexical_loss(captured, input_ids, labels, {"image": marker}, per_input, words, {"image": 2}, distinctive)

    def loss(*args, **kwargs):
        return float(value(*args, **kwargs))

    assert loss(named(2), named(3)) < 1e-3 and loss(named(3), named(2)) < 1e-3  # either slot may take either word
    # a blend of both words in each slot costs what a coin toss does; both slots naming one word leaves the other out
    assert loss(named(2, 3), named(2, 3)) == pytest.approx(-torch.log(torch.tensor(0.5)).item(), abs=1e-3)
    assert loss(named(2), named(2)) > 8
    # one word in the row (a one-word answer): both slots name it; a slot left free would name a random blend
    assert loss(named(2), named(2), said=(2, IGNORE_INDEX)) < 1e-3
    assert loss(named(2), named(5), said=(2, IGNORE_INDEX)) > 8
    # words left out of the modality's distinctive ones are not taught: here the row then teaches nothing
    assert value(named(5), named(5), distinctive={"image": torch.arange(vocab) == 4}) is None
    assert loss(named(3), named(3), distinctive={"image": torch.arange(vocab) >= 3}) < 1e-3  # only word 3 counts
    # the same logits as separate tags (no slots): each is taught both words, as the single end tag is
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3]])
    captured = {("image", 0): [named(2).unsqueeze(0)], ("image", 1): [named(3).unsqueeze(0)]}
    assert float(lexical_loss(captured, input_ids, labels, {"image": marker}, per_input, words)) > 8


def test_distinctive_words_leave_out_what_most_inputs_say():
    from instruct_data.schema import ModalityInput, Record, Turn

    tokenizer = tiny_tokenizer()
    words = content_word_mask(tokenizer)
    captions = ["a small green star", "a small orange star", "a large sphere at the top", "a large cube on the left"]
    records = []
    for n, caption in enumerate(captions):
        item = [ModalityInput("fmri", path=f"{n}.npy")]
        records.append(Record(f"c{n}", item, [Turn("user", "<fmri>"), Turn("assistant", caption)]))
        records.append(Record(f"q{n}", item, [Turn("user", "<fmri>\nstar?"), Turn("assistant", "yes star")]))
    said = said_by_input(records, tokenizer)["fmri"]
    assert list(said) == ["0.npy", "1.npy", "2.npy", "3.npy"]  # one entry per input: its caption and its answer
    ids = [set(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in ("a small green star", "yes star")]
    assert said["0.npy"] == ids[0] | ids[1]
    kept = distinctive_words(records, tokenizer, words, share=0.45)["fmri"]
    names = {tokenizer.convert_ids_to_tokens(i) for i in kept.nonzero().squeeze(1).tolist()}
    # "star" is in every input (the question rows), "small" and "large" in half; the rest in one each
    assert {"Ġgreen", "Ġorange", "Ġsphere", "Ġtop", "Ġcube", "Ġleft"} <= names
    assert not names & {"Ġstar", "Ġsmall", "Ġlarge"}
    assert not bool((kept & ~words).any())


def test_two_word_slots_learn_the_two_words_of_their_input():
    """Each input's caption names two words; trained by the loss, its start and end tags name one each (not a blend)."""
    from onellm.modalities import get_modality
    from onellm.presets import build_preset
    from onellm.train.lexical import word_slots

    torch.manual_seed(0)
    model, processor = build_preset("tiny", modalities=["image"], end_tag="lexical", start_tag="lexical", num_experts=1)
    tokenizer = processor.tokenizer
    words = content_word_mask(tokenizer)
    marker, per_input = model.config.modality_token_ids["image"], model.num_placeholder_tokens
    said = [[tokenizer.convert_tokens_to_ids(n) for n in pair] for pair in (["Ġstar", "Ġgreen"], ["Ġcube", "Ġorange"])]
    input_ids = torch.tensor([[marker] * per_input + pair for pair in said])
    labels = torch.tensor([[IGNORE_INDEX] * per_input + pair for pair in said])
    image = get_modality("image")
    values = torch.stack([image.dummy_input(**processor.options("image")) for _ in range(2)])
    values[1] = -values[1]
    with torch.no_grad():
        features = model.encode("image", values)
    head = model.projector.heads["image"]
    assert word_slots(model) == {"image": 2}
    optimizer = torch.optim.Adam([p for tag in head.word_tags() for p in tag.parameters()], lr=1e-2)
    for _ in range(60):
        with captured_word_logits(model) as captured:
            model.embed_modality("image", features=features)
        loss = lexical_loss(
            captured, input_ids, labels, model.config.modality_token_ids, per_input, words, {"image": 2}
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad(), captured_word_logits(model) as captured:
        model.embed_modality("image", features=features)
    start, end = captured[("image", 0)][0].softmax(-1), captured[("image", 1)][0].softmax(-1)
    for i, pair in enumerate(said):
        assert {int(start[i].argmax()), int(end[i].argmax())} == set(pair)
        assert float(start[i].max()) > 0.8 and float(end[i].max()) > 0.8  # sharp: one word each


def three_inputs_saying(processor, words: tuple[list[str], ...]):
    """Three different image inputs and what is said about each: (token ids, ``[3, V]`` bool targets, the inputs)."""
    from onellm.modalities import get_modality

    tokenizer = processor.tokenizer
    said = [[tokenizer.convert_tokens_to_ids(n) for n in names] for names in words]
    assert tokenizer.unk_token_id not in {i for ids in said for i in ids}
    targets = torch.zeros(3, len(tokenizer), dtype=torch.bool)
    for row, ids in enumerate(said):
        targets[row, ids] = True
    image = get_modality("image")
    values = torch.stack([image.dummy_input(**processor.options("image")) for _ in range(3)])
    values[1], values[2] = -values[1], values[2].flip(-1) * 0.5
    return said, targets, values


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_word_slots_are_fitted_without_the_llm_from_what_they_read(precision):
    """fit_word_slots trains only the slots' word projections, from captured summaries and word targets; under bf16
    autocast too (one autocast context around every step would keep the first bf16 copy of the weights)."""
    import contextlib

    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    from onellm.presets import build_preset
    from onellm.train.lexical import captured_slot_summaries, fit_word_slots

    torch.manual_seed(0)
    model, processor = build_preset("tiny", modalities=["image"], end_tag="lexical", start_tag="lexical", num_experts=1)
    said, targets, values = three_inputs_saying(
        processor, (["Ġstar", "Ġgreen"], ["Ġcube", "Ġorange"], ["Ġsphere", "Ġleft"])
    )
    with torch.no_grad(), captured_slot_summaries(model, ["image"]) as captured:
        model.embed_modality("image", values)
    summaries = captured["image"][0]
    assert summaries.shape[0] == 3
    head = model.projector.heads["image"]
    fitted = {id(p) for tag in head.word_tags() for p in tag.parameters()}
    others = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in fitted}
    before, after = fit_word_slots(model, summaries, targets, "image", steps=80, lr=1e-2, amp=amp)
    assert after < before / 4
    assert all(torch.equal(p, others[n]) for n, p in model.named_parameters() if n in others)
    with torch.no_grad(), captured_word_logits(model) as logits:
        model.embed_modality("image", values)
    start, end = logits[("image", 0)][0], logits[("image", 1)][0]
    for i, ids in enumerate(said):
        assert {int(start[i].argmax()), int(end[i].argmax())} == set(ids)
    with pytest.raises(ValueError, match="word fit schedule 'linear' is not"):
        fit_word_slots(model, summaries, targets, "image", steps=1, lr=1e-2, schedule="linear")
    # a row without any target word cannot teach; with none at all the fit says so
    with pytest.raises(ValueError, match="image: no training input has a distinctive content word"):
        fit_word_slots(model, summaries, torch.zeros_like(targets), "image", steps=1, lr=1e-2)


def test_a_stage_fits_its_word_slots_at_the_end_and_refuses_it_without_slots(
    synth_tiny, tmp_path, quick, accelerator, capsys
):
    from safetensors.torch import load_file

    from onellm.train.checkpoint import list_checkpoints
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    def stage(name, fit, **tags):
        preset = {"preset": "tiny", "preset_args": {"end_tag": "lexical", **tags}, "num_experts": 1}
        more = {"train.lexical_loss": 0.5, "train.word_fit_steps": fit, "init_from": preset}
        return load_stage(TINY / "align_image.yaml", quick(synth_tiny, tmp_path / name, steps=2, **more))

    weights = {}
    for name, fit in (("plain", 0), ("fit", 40)):
        trained = stage(name, fit, start_tag="lexical")
        run_stage(trained, accelerator)
        _, last = list_checkpoints(trained.stage_dir / "checkpoints")[-1]
        weights[name] = load_file(str(last / "trainable.safetensors"))
    fitted = re.search(r"image word slots fitted on (\d+) inputs: loss ([\d.]+) -> ([\d.]+)", capsys.readouterr().out)
    assert fitted and float(fitted[3]) < float(fitted[2])
    # the same two steps, then only the slots' word projections changed
    changed = {k for k, v in weights["plain"].items() if not torch.equal(v, weights["fit"][k])}
    assert changed and all(".lexical_start.proj." in k or ".lexical_tag.proj." in k for k in changed)

    with pytest.raises(ValueError, match="train.word_fit_steps fits word slots"):
        run_stage(stage("one_tag", 40), accelerator)


def test_three_word_slots_are_counted_saved_and_fitted_to_three_words(tmp_path):
    """``extra_slots: 1``: every input occupies N + 3 positions in the model, the processor and a saved copy of both,
    and the three slots are fitted to three distinct words each (the set matching over three)."""
    from onellm.modeling import OneLLMForConditionalGeneration
    from onellm.presets import build_preset
    from onellm.processing import OneLLMProcessor
    from onellm.train.lexical import captured_slot_summaries, fit_word_slots, word_slots

    torch.manual_seed(0)
    model, processor = build_preset(
        "tiny", modalities=["image"], end_tag="lexical", start_tag="lexical", extra_slots=1, num_experts=1
    )
    assert model.num_placeholder_tokens == processor.num_placeholder_tokens == 4 + 3
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = OneLLMForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.num_placeholder_tokens == OneLLMProcessor.from_pretrained(tmp_path).num_placeholder_tokens == 7
    assert word_slots(model) == {"image": 3}
    said, targets, values = three_inputs_saying(
        processor, (["Ġstar", "Ġgreen", "Ġtop"], ["Ġcube", "Ġorange", "Ġleft"], ["Ġsphere", "Ġleft", "Ġgreen"])
    )
    with torch.no_grad(), captured_slot_summaries(model, ["image"]) as captured:
        embeds = model.embed_modality("image", values)
    assert embeds.shape[1] == 7
    before, after = fit_word_slots(model, captured["image"][0], targets, "image", steps=120, lr=1e-2)
    assert after < before / 4
    with torch.no_grad(), captured_word_logits(model) as logits:
        model.embed_modality("image", values)
    named = torch.stack([logits[("image", k)][0].argmax(-1) for k in range(3)], dim=1)  # [3 inputs, 3 slots]
    for i, ids in enumerate(said):
        assert set(named[i].tolist()) == set(ids)


def test_three_slots_for_two_words_name_both_and_the_third_slot_one_of_them():
    marker, per_input, vocab = 9, 3, 6
    words = torch.ones(vocab, dtype=torch.bool)
    input_ids = torch.tensor([[marker] * per_input + [1, 1]])
    labels = torch.tensor([[IGNORE_INDEX] * per_input + [2, 3]])

    def loss(*named):
        sure = torch.full((1, vocab), -9.0)
        captured = {("image", k): [sure.index_fill(1, torch.tensor([i]), 9.0)] for k, i in enumerate(named)}
        return float(lexical_loss(captured, input_ids, labels, {"image": marker}, per_input, words, {"image": 3}))

    assert loss(2, 3, 2) < 1e-3 and loss(3, 3, 2) < 1e-3  # every word named, the third slot repeats one
    assert loss(2, 2, 2) > 5  # word 3 left out
    assert loss(2, 3, 5) > 5  # the third slot names a word the row does not say


@pytest.mark.parametrize("slots", [2, 3])
def test_slot_loss_of_a_batch_is_each_rows_best_pairing_by_brute_force(slots):
    """slot_loss matches rows with equal word counts together; each row's value and gradient must be what
    enumerating that row's pairings gives."""
    import itertools

    from onellm.train.lexical import slot_loss

    torch.manual_seed(0)
    rows, vocab = 9, 40
    logits = torch.randn(rows, slots, vocab, requires_grad=True)
    targets = torch.zeros(rows, vocab, dtype=torch.bool)
    for r in range(rows):  # 1 to 5 words: fewer, as many and more words than slots
        targets[r, torch.randperm(vocab)[: 1 + r % 5]] = True

    def brute(log_p, words):
        if len(words) >= slots:
            pairings = itertools.permutations(words, slots)
        else:  # every word named, the spare slots repeat some
            pairings = (p for p in itertools.product(words, repeat=slots) if set(p) == set(words))
        return -max(sum(log_p[k, w] for k, w in enumerate(p)) / slots for p in pairings)

    log_p = logits.log_softmax(dim=-1)
    expected = torch.stack([brute(log_p[r], targets[r].nonzero().squeeze(1).tolist()) for r in range(rows)])
    got = slot_loss(log_p, targets)
    assert torch.allclose(got, expected, atol=1e-5)
    (want_grad,) = torch.autograd.grad(expected.sum(), logits, retain_graph=True)
    (got_grad,) = torch.autograd.grad(got.sum(), logits)
    assert torch.allclose(got_grad, want_grad, atol=1e-6)
    with pytest.raises(ValueError, match="at least one target word"):
        slot_loss(log_p, torch.zeros_like(targets))


def test_slot_coverage_teaches_a_word_no_slot_names_yet():
    """Two slots, three words said of the input; the slots name words 0 and 1, and word 2 (said of every input of
    its kind, like a pulse's "pulse") is named by none. The matching alone only pushes word 2 down (the softmax's
    share of the named words), so no slot ever learns it; with coverage, word 2's logits rise and the loss adds the
    coverage of the words:
    minus the mean over the row's words of log P(some slot names it)."""
    from onellm.train.lexical import slot_loss

    vocab = 6
    logits = torch.full((1, 2, vocab), -4.0)
    logits[0, 0, 0] = logits[0, 1, 1] = 6.0
    logits.requires_grad_(True)
    targets = torch.zeros(1, vocab, dtype=torch.bool)
    targets[0, :3] = True
    (plain,) = torch.autograd.grad(slot_loss(logits.log_softmax(-1), targets).sum(), logits)
    assert float(plain[0, :, 2].min()) >= 0.0  # descending the loss never raises word 2
    covered = slot_loss(logits.log_softmax(-1), targets, coverage=0.5)
    (grad,) = torch.autograd.grad(covered.sum(), logits)
    assert float(grad[0, :, 2].max()) < -0.05  # descending the loss raises word 2 in both slots
    p = logits.detach().softmax(-1)[0]
    named = 1 - (1 - p[0]) * (1 - p[1])
    matched = -(p[0, 0].log() + p[1, 1].log()) / 2
    expected = matched - 0.5 * named[:3].log().mean()
    assert torch.allclose(covered.detach(), expected.unsqueeze(0), atol=1e-3)  # (p clamped below 1 - 1e-6)
