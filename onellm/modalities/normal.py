"""Surface-normal map: RGB PNG encoding (n+1)/2*255, or .npy [H, W, 3] in [-1, 1] -> the image path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from onellm.modalities import register_modality
from onellm.modalities.base import ONELLM_SET, WRONG_SHAPE, Source, npy_shape
from onellm.modalities.depth import MapModality, load_map
from onellm.modalities.image import fit_square_array, image_mode, normalise


@register_modality
class NormalModality(MapModality):
    name = "normal"
    group = ONELLM_SET
    order = 5
    noun = "surface normal map"
    suffixes = (".png", ".npy")

    def file_match(self, path: Path) -> int:
        """An ``[H, W, 3]`` array; an RGB image may be one too ((n + 1) / 2 * 255), but a photo is likelier."""
        if path.suffix.lower() == ".npy":
            shape = npy_shape(path)
            return 2 if shape is not None and len(shape) == 3 and shape[-1] == 3 else 0
        return 1 if image_mode(path) in ("RGB", "RGBA") else 0

    def preprocess_map(self, source: Source, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        normals = load_map(self, source)
        if normals.ndim != 3 or normals.shape[-1] not in (3, 4):
            raise self.fail(source, f"expected an [H, W, 3] normal map, found shape {list(normals.shape)}", WRONG_SHAPE)
        normals = normals[..., :3]
        self.check_finite(source, normals)
        if normals.min() < 0:  # unit vectors in [-1, 1] (a .npy map)
            unit = (normals + 1.0) / 2.0
        else:  # an 8- or 16-bit encoded PNG
            unit = normals / (65535.0 if normals.max() > 255 else 255.0)
        square = fit_square_array(unit, opts["image_size"])
        return normalise(np.clip(square, 0.0, 1.0), opts["mean"], opts["std"])
