"""The universal encoder equals each HF vision model's own forward on images (parity), and takes any tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from onellm.encoder import UniversalEncoder, supported_encoders

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def build(kind):
    torch.manual_seed(0)
    if kind == "clip":
        return CLIPVisionModel(CLIPVisionConfig(**SMALL, image_size=32, patch_size=8)).eval()
    if kind == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(**SMALL, image_size=32, patch_size=8)).eval()
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # non-trivial class token and LayerScale, as in trained weights
        model.embeddings.cls_token.normal_()
    return model


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_parity_with_the_hf_forward(kind):
    model = build(kind)
    pixels = torch.randn(2, 3, 32, 32)
    encoder = UniversalEncoder(model)
    with torch.no_grad():
        ours = encoder(encoder.embed_image(pixels))
        reference = model(pixel_values=pixels).last_hidden_state
        if kind == "clip":  # HF CLIP normalises only the pooled token; OneLLM normalises every token
            reference = model.post_layernorm(reference)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_feature_layers_concatenate_post_normed_blocks(kind):
    model = build(kind)
    pixels = torch.randn(2, 3, 32, 32)
    last, both = UniversalEncoder(model), UniversalEncoder(model, feature_layers=[1, -1])
    assert (last.out_width, both.out_width) == (32, 64)
    with torch.no_grad():
        ours = both(both.embed_image(pixels))
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states  # embeddings, block 1, block 2
        norm = model.layernorm if kind == "dinov2" else model.post_layernorm
        assert torch.allclose(ours[..., :32], norm(hidden[1]), atol=1e-5)
        assert torch.allclose(ours[..., 32:], last(last.embed_image(pixels)), atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_feature_layer_zero_is_the_input_to_the_first_block(kind):
    """Layer 0 = the tokens entering block 1 (patch embedding + positions, after the pre-norm where the family has
    one), post-normed like the others: HF's hidden_states[0]."""
    model = build(kind)
    pixels = torch.randn(2, 3, 32, 32)
    encoder = UniversalEncoder(model, feature_layers=[0, -1])
    with torch.no_grad():
        ours = encoder(encoder.embed_image(pixels))
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        norm = model.layernorm if kind == "dinov2" else model.post_layernorm
        assert torch.allclose(ours[..., :32], norm(hidden[0]), atol=1e-5)
        assert torch.allclose(ours[..., 32:], UniversalEncoder(model)(encoder.embed_image(pixels)), atol=1e-5)


def test_feature_layers_out_of_range_are_named():
    with pytest.raises(ValueError, match=r"vision_feature_layers \[3\]: each must be a block index in 1..2, -2..-1"):
        UniversalEncoder(build("clip"), feature_layers=[3])
    with pytest.raises(ValueError, match="the encoder has 2 blocks"):
        UniversalEncoder(build("clip"), feature_layers=[-3])


def test_interpolates_positions_for_another_grid():
    encoder = UniversalEncoder(build("clip"))
    tokens = encoder.embed_image(torch.randn(1, 3, 48, 48))  # 6x6 grid from a 4x4 table
    assert tokens.shape == (1, 36, 32)
    assert encoder(tokens).shape == (1, 37, 32)


def test_non_square_or_misaligned_images_are_refused():
    encoder = UniversalEncoder(build("clip"))
    with pytest.raises(ValueError, match="multiple of the encoder patch size 8"):
        encoder.embed_image(torch.randn(1, 3, 30, 30))


def test_unsupported_family_is_named():
    from transformers import ViTConfig, ViTModel

    with pytest.raises(ValueError, match="'vit' is not supported"):
        UniversalEncoder(ViTModel(ViTConfig(**SMALL, image_size=32, patch_size=8)))
    assert supported_encoders() == ["clip_vision_model", "dinov2", "siglip_vision_model"]
