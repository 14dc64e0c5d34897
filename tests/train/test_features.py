"""Frozen-feature cache: same loss and gradients as the uncached path, keyed by content and by the frozen weights."""

from __future__ import annotations

import pytest
import torch

from onellm.train.features import FeatureCache, cache_options, cacheable_modalities, path_fingerprint
from onellm.train.groups import set_trainable

IMAGE_LIKE = ["image", "video", "depth", "normal"]
ALL = IMAGE_LIKE + ["audio", "point", "imu", "fmri"]


def test_cacheable_follows_what_is_frozen(tiny):
    model, _ = tiny
    set_trainable(model, ["projector.*", "tokenizer.audio"])
    assert cacheable_modalities(model, ALL) == ["image", "video", "depth", "normal", "point", "imu", "fmri"]
    set_trainable(model, ["projector.*", "tokenizer.*"])
    assert cacheable_modalities(model, ALL) == IMAGE_LIKE
    set_trainable(model, ["projector.*", "encoder"])
    assert cacheable_modalities(model, ALL) == []
    set_trainable(model, ["*"])


def test_cached_features_give_the_same_loss_and_gradients(tiny, media_paths, tmp_path):
    model, processor = tiny
    set_trainable(model, ["projector.*"])
    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat is it?"}]) + "red<|im_end|>"
    batch = processor(text=[prompt, prompt], image=[media_paths["image"], media_paths["depth"]])
    labels = batch["input_ids"].clone()
    cache = FeatureCache(model, {"image": processor.options("image")}, tmp_path)

    def loss_and_grads(**media):
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, **media).loss
        loss.backward()
        return loss.detach(), [
            p.grad.clone() for p in model.projector.heads["image"].parameters() if p.grad is not None
        ]

    plain_loss, plain_grads = loss_and_grads(mm_inputs=batch["mm_inputs"])
    features = cache.features(model, "image", batch["mm_inputs"]["image"], ["k1", "k2"])
    cached_loss, cached_grads = loss_and_grads(mm_features={"image": features})
    assert torch.allclose(plain_loss, cached_loss, atol=1e-6)
    assert len(plain_grads) == len(cached_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, cached_grads, strict=True))
    assert (cache.hits, cache.misses) == (0, 2)
    set_trainable(model, ["*"])


def test_entries_persist_on_disk_and_hit_by_key(tiny, media_paths, tmp_path):
    model, processor = tiny
    values = torch.stack([processor.preprocess("image", media_paths["image"])] * 2)
    first = FeatureCache(model, {"image": processor.options("image")}, tmp_path)
    out = first.features(model, "image", values, ["same", "same"])  # the second is computed in the same call
    assert torch.allclose(out, model.encode("image", values).detach(), atol=1e-6)
    later = FeatureCache(model, {"image": processor.options("image")}, tmp_path)  # a restart / the next stage
    again = later.features(model, "image", values[:1], ["same"])
    assert (later.hits, later.misses) == (1, 0)
    assert torch.equal(again[0], out[0])
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    # another preprocessing option (image size) is another namespace: no stale hit
    other = FeatureCache(model, {"image": {**processor.options("image"), "image_size": 64}}, tmp_path)
    other.features(model, "image", values[:1], ["same"])
    assert other.misses == 1


def test_a_model_pooling_option_is_another_namespace(tiny, media_paths, tmp_path):
    """Video's temporal_pool lives in the model's config, not the processor's: the cache key must still see it."""
    model, processor = tiny
    values = processor.preprocess("video", media_paths["video"]).unsqueeze(0)
    mean = FeatureCache(model, cache_options(processor, model, ["video"]), tmp_path)
    mean.features(model, "video", values, ["clip"])
    model.config.modality_configs["video"]["temporal_pool"] = "mean_delta"
    try:
        delta = FeatureCache(model, cache_options(processor, model, ["video"]), tmp_path)
        out = delta.features(model, "video", values, ["clip"])
        assert (delta.hits, delta.misses) == (0, 1)
        assert torch.allclose(out, model.encode("video", values).detach(), atol=1e-6)
    finally:
        del model.config.modality_configs["video"]["temporal_pool"]


def test_fingerprint_covers_the_modality_tokenizer(tiny):
    model, _ = tiny
    before = path_fingerprint(model, "audio")
    assert before == path_fingerprint(model, "audio")
    with torch.no_grad():
        model.mm_tokenizers["audio"].positions.add_(1.0)
    try:
        assert path_fingerprint(model, "audio") != before
        assert path_fingerprint(model, "image") == path_fingerprint(model, "image")
    finally:
        with torch.no_grad():
            model.mm_tokenizers["audio"].positions.sub_(1.0)


