"""The tiny model end to end: forward/backward per modality, generate, save/load, placeholder counting."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from onellm import OneLLMForConditionalGeneration
from onellm.train.groups import parameter_groups, set_trainable

EIGHT = ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]
ALL = [*EIGHT, "xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"]  # tiny_all's fourteen
IMAGE_LIKE = {"image", "video", "depth", "normal", "xray", "infrared"}


def caption_batch(processor, modality, path, answer="a red circle"):
    """A one-turn caption example: prompt + answer, labels on the answer tokens only."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": "Describe it."}]}]
    )
    full = prompt + answer + "<|im_end|>\n"
    batch = processor(text=full, **{modality: [path]})
    labels = batch["input_ids"].clone()
    prompt_len = len(processor(text=prompt, **{modality: [path]})["input_ids"][0])
    labels[:, :prompt_len] = -100
    return batch, labels


def test_the_tiny_preset_builds_the_eight_unless_asked(tiny, tiny_all):
    assert tiny[0].config.modalities == EIGHT and tiny_all[0].config.modalities == ALL
    assert tiny_all[1].modalities == ALL and len(set(tiny_all[1].modality_token_ids.values())) == 14


@pytest.mark.parametrize("modality", ALL)
def test_backward_reaches_only_what_trains(tiny_all, media_paths, modality):
    model, processor = tiny_all
    # The alignment-stage policy: LLM and encoder frozen; this modality's tokenizer and the projector train.
    patterns = ["projector.*"] + ([] if modality in IMAGE_LIKE else [f"tokenizer.{modality}"])
    counts = set_trainable(model, patterns)
    assert "llm" not in counts and "encoder" not in counts
    model.zero_grad(set_to_none=True)
    batch, labels = caption_batch(processor, modality, media_paths[modality])
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    groups = parameter_groups(model)
    params = dict(model.named_parameters())

    def has_grad(group):
        return any(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in groups.get(group, []))

    assert has_grad(f"projector.{modality}") and has_grad("projector.experts")
    if modality not in IMAGE_LIKE:
        assert has_grad(f"tokenizer.{modality}")
    for frozen in ("llm", "encoder"):
        assert all(params[n].grad is None for n in groups[frozen]), f"{frozen} received gradients"
    others = [m for m in ALL if m != modality]
    assert not any(has_grad(f"projector.{m}") or has_grad(f"tokenizer.{m}") for m in others)
    set_trainable(model, ["*"])


@pytest.mark.parametrize("modality", ALL)
def test_generate_every_modality(tiny_all, media_paths, modality):
    model, processor = tiny_all
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": "?"}]}]
    )
    batch = processor(text=prompt, **{modality: [media_paths[modality]]})
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 5)


def test_generate_with_cache_matches_full_recompute(tiny, media_paths):
    model, processor = tiny
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    )
    batch = processor(text=prompt, image=[media_paths["image"]])
    cached = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_two_inputs_in_one_prompt_each_reach_their_positions(tiny, media_paths):
    model, processor = tiny
    content = [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "Compare."}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}])
    batch = processor(text=prompt, image=[media_paths["image"]], audio=[media_paths["audio"]])
    ids = batch["input_ids"][0]
    n = processor.num_placeholder_tokens
    assert int((ids == processor.token_id("image")).sum()) == n and int((ids == processor.token_id("audio")).sum()) == n
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[0] + 4
    # Changing only the audio changes the logits at text positions after it: the audio really is used.
    other = dict(batch["mm_inputs"], audio=torch.zeros_like(batch["mm_inputs"]["audio"]))
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], mm_inputs=batch["mm_inputs"]).logits[0, -1]
        b = model(input_ids=batch["input_ids"], mm_inputs=other).logits[0, -1]
    assert not torch.allclose(a, b)


def test_chat_template_puts_a_messages_inputs_before_its_text_in_any_part_order(tiny):
    _, processor = tiny
    image, audio, text = {"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is it?"}

    def render(*parts):
        return processor.apply_chat_template([{"role": "user", "content": list(parts)}])

    # The layout every stage trains on, whichever order the client sent.
    trained = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat is it?"}])
    assert render(image, text) == render(text, image) == trained
    # Inputs keep their own order (the first image stays the first), text parts join in theirs.
    assert render(text, image, audio) == render(image, audio, text) != render(audio, image, text)
    assert render(image, audio, text).index("<image>") < render(image, audio, text).index("<audio>")
    split = render({"type": "text", "text": "What "}, image, {"type": "text", "text": "is it?"})
    assert split == trained


def test_batch_of_two_prompts_with_left_padding(tiny, media_paths):
    model, processor = tiny
    prompts = [
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}])
        for t in ("Short?", "A much longer question about the picture?")
    ]
    batch = processor(text=prompts, image=[media_paths["image"]] * 2, padding_side="left")
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    single = processor(text=prompts[0], image=[media_paths["image"]])
    alone = model.generate(**single, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[0, -3:], alone[0, -3:])


