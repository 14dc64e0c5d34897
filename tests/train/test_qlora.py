"""QLoRA on the CPU: the instruct stage with ``lora.qlora: true`` trains LoRA on a 4-bit nf4 LLM (bitsandbytes, for
real) and still exports a full-precision final/ and merged/ checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from onellm import OneLLMForConditionalGeneration
from onellm.train.common import load_start
from onellm.train.config import load_stage
from onellm.train.recipes import run_stage

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def test_qlora_instruct_stage_runs_on_cpu(synth_tiny, tmp_path, quick, accelerator):
    import bitsandbytes as bnb

    overrides = quick(
        synth_tiny,
        tmp_path,
        steps=3,
        **{
            "init_from.stage": None,
            "init_from.preset": "tiny",
            "lora.qlora": True,
            "train.eval_interval": 0,
        },
    )
    stage = load_stage(TINY / "instruct.yaml", overrides)

    model, _ = load_start(stage, quantize_llm=True)
    layers = dict(model.named_modules())
    assert isinstance(layers["language_model.model.layers.0.self_attn.q_proj"], bnb.nn.Linear4bit)
    assert layers["language_model.model.layers.0.mlp.down_proj"].weight.quant_type == "nf4"
    assert not isinstance(layers["projector.heads.image.proj_in.0"], bnb.nn.Linear4bit)
    assert not isinstance(layers["encoder.model.encoder.layers.0.mlp.fc1"], bnb.nn.Linear4bit)

    outputs = run_stage(stage, accelerator)
    rows = [json.loads(line) for line in (stage.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    adapter = load_file(str(Path(outputs["adapter"]) / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # LoRA B starts at 0: it trained
    merged = OneLLMForConditionalGeneration.from_pretrained(outputs["merged"])
    q_proj = dict(merged.named_modules())["language_model.model.layers.0.self_attn.q_proj"]
    assert type(q_proj) is torch.nn.Linear and q_proj.weight.dtype == torch.float32
    assert "QLoRA: LLM in 4-bit nf4" in (stage.stage_dir / "summary.md").read_text()