def test_fingerprint_covers_the_encoder_feature_layers(tiny):
    model, _ = tiny
    before = path_fingerprint(model, "image")
    layers = model.encoder.feature_layers
    model.encoder.feature_layers = (1, -1)
    try:
        assert path_fingerprint(model, "image") != before
    finally:
        model.encoder.feature_layers = layers


def image_qa_batch(processor, media_paths, pairs):
    """A collated batch of one-image conversations (question, answer) and the model inputs taken from it."""
    from onellm.instruct_data.collator import Collator

    examples = [
        {
            "id": str(i),
            "conversation": [{"role": "user", "content": f"<image>\n{q}"}, {"role": "assistant", "content": a}],
            "media": [("image", processor.preprocess("image", media_paths["image"]))],
            "keys": ["k"],
        }
        for i, (q, a) in enumerate(pairs)
    ]
    batch = Collator(processor)(examples)
    return batch, {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "mm_inputs")}


def test_loss_on_label_positions_only_equals_the_models_own_loss(tiny, media_paths):
    from onellm.train.loop import label_loss_sum

    model, processor = tiny
    batch, inputs = image_qa_batch(
        processor, media_paths, [("What colour?", "red"), ("Describe the picture in detail.", "a large blue square")]
    )
    with torch.no_grad():
        reference = model(**inputs).loss * batch["num_label_tokens"]  # mean over label tokens -> sum
        ours = label_loss_sum(model, inputs)
    assert torch.allclose(ours, reference, rtol=1e-5)


def test_per_sample_loss_weighs_a_one_word_answer_as_much_as_a_caption(tiny, media_paths):
    """``loss_weighting: sample``: the sum over rows of each row's own mean token loss, whatever the answers'
    lengths; ``loss_units`` counts the rows it averages over."""
    from onellm.train.loop import label_loss_sum, loss_units

    model, processor = tiny
    pairs = [("What colour?", "red"), ("Describe the picture in detail.", "a large blue square on a white background")]
    batch, inputs = image_qa_batch(processor, media_paths, pairs)
    with torch.no_grad():
        rows = [
            model(**image_qa_batch(processor, media_paths, [pair])[1]).loss for pair in pairs
        ]  # each row's mean over its own label tokens
        per_sample = label_loss_sum(model, inputs, "sample")
        per_token = label_loss_sum(model, inputs)
        per_turn = label_loss_sum(model, inputs, "turn")
    assert loss_units(batch, "sample") == loss_units(batch, "turn") == 2
    assert loss_units(batch, "token") == batch["num_label_tokens"] > 2
    assert torch.allclose(per_turn, per_sample)  # one answer per row: the same
    assert torch.allclose(per_sample, sum(rows), rtol=1e-4)
    # the token-weighted mean leans towards the caption's loss; the per-sample mean does not
    assert not torch.allclose(per_token / batch["num_label_tokens"], per_sample / 2, rtol=1e-3)


def test_per_turn_loss_weighs_each_answer_of_a_conversation_as_one(tiny, media_paths):
    """``loss_weighting: turn``: in a two-turn conversation (a caption, then a one-word answer) each answer's mean
    token loss counts once, where ``sample`` lets the row's longer answer outweigh the short one."""
    import torch.nn.functional as F

    from onellm.instruct_data.collator import Collator
    from onellm.train.loop import label_loss_sum, loss_units

    model, processor = tiny
    turns = [
        ("<image>\nDescribe the picture in detail.", "a large blue square on a white background at the left"),
        ("What colour is the square?", "blue"),
    ]
    media = [("image", processor.preprocess("image", media_paths["image"]))]
    examples = [
        {
            "id": "chat",
            "conversation": [{"role": r, "content": c} for q, a in turns for r, c in (("user", q), ("assistant", a))],
            "media": media,
            "keys": ["k"],
        },
        {
            "id": "single",
            "conversation": [
                {"role": "user", "content": "<image>\nHow many?"},
                {"role": "assistant", "content": "one"},
            ],
            "media": media,
            "keys": ["k"],
        },
    ]
    batch = Collator(processor)(examples)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "mm_inputs")}
    assert loss_units(batch, "turn") == 3 and loss_units(batch, "sample") == 2
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1].float()
        per_turn = label_loss_sum(model, inputs, "turn")
        per_sample = label_loss_sum(model, inputs, "sample")
    targets = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    answers = []  # each answer's mean token loss, its label runs found by hand
    for row in range(2):
        labelled = (targets[row] != -100).tolist()
        run: list[int] = []
        for t, is_label in enumerate([*labelled, False]):
            if is_label:
                run.append(t)
            elif run:
                answers.append(losses[row, run].mean())
                run = []
    assert len(answers) == 3
    assert torch.allclose(per_turn, sum(answers), rtol=1e-4)
    assert torch.allclose(per_sample, losses[0][targets[0] != -100].mean() + answers[2], rtol=1e-4)
    assert not torch.allclose(per_turn, per_sample, rtol=1e-3)


