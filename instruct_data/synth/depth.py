"""Synthetic depth maps: a primitive in front of a wall (16-bit PNG in millimetres, 128x128) + the paired RGB view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import register_generator, save_png
from onellm.instruct_data.synth.scene3d import DEPTH_NOISE_MM, SceneGenerator, render_scene


@register_generator
class DepthGenerator(SceneGenerator):
    modality = "depth"
    map_name = "depth map"

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        depth, _, rgb = render_scene(attrs)
        millimetres = depth * 1000 + rng.normal(0, DEPTH_NOISE_MM, depth.shape)
        # uint16 holds 0-65 535 mm; the farthest wall is 5 500 mm.
        save_png(np.clip(np.round(millimetres), 1, 65_535).astype(np.uint16), Path(root) / f"{stem}.png")
        save_png(np.round(rgb * 255).astype(np.uint8), Path(root) / f"{stem}_rgb.png")
        return {"modality": self.modality, "path": f"{stem}.png", "rgb_path": f"{stem}_rgb.png"}
