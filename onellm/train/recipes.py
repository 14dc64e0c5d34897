"""Training recipes, one function per ``recipe:`` value of a stage YAML. Each reads top to bottom:
load the starting model -> decide what trains (and say so) -> data -> train -> write the outputs.

    align           alignment stages (align_image, align_av3d, align_rest): LLM and encoder frozen; the stage's
                    modality tokenizers and UPM parts train (``trainable:`` in the YAML)
    expand_experts  OneLLM's step 2: the UPM is built from the trained one-expert image projector (K copies)
    instruct        instruction tuning: PEFT LoRA on the LLM (4-bit nf4 base with ``lora.qlora``), UPM trainable;
                    writes the full checkpoint, the PEFT adapter and a merged checkpoint

Every recipe returns the stage's outputs and writes ``<output_dir>/<stage>/DONE`` last; a curriculum skips stages
that have it. An interrupted training stage resumes from its newest checkpoint (see :mod:`onellm.train.loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from onellm.registry import Registry
from onellm.train.common import (
    add_lora,
    build_data,
    freeze,
    gathered_state,
    load_start,
    log,
    mark_done,
    save_checkpoint,
    set_projector,
    stage_collator,
    trainable_table,
    upm_from_heads,
)
from onellm.train.config import StageConfig
from onellm.train.loop import LoopResult, Trainer
from onellm.train.report import first_last, plot_losses, stage_summary

RECIPES: Registry[Callable] = Registry("recipe")


def register_recipe(name: str):
    return RECIPES.register(name)


def run_stage(stage: StageConfig, accelerator) -> dict[str, str]:
    """Run one stage unless it has finished (then return its recorded outputs)."""
    if stage.folder.done:
        log(f"stage {stage.name}: already finished ({stage.stage_dir}); skipping")
        return stage.folder.outputs
    log(f"stage {stage.name} ({stage.recipe}) from {stage.source} -> {stage.stage_dir}")
    outputs = RECIPES[stage.recipe](stage, accelerator)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return outputs


@register_recipe("align")
def align(stage: StageConfig, accelerator) -> dict[str, str]:
    """Alignment: LLM and encoder frozen; the listed tokenizers and UPM parts learn to feed the LLM."""
    model, processor = load_start(stage)

    counts, groups = freeze(model, stage.trainable)
    table = trainable_table(model, counts)
    if accelerator.is_main_process:
        log(f"stage {stage.name}: trainable parameters\n{table}")

    data = _data(stage, processor, accelerator)

    trainer = build_trainer(stage, accelerator, model, model, processor, data, groups)
    result = trainer.fit()

    final = stage.stage_dir / "final"
    weights = gathered_state(accelerator, trainer.model)  # None unless FSDP / DeepSpeed sharded the model
    if accelerator.is_main_process:
        save_checkpoint(model, processor, final, weights)
    outputs = {"checkpoint": str(final)}
    _finish(stage, accelerator, result, table, data, trainer, outputs)
    return outputs


@register_recipe("expand_experts")
def expand(stage: StageConfig, accelerator) -> dict[str, str]:
    """Build the K-expert UPM from the trained one-expert image projector; nothing trains."""
    model, processor = load_start(stage)
    source = "image"
    if model.projector.num_experts != 1:
        raise ValueError(
            f"{stage.source}: init_from must hold a one-expert projector, found {model.projector.num_experts}"
        )

    upm = upm_from_heads(model.projector, source, stage.expand.num_experts, model.config.modalities)
    set_projector(model, upm)
    if accelerator.is_main_process:
        log(
            f"stage {stage.name}: UPM = {stage.expand.num_experts} copies of the trained {source} projector, "
            f"heads for {', '.join(model.config.modalities)}"
        )

    final = stage.stage_dir / "final"
    outputs = {"checkpoint": str(final)}
    if accelerator.is_main_process:
        save_checkpoint(model, processor, final)
        mark_done(stage, outputs, {"steps": 0})
    return outputs


@register_recipe("instruct")
def instruct(stage: StageConfig, accelerator) -> dict[str, str]:
    """Instruction tuning: LoRA on the LLM (QLoRA: 4-bit nf4 base), UPM trainable."""
    model, processor = load_start(stage, quantize_llm=stage.lora.qlora)
    peft_model = add_lora(model, stage.lora, stage.seed)

    counts, groups = freeze(peft_model, stage.trainable)
    table = trainable_table(peft_model, counts)
    if accelerator.is_main_process:
        mode = "QLoRA (LLM in 4-bit nf4)" if stage.lora.qlora else "LoRA"
        log(f"stage {stage.name}: {mode} r={stage.lora.r}; trainable parameters\n{table}")

    data = _data(stage, processor, accelerator)

    trainer = build_trainer(stage, accelerator, peft_model, model, processor, data, groups)
    result = trainer.fit()

    # Outputs: adapter/ (PEFT folder on top of final/), final/ (full-precision base + everything trained except
    # LoRA), merged/ (LoRA folded into full-precision LLM weights: what serving loads directly).
    outputs = {
        "checkpoint": str(stage.stage_dir / "final"),
        "adapter": str(stage.stage_dir / "adapter"),
        "merged": str(stage.stage_dir / "merged"),
    }
    weights = gathered_state(accelerator, trainer.model)  # None unless FSDP / DeepSpeed sharded the model
    if accelerator.is_main_process:
        export_lora_stage(
            stage,
            accelerator.unwrap_model(trainer.model),
            processor,
            Path(outputs["checkpoint"]),
            Path(outputs["adapter"]),
            Path(outputs["merged"]),
            weights,
        )
    _finish(stage, accelerator, result, table, data, trainer, outputs)
    return outputs


def export_lora_stage(
    stage: StageConfig, peft_model, processor, final: Path, adapter: Path, merged: Path, weights: dict | None = None
) -> None:
    """Write final/, adapter/ and merged/ from a trained PEFT model.

    The full-precision base is rebuilt from ``init_from`` (for QLoRA the training copy of the LLM is 4-bit), the
    trained non-LoRA weights (UPM, tokenizers) are copied in, and the adapter is folded into that base.
    ``weights``: the gathered state dict when training was sharded (FSDP / DeepSpeed).
    """
    import torch
    from peft import PeftModel

    from onellm.train.checkpoint import write_atomically

    prefix = "base_model.model."
    values = weights if weights is not None else {n: p for n, p in peft_model.named_parameters()}
    trained = {
        name[len(prefix) :]: values[name].detach().float()
        for name, p in peft_model.named_parameters()
        if p.requires_grad and "lora_" not in name
    }
    base, _ = load_start(stage, quantize_llm=False)
    params = dict(base.named_parameters())
    missing = sorted(set(trained) - set(params))
    if missing:
        raise RuntimeError(f"trained weights {missing[:3]} have no place in the full-precision base")
    with torch.no_grad():
        for name, tensor in trained.items():
            params[name].copy_(tensor)
    save_checkpoint(base, processor, final)

    peft_model.peft_config["default"].base_model_name_or_path = str(final.resolve())
    write_atomically(adapter, lambda folder: peft_model.save_pretrained(str(folder), state_dict=weights))

    merged_model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    save_checkpoint(merged_model, processor, merged)


# --- shared tail of the training recipes ----------------------------------------------------------------------------


def _data(stage, processor, accelerator):
    """The stage's datasets and mixture; the main process logs what validation kept and the mixture."""
    data = build_data(stage, processor, accelerator)
    if accelerator.is_main_process:
        for report in data.reports:
            log(report.summary(limit=20))
        log(f"mixture: {data.mixture.describe()}")
    return data


