"""Run a curriculum: its stages in order, skipping finished ones and resuming an interrupted one.

The curriculum's own outputs (``<output_dir>/summary.md`` and ``loss.png``) cover every training stage end to end.
"""

from __future__ import annotations

from pathlib import Path

from onellm.train.config import CurriculumConfig
from onellm.train.loop import LoopResult
from onellm.train.recipes import run_stage
from onellm.train.report import curriculum_summary, plot_losses


def run_curriculum(curriculum: CurriculumConfig, accelerator) -> dict[str, dict[str, str]]:
    """Stage name -> its outputs, for every stage (finished earlier or now)."""
    outputs = {}
    for stage in curriculum.stages:
        outputs[stage.name] = run_stage(stage, accelerator)
    if accelerator.is_main_process:
        write_curriculum_report(curriculum)
    return outputs


def write_curriculum_report(curriculum: CurriculumConfig) -> Path:
    output_dirs = {Path(stage.output_dir) for stage in curriculum.stages}
    output_dir = output_dirs.pop() if len(output_dirs) == 1 else Path(curriculum.stages[-1].output_dir)
    curves = []
    for stage in curriculum.stages:
        history = stage.folder.history()
        if history is not None:
            result = LoopResult(
                steps=history.steps, resumed_from=0, seconds=0.0, samples=0, losses=history.losses, val=history.val
            )
            curves.append((stage.name, result))
    if curves:
        plot_losses(curves, output_dir / "loss.png", f"curriculum {curriculum.source}")
    path = output_dir / "summary.md"
    path.write_text(curriculum_summary(output_dir, curriculum.stages), encoding="utf-8")
    return path


__all__ = ["run_curriculum", "write_curriculum_report"]