def test_save_and_reload_through_auto_classes_gives_identical_logits(tiny, media_paths, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json"):
        assert (tmp_path / name).is_file(), name
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("encoder.model.") for k in keys)  # every weight, the frozen encoder included
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    prompt = reloaded_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "?"}]}]
    )
    batch = reloaded_processor(text=prompt, audio=[media_paths["audio"]])
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
        reloaded = auto.from_pretrained(tmp_path)
        assert isinstance(reloaded, OneLLMForConditionalGeneration)
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_placeholder_count_mismatch_names_both_counts(tiny, media_paths):
    model, processor = tiny
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    )
    batch = processor(text=prompt, image=[media_paths["image"]])
    image_id = processor.token_id("image")
    ids = batch["input_ids"].clone()
    first = int((ids[0] == image_id).nonzero()[0])
    ids[0, first] = processor.tokenizer.pad_token_id  # one placeholder fewer
    n = processor.num_placeholder_tokens
    with pytest.raises(ValueError, match=rf"holds {n - 1} placeholder tokens but 1 input\(s\) x {n} embeddings = {n}"):
        model(input_ids=ids, mm_inputs=batch["mm_inputs"])
    with pytest.raises(ValueError, match=rf"holds {n} placeholder tokens but 0 inputs"):
        model(input_ids=batch["input_ids"])


def test_processor_marker_count_mismatch(tiny, media_paths):
    _, processor = tiny
    with pytest.raises(ValueError, match="1 <image> marker.*but 2 image input"):
        processor(text="<image> what?", image=[media_paths["image"]] * 2)
    with pytest.raises(ValueError, match="0 <audio> marker.*but 1 audio input"):
        processor(text="what?", audio=[media_paths["audio"]])


def test_labels_never_train_placeholders(tiny, media_paths):
    model, processor = tiny
    batch, _ = caption_batch(processor, "image", media_paths["image"])
    labels = batch["input_ids"].clone()  # naive labels that include the placeholder ids
    masked = labels.masked_fill(labels == processor.token_id("image"), -100)
    with torch.no_grad():
        assert torch.allclose(model(**batch, labels=labels).loss, model(**batch, labels=masked).loss)


def test_feature_layers_and_word_scale_outputs_round_trip(media_paths, tmp_path):
    # two encoder blocks read (the UPM's input is twice the encoder width) and soft tokens at a fixed RMS
    from onellm.presets import build_preset

    model, processor = build_preset("tiny", modalities=["image"], feature_layers=[1, -1], out_rms=0.25)
    assert model.encoder.out_width == 2 * model.encoder.width
    assert model.projector.heads["image"].standardize.mean.shape == (2 * model.encoder.width,)
    batch = processor(text="<image>\nwhat?", image=[media_paths["image"]])
    with torch.no_grad():
        soft = model.embed_modality("image", batch["mm_inputs"]["image"])[:, 1:-1]
    assert torch.allclose(soft.pow(2).mean(-1).sqrt(), torch.full(soft.shape[:2], 0.25), atol=1e-3)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert reloaded.config.vision_feature_layers == [1, -1] and reloaded.config.projector_config["out_rms"] == 0.25
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_lexical_end_tag_mixes_the_models_own_word_embeddings_and_round_trips(media_paths, tmp_path):
    from onellm.presets import build_preset
    from onellm.train.lexical import captured_word_logits

    model, processor = build_preset("tiny", modalities=["image"], end_tag="lexical")
    batch = processor(text="<image>\nwhat?", image=[media_paths["image"]])
    with torch.no_grad(), captured_word_logits(model) as captured:
        end = model.embed_modality("image", batch["mm_inputs"]["image"])[:, -1]
    words = model.get_input_embeddings().weight[: model.config.text_config.vocab_size]
    assert torch.allclose(end, captured[("image", 0)][0].softmax(-1) @ words, atol=1e-6)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert reloaded.config.projector_config["end_tag"] == "lexical"
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_out_rms_needs_the_standardising_head():
    from onellm.presets import build_preset

    with pytest.raises(ValueError, match="out_rms applies to norm 'standardize'"):
        build_preset("tiny", modalities=["image"], norm="layernorm", out_rms=0.25)


def test_trainable_pattern_without_a_group_is_an_error_with_the_fix(tiny):
    """``projector`` names a family of groups: the error suggests ``projector.*``; a typo gets the group list."""
    model, _ = tiny
    with pytest.raises(ValueError, match=r"'projector' matches no parameter group; did you mean 'projector\.\*'\?"):
        set_trainable(model, ["projector"])
    with pytest.raises(ValueError, match=r"'projectr\.\*' matches no parameter group; groups: \[") as caught:
        set_trainable(model, ["projectr.*"])
    assert "did you mean" not in str(caught.value)