def build_trainer(stage, accelerator, model, core, processor, data, groups, persist_features: bool = True) -> Trainer:
    """The stage's :class:`Trainer` over ``data`` (its feature cache kept on disk under ``output_dir`` unless
    ``persist_features`` is off: memory only, e.g. for benchmarks)."""
    return Trainer(
        accelerator=accelerator,
        model=model,
        core=core,
        collator=stage_collator(stage, processor),
        train_set=data.train,
        val_set=data.val,
        mixture=data.mixture,
        groups=groups,
        train=stage.train,
        data=stage.data,
        stage_dir=stage.stage_dir,
        seed=stage.seed,
        feature_cache_dir=Path(stage.output_dir) / "feature_cache" if persist_features else None,
        config_snapshot=stage.to_dict(),
        log=log if accelerator.is_main_process else (lambda *_: None),
    )


def _finish(
    stage, accelerator, result: LoopResult, table: str, data, trainer: Trainer, outputs: dict[str, str]
) -> None:
    """loss.png, summary.md, history.json, then DONE (rank 0); every process waits for it."""
    if accelerator.is_main_process:
        stage_dir = stage.stage_dir
        plot_losses([(stage.name, result)], stage_dir / "loss.png", f"{stage.name}: training and validation loss")
        stage.folder.write_history(result.steps, result.losses, result.val)
        data_lines = [line for report in data.reports for line in report.summary(limit=20).splitlines()]
        summary = stage_summary(
            stage=stage,
            result=result,
            trainable=table,
            data_lines=data_lines,
            mixture=data.mixture.describe(),
            outputs=outputs,
            world_size=accelerator.num_processes,
            cached=trainer.cached,
        )
        (stage_dir / "summary.md").write_text(summary, encoding="utf-8")
        first, last = first_last(result.losses)
        val = result.val[-1][1].get("all") if result.val else None
        mark_done(
            stage,
            outputs,
            {"steps": result.steps, "first_loss": first, "last_loss": last, "val_loss": val, "seconds": result.seconds},
        )
        log(
            f"stage {stage.name}: loss {first:.3f} -> {last:.3f}; outputs: {outputs}; summary: {stage_dir / 'summary.md'}"
        )
    accelerator.wait_for_everyone()


__all__ = ["RECIPES", "build_trainer", "export_lora_stage", "register_recipe", "run_stage"]
