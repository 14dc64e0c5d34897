"""``bench/text_ceiling.py`` on the tiny preset: an answer's teacher-forced log-probability is the model's own loss
over the answer tokens, does not depend on the other answers it is batched with, and reads the input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from bench_scripts import load_bench
from tiny_checkpoint import save_tiny

from onellm.eval.backends.base import MediaItem, Request
from onellm.eval.backends.hf import HFBackend
from onellm.instruct_data.schema import read_manifest
from onellm.instruct_data.synth import synthesize


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    corpus = tmp_path_factory.mktemp("synth")
    synthesize(corpus, per_modality=24, seed=0, modalities=["image"], workers=1)
    return save_tiny(tmp_path_factory.mktemp("tiny"), modalities=["image"]), corpus


def image_request(corpus: Path, index: int) -> Request:
    images = sorted({r.inputs[0].path for r in read_manifest(corpus / "test.jsonl")})
    return Request("q", "What color is the circle?", (MediaItem("image", str(corpus / images[index])),))


def test_answer_log_probs_are_the_models_loss_and_read_the_input(tiny):
    checkpoint, corpus = tiny
    bench, backend = load_bench("text_ceiling"), HFBackend(str(checkpoint), dtype="float32")
    request, answers = image_request(corpus, 0), ["red", "a large purple circle", "no"]
    together = bench.answer_log_probs(backend, request, answers)
    alone = [bench.answer_log_probs(backend, request, [answer])[0] for answer in answers]
    assert together == pytest.approx(alone, abs=1e-4)  # right padding leaves each row's score alone

    processor = backend.processor
    prompt = processor.apply_chat_template(request.messages())
    image = [request.media[0].processor_item()]
    full = processor(text=prompt + answers[1] + processor.tokenizer.eos_token, image=image)
    start = processor(text=prompt, image=image)["input_ids"].shape[1]
    labels = full["input_ids"].clone()
    labels[:, :start] = -100
    with torch.no_grad():
        loss = backend.model(input_ids=full["input_ids"], mm_inputs=full["mm_inputs"], labels=labels).loss
    assert together[1] == pytest.approx(-float(loss) * (labels.shape[1] - start), abs=1e-3)

    other = bench.answer_log_probs(backend, image_request(corpus, 1), answers)
    assert max(abs(a - b) for a, b in zip(together, other, strict=True)) > 1e-3  # another image, other scores
    text_only = bench.answer_log_probs(backend, Request("q", "What color is the circle?"), answers)
    assert len(text_only) == 3 and all(v < 0 for v in text_only)


def test_main_writes_each_kind_beside_its_blind_baseline(tiny, tmp_path, monkeypatch, capsys):
    checkpoint, corpus = tiny
    out = tmp_path / "ceiling.json"
    argv = ["text_ceiling.py", "--checkpoint", str(checkpoint), "--data", str(corpus), "--per-kind", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--json", str(out)])
    load_bench("text_ceiling").main()
    report = json.loads(out.read_text())
    kinds = [k for k in report if k != "image:all"]
    assert kinds and all(k.startswith("image:") for k in kinds)
    assert report["image:all"]["n"] == sum(report[k]["n"] for k in kinds)
    for row in report.values():
        assert set(row) == {"n", "blind", "input", "caption", "none"}
        assert all(0.0 <= row[c] <= 1.0 for c in ("blind", "input", "caption", "none"))
    assert "image:all" in capsys.readouterr().out
