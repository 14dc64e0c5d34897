"""Synthetic surface-normal maps: the depth scene's normals as RGB PNG, (n + 1) / 2 * 255, + the paired RGB view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import register_generator, save_png
from onellm.instruct_data.synth.scene3d import SceneGenerator, render_scene


@register_generator
class NormalGenerator(SceneGenerator):
    modality = "normal"
    map_name = "surface normal map"

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        _, normals, rgb = render_scene(attrs)
        # Camera frame x right, y up, z towards the viewer: the wall (0, 0, 1) encodes as (128, 128, 255).
        save_png(np.round((normals + 1) / 2 * 255).astype(np.uint8), Path(root) / f"{stem}.png")
        save_png(np.round(rgb * 255).astype(np.uint8), Path(root) / f"{stem}_rgb.png")
        return {"modality": self.modality, "path": f"{stem}.png", "rgb_path": f"{stem}_rgb.png"}
