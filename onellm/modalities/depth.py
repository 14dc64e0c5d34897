"""Depth map: 16/8-bit PNG or .npy [H, W] -> min-max scaled over valid pixels -> 3 channels -> the image path.

A record may pair the map with its RGB image (`rgb_path`); the pair is carried by the data layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from onellm.modalities import register_modality
from onellm.modalities.base import WRONG_SHAPE, Modality, Source
from onellm.modalities.image import ImageLikeModality, fit_square_array, normalise, open_image


def load_map(modality: Modality, source: Source) -> np.ndarray:
    """A depth or normal map as float32 ``[H, W]`` or ``[H, W, 3]`` from a PNG or a .npy/array."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return modality.load_array(source)
    data = modality.read_bytes(source)
    if data[:6] == b"\x93NUMPY":
        return modality.load_array(source)
    return np.asarray(open_image(modality, source, data), dtype=np.float32)


@register_modality
class DepthModality(ImageLikeModality):
    name = "depth"
    order = 4

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        depth = load_map(self, source)
        if depth.ndim == 3 and depth.shape[-1] in (3, 4):  # a grey map saved as RGB(A): take one channel
            depth = depth[..., 0]
        if depth.ndim != 2:
            raise self.fail(source, f"expected an [H, W] depth map, found shape {list(depth.shape)}", WRONG_SHAPE)
        self.check_finite(source, depth)
        valid = depth > 0  # 0 marks missing depth in sensor maps
        if not valid.any():
            raise self.fail(source, "the depth map has no valid (positive) pixel")
        low, high = float(depth[valid].min()), float(depth[valid].max())
        scaled = np.where(valid, (depth - low) / max(high - low, 1e-6), 0.0).astype(np.float32)
        square = fit_square_array(scaled[..., None], opts["image_size"])
        return normalise(np.repeat(np.clip(square, 0.0, 1.0), 3, axis=-1), opts["mean"], opts["std"])
