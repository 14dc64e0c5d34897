"""End-of-stage outputs a person reads: ``loss.png`` and a one-page ``summary.md`` (per stage and per curriculum)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onellm.train.loop import LoopResult


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), bias-corrected so the curve starts at the data."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def first_last(losses: list[tuple[int, float]], window: int = 10) -> tuple[float, float]:
    """Mean training loss over the first and the last ``window`` steps (single steps are noisy)."""
    values = [loss for _, loss in losses]
    if not values:
        return float("nan"), float("nan")
    window = max(1, min(window, len(values) // 2 or 1))
    return sum(values[:window]) / window, sum(values[-window:]) / window


def plot_losses(curves: list[tuple[str, LoopResult]], path: Path, title: str) -> None:
    """Training loss (raw, faint; smoothed, solid) and validation loss (dots) of one or more stages, end to end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    offset = 0
    for index, (name, result) in enumerate(curves):
        color = f"C{index % 10}"
        steps = [offset + s for s, _ in result.losses]
        values = [v for _, v in result.losses]
        axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        axis.plot(steps, smooth(values), color=color, linewidth=1.8, label=f"{name} (train)")
        val_steps = [offset + s for s, v in result.val if "all" in v]
        axis.plot(
            val_steps,
            [v["all"] for _, v in result.val if "all" in v],
            "o",
            color=color,
            markersize=4,
            label=f"{name} (val)" if val_steps else None,
        )
        if len(curves) > 1 and index:
            axis.axvline(offset, color="grey", linewidth=0.6, linestyle=":")
        offset += result.steps
    axis.set_xlabel("optimizer step" + (" (stages end to end)" if len(curves) > 1 else ""))
    axis.set_ylabel("mean token loss (assistant turns)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def stage_summary(
    *,
    stage: Any,
    result: LoopResult,
    trainable: str,
    data_lines: list[str],
    mixture: str,
    outputs: dict[str, str],
    world_size: int,
    cached: list[str],
) -> str:
    """Markdown for one stage: what trained, on what, how fast, how the loss moved, where the outputs are."""
    train = stage.train
    first, last = first_last(result.losses)
    lines = [
        f"# Stage `{stage.name}` ({stage.recipe})",
        "",
        f"- config: `{stage.source}`; init from: `{_init(stage)}`",
        f"- modalities: {', '.join(stage.modalities)}; mixture: {mixture}",
        f"- steps: {result.steps} x global batch {train.batch_size * world_size * train.grad_accum} "
        f"({train.batch_size} x {world_size} process(es) x {train.grad_accum} accumulation); "
        f"{train.schedule} schedule, {train.warmup_steps} warmup steps, {_precision(train)}",
        f"- samples seen: {result.samples}; this run: {result.seconds:.1f} s, median {result.step_seconds:.3f} s/step, "
        f"{train.batch_size * world_size * train.grad_accum / max(result.step_seconds, 1e-9):.1f} samples/s"
        + (f" (resumed at step {result.resumed_from})" if result.resumed_from else ""),
        f"- frozen-feature cache: {', '.join(cached) if cached else 'off'}"
        + (f" ({result.cache_hits} hits, {result.cache_misses} misses this run)" if cached else ""),
        f"- training loss: {first:.3f} (first 10 steps) -> {last:.3f} (last 10 steps)",
    ]
    if stage.lora is not None:
        base = "QLoRA: LLM in 4-bit nf4 (bitsandbytes)" if stage.lora.qlora else "LoRA: LLM in full precision"
        lines.insert(
            3,
            f"- {base}; r={stage.lora.r}, alpha={stage.lora.alpha}, dropout={stage.lora.dropout}, "
            f"targets {', '.join(stage.lora.target_modules)}",
        )
    if result.val:
        step, values = result.val[-1]
        lines.append(f"- validation loss at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
        if len(result.val) > 1:
            lines.append(
                f"- validation loss at step {result.val[0][0]}: {result.val[0][1].get('all', float('nan')):.3f}"
            )
    lines += ["", "## Trainable parameters", "", "```", trainable, "```", "", "## Data", "", "```", *data_lines, "```"]
    lines += ["", "## Outputs", ""] + [f"- {k}: `{v}`" for k, v in outputs.items()]
    lines += ["", "![loss](loss.png)", ""]
    return "\n".join(lines)


def _init(stage: Any) -> str:
    init = stage.init_from
    if init.preset:
        return f"preset {init.preset}" + (f", {init.num_experts} expert(s)" if init.num_experts else "")
    return init.stage and f"stage {init.stage}" or str(init.path)


def curriculum_summary(output_dir: Path, stages: list[Any]) -> str:
    """A table over the stages of a curriculum, read from each stage's DONE file."""
    lines = [
        "# Curriculum summary",
        "",
        "| stage | recipe | steps | first loss | last loss | val loss | seconds | outputs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        info = stage.folder.record()
        if info is None:
            lines.append(f"| {stage.name} | {stage.recipe} | - | - | - | - | - | not finished |")
            continue
        first, last, val = info.get("first_loss"), info.get("last_loss"), info.get("val_loss")
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        outputs = ", ".join(
            f"`{Path(v).relative_to(output_dir) if Path(v).is_relative_to(output_dir) else v}`"
            for v in info["outputs"].values()
        )
        lines.append(
            f"| {stage.name} | {stage.recipe} | {info.get('steps', '-')} | {fmt(first)} | {fmt(last)} | {fmt(val)} | "
            f"{info.get('seconds', 0):.0f} | {outputs} |"
        )
    lines += ["", "![loss](loss.png)", ""]
    return "\n".join(lines)


def _precision(train) -> str:
    if train.precision != "auto":
        return train.precision
    import torch

    return f"auto: {train.resolved_precision('cuda' if torch.cuda.is_available() else 'cpu')}"


__all__ = ["curriculum_summary", "first_last", "plot_losses", "smooth", "stage_summary"]
