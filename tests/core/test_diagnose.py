"""Diagnostics (onellm.diagnose): they must tell a projector that ignores its input from one that sees it.

Tiny preset: a constant projector (its output Linear zeroed) has spread ~0 and ΔL ~0; the random projector has a
clear spread; a projector fitted to 8 captions of 8 images has ΔL > 0. The pure functions on hand-made data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from onellm.cli import main as cli_main
from onellm.diagnose import (
    TARGETS,
    blind_baseline,
    blind_predictions,
    check_targets,
    distinct_caption_fraction,
    interleave_items,
    linear_probe,
    modality_features,
    probe_modality,
    projector_spread,
    question_template,
    relative_spread,
    shuffled_loss_delta,
)
from onellm.instruct_data.collator import Collator
from onellm.instruct_data.loader import ManifestDataset
from onellm.instruct_data.schema import ModalityInput, Record, Turn, qa_prompt, read_manifest
from onellm.presets import build_preset


# --- hand-made data --------------------------------------------------------------------------------------------------
def test_spread_is_zero_for_identical_outputs_and_scale_free():
    constant = torch.randn(1, 6, 16).expand(5, 6, 16)
    assert projector_spread(constant) == pytest.approx(0.0, abs=1e-12)
    centre = torch.tensor([3.0, 4.0])  # norm 5
    x = torch.stack([centre + torch.tensor([1.0, 0.0]), centre - torch.tensor([1.0, 0.0])])[:, None, :]  # [2, 1, 2]
    assert relative_spread(x) == pytest.approx(1 / 5)
    assert relative_spread(x * 7) == pytest.approx(1 / 5)
    # the tags (positions 0 and -1) do not count: wildly different tags leave the spread of equal queries at 0
    embeds = torch.ones(4, 5, 8)
    embeds[:, 0] = torch.randn(4, 8)
    embeds[:, -1] = torch.randn(4, 8)
    assert projector_spread(embeds) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"need \[n, N\+2, D\]"):
        projector_spread(torch.ones(4, 2, 8))


def test_distinct_caption_fraction():
    refs = ["a red circle", "a blue square", "a green star", "a green star"]  # 3 distinct references
    assert distinct_caption_fraction(["a red circle"] * 4, refs) == pytest.approx(1 / 3)
    assert distinct_caption_fraction(["x", "y", "x", "x"], refs) == pytest.approx(2 / 3)
    assert distinct_caption_fraction(["a", "b", "c", "d"], refs) == 1.0  # capped
    # case, spacing and a final full stop do not make a caption distinct; reference lists count their first entry
    assert distinct_caption_fraction(["A red circle.", "a red  circle"], [["a"], ["b", "c"]]) == 0.5
    with pytest.raises(ValueError, match="3 generated captions for 2 items"):
        distinct_caption_fraction(["a", "b", "c"], ["a", "b"])


def qa_record(rid: str, question: str, answer: str, kind: str | None = None, modality: str = "image") -> Record:
    return Record(
        id=rid,
        inputs=[ModalityInput(modality, path=f"{rid}.png")],
        conversation=[Turn("user", qa_prompt(modality, question)), Turn("assistant", answer)],
        task="qa",
        references=[answer],
        meta={"question_kind": kind} if kind else None,
    )


def test_blind_baseline_answers_the_most_frequent_training_answer_per_template():
    train = [
        qa_record("t1", "What color is the circle?", "red", "color"),
        qa_record("t2", "What color is the star?", "red", "color"),
        qa_record("t3", "What color is the square?", "blue", "color"),
        qa_record("t4", "How many shapes are there?", "2", "count"),
        qa_record("t5", "How many shapes are there?", "3", "count"),
        qa_record("t6", "How many shapes are there?", "3", "count"),
        qa_record("t7", "Is it loud?", "Yes", modality="audio"),  # no kind: the question text is the template
        qa_record("t8", "Is it loud?", "yes", modality="audio"),
        qa_record("t9", "Is it loud?", "yes", modality="audio"),
        qa_record("t10", "Does the pitch rise?", "Stay the same.", modality="audio"),
        qa_record("t11", "Does the pitch rise?", "stay the same", modality="audio"),
        qa_record("t12", "Does the pitch rise?", "stay the same", modality="audio"),
        qa_record("t13", "Does the pitch rise?", "rise", modality="audio"),
    ]
    test = [
        qa_record("q1", "What color is the hexagon?", "red", "color"),  # blind answer red: right
        qa_record("q2", "What color is the circle?", "green", "color"),  # red: wrong
        qa_record("q3", "How many shapes are there?", "3", "count"),  # 3: right
        qa_record("q4", "What shape is on the left?", "star", "shape"),  # unseen kind: image's overall "red"/"3"
        qa_record("q5", "Is it loud?", "yes", modality="audio"),  # "yes" (3 votes, 2 spelt so)
        qa_record("q6", "Does the pitch rise?", "stay the same", modality="audio"),  # as spelt, not "stay same"
    ]
    assert question_template(test[0]) == "image:color"
    assert question_template(test[4]) == "audio:is it loud?"
    predictions = blind_predictions(train, test)
    assert predictions[:3] == ["red", "red", "3"] and predictions[4:] == ["yes", "stay the same"]
    assert predictions[3] in {"red", "3"}
    assert blind_baseline(train, test) == pytest.approx(4 / 6)


def test_linear_probe_on_separable_and_on_random_labels():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=generator) * 4
    labels = [i % 3 for i in range(90)]
    x = centres[labels] + torch.randn(90, 20, generator=generator)
    names = ["red", "green", "blue"]
    result = linear_probe(x[:60], [names[i] for i in labels[:60]], x[60:], [names[i] for i in labels[60:]])
    assert result.accuracy == 1.0 and result.classes == 3 and (result.n_train, result.n_test) == (60, 30)
    assert result.chance == pytest.approx(1 / 3)
    noise = torch.randn(90, 20, generator=generator)
    assert linear_probe(noise[:60], labels[:60], noise[60:], labels[60:]).accuracy < 0.6


def test_targets_say_by_how_much_they_are_missed():
    checks = check_targets(projector_spread=0.01, qa_accuracy=0.5, qa_blind_baseline=0.4, distinct_caption_fraction=0.9)
    assert not checks["projector_spread"].met and checks["projector_spread"].short_by == pytest.approx(0.04)
    assert not checks["qa_over_baseline"].met and checks["qa_over_baseline"].short_by == pytest.approx(0.15)
    assert checks["distinct_caption_fraction"].met and checks["distinct_caption_fraction"].short_by == 0.0
    assert check_targets(None, None, 0.3, None)["qa_over_baseline"].short_by is None
    assert TARGETS["projector_spread"] == 0.05 and TARGETS["qa_over_baseline"] == 0.25


# --- the tiny model --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from onellm.instruct_data.synth import synthesize

    folder = tmp_path_factory.mktemp("synth")
    synthesize(folder, per_modality=20, seed=0, modalities=["image"], workers=1)
    return folder


@pytest.fixture()
def model_and_processor():
    """A fresh tiny model per test (tests change its weights)."""
    return build_preset("tiny", modalities=["image"])


def make_constant(model: nn.Module) -> None:
    """Zero the weight of every projector Linear that writes the LLM width: its output no longer sees the input."""
    width = model.config.text_config.hidden_size
    linears = [m for m in model.projector.modules() if isinstance(m, nn.Linear) and m.out_features == width]
    assert linears, "the projector has no Linear of the LLM width to zero"
    with torch.no_grad():
        for linear in linears:
            linear.weight.zero_()


def examples(corpus: Path, processor, task: str, split: str = "train") -> list[dict]:
    records = interleave_items([r for r in read_manifest(corpus / f"{split}.jsonl") if r.task == task])
    dataset = ManifestDataset(records, corpus, processor)
    return [dataset[i] for i in range(len(dataset))]


def image_values(corpus: Path, processor, n: int = 12) -> torch.Tensor:
    return torch.stack([e["media"][0][1] for e in examples(corpus, processor, "caption")[:n]])


def test_a_constant_projector_shows_no_spread_and_no_loss_delta(model_and_processor, corpus):
    model, processor = model_and_processor
    make_constant(model)
    pooled, embeds = modality_features(model, "image", image_values(corpus, processor))
    assert embeds.shape == (12, 6, 64) and pooled.shape == (12, 64)
    assert projector_spread(embeds) < 1e-5
    assert relative_spread(pooled[:, None]) > 0.01  # the encoder still tells the images apart
    loss = shuffled_loss_delta(model, Collator(processor), examples(corpus, processor, "caption")[:12])
    assert loss.examples == 12 and loss.label_tokens > 0
    assert abs(loss.delta) < 1e-5


def test_a_random_projector_has_spread(model_and_processor, corpus):
    model, processor = model_and_processor
    _, embeds = modality_features(model, "image", image_values(corpus, processor))
    assert projector_spread(embeds) > 0.05


def test_a_model_fitted_to_its_inputs_has_a_higher_loss_with_shuffled_inputs(model_and_processor, corpus):
    """Hand-built working case: the model (encoder frozen) memorises 8 captions of 8 different images; only the
    input tells them apart, so moving each image to another caption must raise the loss (0.66 when written with 60 steps; 100 steps since the placeholder tokens are masked out of the logits; 0.18 on an
    AVX2-only CPU)."""
    from onellm.train.loop import label_loss_sum

    model, processor = model_and_processor
    collator = Collator(processor)
    batch_examples = examples(corpus, processor, "caption")[:8]
    batch = collator(batch_examples)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "mm_inputs")}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith("encoder."))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(100):  # the tiny LLM alone fits the 8 captions' mixture at ~3.4 nats; below that it must look
        loss = label_loss_sum(model, inputs) / batch["num_label_tokens"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = shuffled_loss_delta(model, collator, batch_examples)
    # the fitted model's matched loss ends near 0.2 nats; shuffling its inputs must cost clearly more (measured: +0.18
    # on an AVX2 CPU, whose fp32 kernels round differently from AVX512's; a constant projector gives 0, test above)
    assert result.delta > 0.1 and result.shuffled > 1.5 * result.matched, result


def test_probes_report_each_question_kind_beside_chance(model_and_processor, corpus):
    model, processor = model_and_processor
    train = [r for r in read_manifest(corpus / "train.jsonl")]
    held_out = [r for r in read_manifest(corpus / "test.jsonl")]
    probes = probe_modality(model, processor, train, held_out, corpus, "image", probe_items=16, min_test=2)
    assert probes, "no question kind had enough examples"
    for probe in probes:
        assert set(probe) == {"label", "encoder", "projector", "chance", "classes", "n_train", "n_test"}
        assert probe["n_test"] >= 2 and probe["classes"] >= 2
        assert 0 <= probe["encoder"] <= 1 and 0 <= probe["projector"] <= 1 and 0 <= probe["chance"] <= 1


@pytest.mark.slow  # ~25 s: a METEOR JVM starts for the caption scores
def test_diagnose_command_writes_json_for_a_tiny_checkpoint(model_and_processor, corpus, tmp_path, capsys):
    model, processor = model_and_processor
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "diag.json"
    code = cli_main(
        [
            "diagnose",
            str(tmp_path / "ckpt"),
            "--data",
            str(corpus),
            "--modalities",
            "image",
            "--split",
            "test",
            "--limit",
            "2",
            "--probe-items",
            "16",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("| modality | items | spread |")
    data = json.loads(out.read_text(encoding="utf-8"))
    image = data["modalities"]["image"]
    assert image["items"] == 2
    assert image["projector_spread"] > 0 and image["encoder_spread"] > 0
    assert set(image["loss"]) == {"matched", "shuffled", "delta", "examples"}
    assert image["qa"]["n"] == 6 and 0 <= image["qa"]["blind_baseline"] <= 1
    assert image["qa"]["interval"][0] <= image["qa"]["accuracy"] <= image["qa"]["interval"][1]
    assert image["caption"]["n"] == 2 and 0 < image["caption"]["distinct_caption_fraction"] <= 1
    assert set(image["targets"]) == {"projector_spread", "qa_over_baseline", "distinct_caption_fraction"}
    assert set(data["mean_cider"]) == {"value", "target", "met", "short_by"}


def test_diagnose_names_a_missing_manifest(tmp_path, capsys):
    assert cli_main(["diagnose", str(tmp_path), "--data", str(tmp_path / "nope")]) == 2
    assert "nope/train.jsonl: manifest not found" in capsys.readouterr().err
