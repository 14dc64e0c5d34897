"""``train.attention``: the LLM's attention kernel while training (eager on a CPU), on the real small preset."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from onellm.instruct_data.collator import Collator
from onellm.train.common import load_start
from onellm.train.config import load_stage
from onellm.train.loop import Trainer

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
    llm = model.language_model
    own = llm.config._attn_implementation
    assert own != "eager"
    with torch.no_grad():
        reference = _loss(model, batch)
    trainer = SimpleNamespace(core=model, cfg=stage.train, acc=SimpleNamespace(device=torch.device("cpu")))
    with Trainer.training_attention(trainer):
        assert llm.config._attn_implementation == "eager"
        with torch.no_grad():
            eager = _loss(model, batch)
    assert llm.config._attn_implementation == own
    torch.testing.assert_close(eager, reference, rtol=1e-4, atol=1e-4)
    assert 0.5 < float(reference) < 20.0


def test_bf16_training_holds_the_frozen_llm_in_bf16_and_gives_back_the_fp32_weights(tmp_path):
    stage = load_stage(SMALL / "align_image.yaml", {"output_dir": str(tmp_path), "train.precision": "bf16"})
    model, _ = load_start(stage)
    llm = model.language_model
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    trainable = llm.get_decoder().norm.weight
    trainable.requires_grad_(True)  # a trainable LLM weight (e.g. a full fine-tune) stays fp32
    before = {name: p.detach().clone() for name, p in llm.named_parameters()}
    trainer = SimpleNamespace(
        core=model, cfg=stage.train, acc=SimpleNamespace(device=torch.device("cpu")), sharded=False
    )
    with Trainer.frozen_llm_in_bf16(trainer):
        dtypes = {p.dtype for p in llm.parameters() if not p.requires_grad}
        assert dtypes == {torch.bfloat16}
        assert trainable.dtype == torch.float32
        assert llm.get_input_embeddings().weight is llm.get_output_embeddings().weight  # still tied
        assert all(p.dtype == torch.float32 for p in model.projector.parameters())
    after = dict(llm.named_parameters())
    for name, tensor in before.items():
        assert after[name].dtype == torch.float32
        assert torch.equal(after[name], tensor), name
    fp32 = load_stage(SMALL / "align_image.yaml", {"output_dir": str(tmp_path), "train.precision": "fp32"})
    trainer.cfg = fp32.train
    with Trainer.frozen_llm_in_bf16(trainer):  # fp32 training touches nothing
        assert all(p.dtype == torch.float32 for p in llm.parameters())