def test_a_stage_with_a_warm_cache_decodes_no_media(synth_tiny, tmp_path, quick, accelerator, monkeypatch):
    """Issue 14: the dataset asks the feature cache before decoding; with every input cached (a rerun of the stage
    beside its feature cache and validation cache) a whole stage — training steps and validation — decodes nothing."""
    import shutil
    from pathlib import Path

    from onellm.modalities import get_modality
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    image = type(get_modality("image"))
    decoded: list[str] = []
    original = image.preprocess

    def counting(self, source, *args, **kwargs):
        decoded.append(str(source))
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(image, "preprocess", counting)
    config = Path(__file__).resolve().parents[2] / "configs/tiny/align_image.yaml"
    overrides = quick(synth_tiny, tmp_path, steps=4)  # 4 x 4 samples: every one of the 8 training images, twice
    stage = load_stage(config, overrides)
    run_stage(stage, accelerator)
    cold = len(decoded)
    assert cold >= 9  # validation of 8 train + 1 val image, then each image once more on its first training visit
    assert any((tmp_path / "feature_cache").rglob("*.pt"))

    shutil.rmtree(stage.stage_dir)  # the stage runs again from scratch; feature and validation caches stay
    decoded.clear()
    stage = load_stage(config, overrides)
    run_stage(stage, accelerator)
    assert decoded == []
    summary = (stage.stage_dir / "summary.md").read_text()
    assert " 0 misses this run" in summary, summary


def test_a_frozen_projector_stays_as_the_checkpoint_keeps_it(synth_tiny, tmp_path, quick, accelerator):
    """With LoRA alone training (the small curriculum's instruct) the UPM's heads are frozen, and a checkpoint keeps
    only what trains: a frozen head's running feature statistics must not move during the stage either, or LoRA
    learns on a projector other than the one saved (and a resumed run on another again). They did move: a frozen
    head in training mode kept folding every batch into its standardiser."""
    from dataclasses import replace
    from pathlib import Path

    from onellm.train.common import add_lora, build_data, freeze, load_start
    from onellm.train.config import load_stage
    from onellm.train.recipes import build_trainer

    config = Path(__file__).resolve().parents[2] / "configs/tiny/instruct.yaml"
    overrides = quick(synth_tiny, tmp_path, steps=3, **{"init_from.stage": None, "init_from.preset": "tiny"})
    stage = load_stage(config, {**overrides, "trainable": {"lora": 2.0e-3}})
    model, processor = load_start(stage)
    wrapped = add_lora(model, stage.lora, stage.seed)
    _, groups = freeze(wrapped, stage.trainable)
    data = build_data(stage, processor, accelerator)
    trainer = build_trainer(stage, accelerator, wrapped, model, processor, replace(data, val=None), groups, False)
    before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    trainer.fit()
    after = model.projector.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert not moved, f"the frozen projector changed during the stage: {moved}"


def test_the_word_fit_leaves_the_final_features_of_trained_tokenizers_for_the_next_stage(
    synth_tiny, tmp_path, quick, accelerator
):
    """An alignment stage that trains audio's tokenizer fits its word slots at the end, encoding every distinct audio
    training input with the final weights: those features go to the curriculum's feature cache, equal to what the
    final checkpoint computes, and an instruct stage on the same inputs (tokenizers frozen) decodes none of them."""
    from pathlib import Path

    from onellm.train.common import load_start
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    tiny = Path(__file__).resolve().parents[2] / "configs/tiny"
    tags = {"preset": "tiny", "preset_args": {"end_tag": "lexical", "start_tag": "lexical"}}
    audio_only = [{"modalities": ["audio"], "tasks": ["caption"]}]
    more = {
        "init_from": tags,
        "data.sources": audio_only,
        "data.replay": {"modalities": [], "fraction": 0.0},
        "train.eval_samples": 0,
    }
    align = load_stage(
        tiny / "align_av3d.yaml",
        quick(synth_tiny, tmp_path, steps=2, **more, **{"train.lexical_loss": 0.5, "train.word_fit_steps": 3}),
    )
    run_stage(align, accelerator)
    stored = sorted((tmp_path / "feature_cache" / "audio").glob("*.pt"))
    train_clips = {r.inputs[0].path for r in align_records(synth_tiny) if r.inputs[0].modality == "audio"}
    assert len(stored) == len(train_clips) == 8

    instruct = load_stage(
        tiny / "instruct.yaml",
        quick(
            synth_tiny,
            tmp_path,
            steps=2,
            **{"init_from.stage": "align_av3d", "data.sources": audio_only, "train.eval_samples": 0},
        ),
    )
    model, processor = load_start(instruct)  # the final align_av3d weights
    with torch.no_grad():
        clips = torch.stack([processor.preprocess("audio", synth_tiny / path) for path in sorted(train_clips)])
        encoded = model.encode("audio", clips)
    for path in stored:
        cached = torch.load(path, weights_only=True)
        assert cached.dtype == torch.float32
        assert any(torch.allclose(cached, row, atol=1e-5) for row in encoded), path.name
    run_stage(instruct, accelerator)
    summary = (instruct.stage_dir / "summary.md").read_text()
    assert "audio" in summary and " 0 misses this run" in summary, summary


