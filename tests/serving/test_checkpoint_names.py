"""Checkpoint names -> module names (what the vLLM plugin loads by) against the reference: transformers' own
``from_pretrained`` of the same checkpoint, for every registered encoder family. No vLLM engine: fast."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from onellm.encoder import supported_encoders
from onellm.modeling import OneLLMForConditionalGeneration
from onellm.serving.checkpoint_names import CheckpointKeyError, CheckpointNames


def saved(model, folder) -> dict[str, torch.Tensor]:
    model.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


def test_every_registered_encoder_family_has_a_tiny_config(kit):
    assert sorted(kit.encoder_configs()) == supported_encoders(), "add the new family to conftest.encoder_configs"


@pytest.mark.parametrize("family", ["clip_vision_model", "siglip_vision_model", "dinov2", "dinov2 swiglu"])
def test_names_and_tensors_equal_what_from_pretrained_loads(family, kit, tmp_path):
    """Every checkpoint weight outside the LLM lands, through :class:`CheckpointNames`, under the module name and
    with the value transformers' ``from_pretrained`` gives it (DINOv2's renamed attention; SwiGLU DINOv2's fused
    ``weights_in`` split in two by transformers' converter); the LLM's names pass unchanged (vLLM maps them)."""
    config = kit.encoder_configs()[family.split()[0]]
    if family == "dinov2 swiglu":
        config.use_swiglu_ffn = True
    model, _ = kit.family_model(config)
    checkpoint = saved(model, tmp_path)
    reference = OneLLMForConditionalGeneration.from_pretrained(str(tmp_path)).state_dict()

    converted = {name: (key, tensor) for key, name, tensor in CheckpointNames(model).convert(checkpoint.items())}

    llm = {n for n in converted if n.startswith("language_model.")}
    assert llm == {k for k in checkpoint if k.startswith("language_model.")}
    assert all(converted[n][0] == n for n in llm)
    assert set(converted) - llm == {n for n in reference if not n.startswith("language_model.")}
    assert all(torch.equal(converted[n][1], reference[n]) for n in converted)
    renamed = {key for key, _ in converted.values()} - set(reference)
    if family.startswith("dinov2"):  # the layout the vLLM loader used to stop at (issue 15)
        assert "encoder.model.encoder.layer.0.attention.attention.query.weight" in renamed
    if family == "dinov2 swiglu":
        assert "encoder.model.encoder.layer.1.mlp.weights_in.weight" in renamed


def test_an_old_clip_checkpoint_with_the_vision_model_prefix_loads(kit, tmp_path):
    """transformers < 5 nested CLIP's weights under ``vision_model.``; its PrefixChange maps them back."""
    model, _ = kit.family_model(kit.encoder_configs()["clip_vision_model"])
    checkpoint = saved(model, tmp_path)
    old = {k.replace("encoder.model.", "encoder.model.vision_model.", 1): v for k, v in checkpoint.items()}
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reference = OneLLMForConditionalGeneration.from_pretrained(str(tmp_path)).state_dict()

    converted = {name: tensor for _, name, tensor in CheckpointNames(model).convert(old.items())}

    assert all(torch.equal(tensor, reference[name]) for name, tensor in converted.items())
    assert "encoder.model.embeddings.patch_embedding.weight" in converted


def test_a_key_that_maps_to_no_module_is_named_in_the_error(kit, tmp_path):
    model, _ = kit.family_model(kit.encoder_configs()["dinov2"])
    checkpoint = saved(model, tmp_path)
    checkpoint["encoder.model.encoder.layer.0.attention.attention.gate.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointKeyError, match=r"'encoder\.model\.encoder\.layer\.0\.attention\.attention\.gate"):
        list(CheckpointNames(model).convert(checkpoint.items()))

    renamed = {"projector.experts.0.not_there.weight": torch.zeros(2)}
    with pytest.raises(CheckpointKeyError, match=r"checkpoint key 'projector\.experts\.0\.not_there\.weight'"):
        list(CheckpointNames(model).convert(renamed.items()))


def test_weights_come_in_the_dtype_the_model_holds_them_in(kit, tmp_path):
    """vLLM builds the modality modules in its serving dtype (bfloat16 for a float32 checkpoint where bf16 is native):
    their weights are rounded on the way in, to exactly what the parameter's own copy would hold, and the LLM's pass
    as stored (vLLM's loader places them)."""
    model, _ = kit.family_model(kit.encoder_configs()["dinov2"])
    checkpoint = saved(model, tmp_path)
    reference = OneLLMForConditionalGeneration.from_pretrained(str(tmp_path)).state_dict()  # float32, module names
    served = model.to(torch.bfloat16)
    own = served.state_dict()

    converted = {name: tensor for _, name, tensor in CheckpointNames(served).convert(checkpoint.items())}

    modality_part = {n: t for n, t in converted.items() if not n.startswith("language_model.")}
    assert modality_part and all(t.dtype == torch.bfloat16 for t in modality_part.values())
    for name, tensor in modality_part.items():
        copied = torch.empty_like(own[name]).copy_(reference[name])
        assert torch.equal(tensor, copied), name
    assert all(t.dtype == torch.float32 for n, t in converted.items() if n.startswith("language_model."))
