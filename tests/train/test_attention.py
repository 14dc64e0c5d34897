"""What the training loop changes about the frozen models while it trains, on the real small preset: the attention
kernel (``train.attention``: eager on a CPU), under bf16 frozen linear weights held in bf16, and with
``train.compile`` the LLM's decoder layers compiled."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from onellm.instruct_data.collator import Collator
from onellm.train.common import load_start
from onellm.train.config import load_stage
from onellm.train.loop import Trainer, label_loss_sum

SMALL = Path(__file__).resolve().parents[2] / "configs" / "small"


def _loss(model, batch) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss


def test_eager_training_attention_gives_the_sdpa_loss_and_is_undone_after_training(tmp_path):
    stage = load_stage(SMALL / "align_image.yaml", {"output_dir": str(tmp_path)})
    assert stage.train.resolved_attention("cpu") == "eager"
    assert stage.train.resolved_attention("cuda") is None  # elsewhere the model keeps its own kernel
    model, processor = load_start(stage)
    model.eval()
    conversations = [  # different lengths: the shorter row is padded, so the mask matters
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "blue"}],
        [
            {"role": "user", "content": "Describe a small red circle on the left of a white square."},
            {"role": "assistant", "content": "a small red circle on the left and a large white square on the right"},
        ],
    ]
    batch = Collator(processor)([{"conversation": c} for c in conversations])
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()
    llm, vision = model.language_model, model.encoder.model
    own = llm.config._attn_implementation
    assert own != "eager" and vision.config._attn_implementation == own
    with torch.no_grad():
        reference = _loss(model, batch)
    trainer = SimpleNamespace(core=model, cfg=stage.train, acc=SimpleNamespace(device=torch.device("cpu")))
    with Trainer.training_attention(trainer):
        assert llm.config._attn_implementation == "eager"
        assert vision.config._attn_implementation == "eager"  # tokenizers train through the encoder
        with torch.no_grad():
            eager = _loss(model, batch)
    assert llm.config._attn_implementation == own and vision.config._attn_implementation == own
    torch.testing.assert_close(eager, reference, rtol=1e-4, atol=1e-4)
    assert 0.5 < float(reference) < 20.0


def test_bf16_training_holds_frozen_linear_weights_in_bf16_with_the_numbers_of_autocast(tmp_path):
    stage = load_stage(SMALL / "align_image.yaml", {"output_dir": str(tmp_path), "train.precision": "bf16"})
    model, processor = load_start(stage)
    llm, vision = model.language_model, model.encoder.model
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    trainable = llm.get_decoder().layers[0].mlp.down_proj.weight
    trainable.requires_grad_(True)  # a trainable linear weight (e.g. a full fine-tune) stays fp32
    conversation = [
        {"role": "user", "content": "<image>\nWhat colour is the star?"},
        {"role": "assistant", "content": "blue"},
    ]
    pixels = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    inputs = {**Collator(processor)([{"conversation": conversation, "media": [("image", pixels[0])]}])}

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "labels", "mm_inputs")}).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.projector.parameters() if p.grad is not None]

    reference, reference_grads = loss_and_grads()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = SimpleNamespace(
        core=model, cfg=stage.train, acc=SimpleNamespace(device=torch.device("cpu")), sharded=False
    )
    with Trainer.frozen_llm_in_bf16(trainer):
        held = {name for name, p in model.named_parameters() if p.dtype == torch.bfloat16}
        assert "language_model.model.layers.0.self_attn.q_proj.weight" in held
        assert "language_model.model.layers.0.mlp.up_proj.weight" in held
        assert not any("norm" in name or "embed" in name or "projector" in name for name in held)
        assert not any(name.startswith("encoder.") for name in held)  # the feature cache runs it in fp32
        assert trainable.dtype == torch.float32
        assert llm.get_input_embeddings().weight.dtype == torch.float32  # lookups stay fp32
        head = llm.get_output_embeddings().weight  # the tied LM head: its own bf16 copy of the table
        assert head.dtype == torch.bfloat16 and not head.requires_grad
        assert torch.equal(head, llm.get_input_embeddings().weight.to(torch.bfloat16))
        assert vision.embeddings.position_embeddings.dtype == torch.float32
        loss, grads = loss_and_grads()
    torch.testing.assert_close(loss, reference, rtol=0, atol=0)  # the same numbers as autocast's own casts
    for grad, expected in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-9)
    assert llm.get_input_embeddings().weight is llm.get_output_embeddings().weight  # tied again
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].dtype == torch.float32
        assert torch.equal(after[name], tensor), name
    fp32 = load_stage(SMALL / "align_image.yaml", {"output_dir": str(tmp_path), "train.precision": "fp32"})
    trainer.cfg = fp32.train
    with Trainer.frozen_llm_in_bf16(trainer):  # fp32 training touches nothing
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compiled_training_steps_give_the_eager_loss_and_gradients_and_are_undone_after_training(tmp_path):
    """``train.compile`` (the small curriculum's stages): SmolLM2's decoder layers run through torch.compile while
    the stage trains, with autocast's numbers up to bf16 rounding, and run eagerly again afterwards."""
    stage = load_stage(
        SMALL / "align_image.yaml", {"output_dir": str(tmp_path), "train.precision": "bf16", "train.compile": True}
    )
    model, processor = load_start(stage)
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    layers = model.language_model.get_decoder().layers
    pixels = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    records = [
        {
            "conversation": [
                {"role": "user", "content": f"<image>\n{question}"},
                {"role": "assistant", "content": answer},
            ],
            "media": [("image", pixels[i])],
        }
        for i, (question, answer) in enumerate([("What colour is the star?", "blue"), ("Describe it.", "a red disc")])
    ]
    inputs = {**Collator(processor)(records)}
    inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels", "mm_inputs")}
    trainer = SimpleNamespace(
        core=model, cfg=stage.train, acc=SimpleNamespace(device=torch.device("cpu")), sharded=False
    )

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = label_loss_sum(model, inputs) / int((inputs["labels"] != -100).sum())
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.projector.parameters() if p.grad is not None])

    with Trainer.training_attention(trainer), Trainer.frozen_llm_in_bf16(trainer):
        reference, reference_grads = loss_and_grads()
        with Trainer.compiled_llm(trainer):
            assert all(layer._compiled_call_impl is not None for layer in layers)
            loss, grads = loss_and_grads()
            inputs["input_ids"], inputs["labels"] = inputs["input_ids"][:1], inputs["labels"][:1]  # another shape:
            inputs["attention_mask"] = inputs["attention_mask"][:1]  # dynamic, no recompilation error
            inputs["mm_inputs"] = {"image": inputs["mm_inputs"]["image"][:1]}
            assert torch.isfinite(loss_and_grads()[0])
    assert all(layer._compiled_call_impl is None for layer in layers)
    assert not any("_orig_mod" in name for name in model.state_dict())  # checkpoints keep their keys
    torch.testing.assert_close(loss, reference, rtol=2e-2, atol=0)
    assert float(torch.nn.functional.cosine_similarity(grads, reference_grads, dim=0)) > 0.99
    assert float(reference) > 0.5
    off = load_stage(SMALL / "align_image.yaml", {"output_dir": str(tmp_path), "train.compile": False})
    trainer.cfg = off.train
    with Trainer.compiled_llm(trainer):  # compile off: nothing compiled
        assert all(layer._compiled_call_impl is None for layer in layers)