def align_records(root, manifest: str = "train.jsonl"):
    from onellm.instruct_data.schema import read_manifest

    return read_manifest(root / manifest)


def test_features_cached_under_bf16_autocast_are_the_float32_encodings(synth_tiny, tmp_path, quick, accelerator):
    """The cache holds float32 features whichever pass meets an input first: a bf16 stage's training steps encode
    outside autocast, and so must its validation and its word fit's pass (both run under autocast); otherwise an
    input first met there is stored in bf16 arithmetic and every later stage reads that instead."""
    from pathlib import Path

    from onellm.train.common import load_start
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    config = Path(__file__).resolve().parents[2] / "configs/tiny/align_image.yaml"
    more = {
        "init_from": {
            "preset": "tiny",
            "num_experts": 1,
            "preset_args": {"end_tag": "lexical", "start_tag": "lexical"},
        },
        "train.precision": "bf16",
        "train.lexical_loss": 0.5,
        "train.word_fit_steps": 2,
        "train.warmup_steps": 0,
    }
    stage = load_stage(config, quick(synth_tiny, tmp_path, steps=1, **more))  # 4 of the 8 training images
    run_stage(stage, accelerator)

    model, processor = load_start(load_stage(config, quick(synth_tiny, tmp_path, steps=1, **more)))
    records = [r for name in ("train.jsonl", "val.jsonl") for r in align_records(synth_tiny, name)]
    paths = sorted({item.path for r in records for item in r.inputs if item.modality == "image"})
    with torch.no_grad():
        images = torch.stack([processor.preprocess("image", synth_tiny / path) for path in paths])
        encoded = model.encode("image", images)
    stored = sorted((tmp_path / "feature_cache").rglob("*.pt"))
    assert len(stored) >= 9  # every training image (the word fit meets the 4 unseen ones) and the validation image
    for path in stored:
        cached = torch.load(path, weights_only=True)
        assert any(torch.allclose(cached, row, atol=1e-5) for row in encoded), path.name


@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_the_validation_loss_averages_as_the_training_loss_does(synth_tiny, tmp_path, quick, accelerator, weighting):
    """``train.loss_weighting`` sets how validation averages too: over all label tokens, or each sample's mean token
    loss (the model's own loss on that sample alone) weighing the same, so the training and validation losses that
    ``summary.md`` shows side by side read alike (validation was token-weighted whatever the setting)."""
    from pathlib import Path

    from onellm.train.common import build_data, freeze, load_start
    from onellm.train.config import load_stage
    from onellm.train.recipes import build_trainer

    config = Path(__file__).resolve().parents[2] / "configs/tiny/align_image.yaml"
    overrides = {
        "train.loss_weighting": weighting,
        "train.cache_features": False,  # the batches hold the media
        "data.sources": [{"modalities": ["image"], "tasks": ["caption", "qa"]}],  # a caption and one-word answers
    }
    stage = load_stage(config, quick(synth_tiny, tmp_path, **overrides))
    model, processor = load_start(stage)
    _, groups = freeze(model, stage.trainable)
    data = build_data(stage, processor, accelerator)
    trainer = build_trainer(stage, accelerator, model, model, processor, data, groups, False)
    val = trainer.evaluate()
    samples = [data.val[i] for i in trainer.val_indices()["image"]]
    losses, tokens = [], []
    model.eval()
    with torch.no_grad():
        for sample in samples:  # each alone: the model's own loss is that sample's mean over its label tokens
            batch = trainer.collator([sample])
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "mm_inputs")}
            losses.append(float(model(**inputs).loss))
            tokens.append(batch["num_label_tokens"])
    by_sample = sum(losses) / len(losses)
    by_token = sum(loss * n for loss, n in zip(losses, tokens, strict=True)) / sum(tokens)
    assert len(samples) >= 2 and abs(by_sample - by_token) > 1e-3  # a caption beside one-word answers
    expected = by_token if weighting == "token" else by_sample
    assert val["image"] == pytest.approx(expected, rel=1e-4)
    assert val["all"] == pytest.approx(expected, rel=1e-4)
