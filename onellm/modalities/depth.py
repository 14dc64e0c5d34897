"""Depth map: 16/8-bit PNG or .npy [H, W] -> min-max scaled over valid pixels -> 3 channels -> the image path.

A record may pair the map with its RGB image (`rgb_path`; the data layer passes it as ``extras["rgb"]``). With the
option ``rgb_pair`` (OneLLM's released weights) the input is the pair ``[2, 3, S, S]`` (RGB image, map), encoded
like two video frames and averaged; without it the RGB image is not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from onellm.modalities import get_modality, register_modality
from onellm.modalities.base import ONELLM_SET, WRONG_SHAPE, Modality, Source, npy_shape
from onellm.modalities.image import (
    DEEP_GREY_MODES,
    ImageLikeModality,
    fit_square_array,
    image_mode,
    normalise,
    open_image,
)
from onellm.modalities.video import FrameTokenizer, mean_over_frames


class MapModality(ImageLikeModality):
    """A map rendered as a 3-channel image (depth, surface normals); optionally paired with its RGB image."""

    defaults = {**ImageLikeModality.defaults, "rgb_pair": False}
    preset_options = {**ImageLikeModality.preset_options, "7b": {"image_size": 224, "rgb_pair": True}}
    extra_keys = ("rgb_path",)

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        shape = super().input_shape(**options)
        return (2, *shape) if self.options(**options)["rgb_pair"] else shape

    def preprocess_map(self, source: Source, **options: Any) -> torch.Tensor:
        """The map alone as ``[3, S, S]``."""
        raise NotImplementedError

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        rendered = self.preprocess_map(source, **opts)
        if not opts["rgb_pair"]:
            return rendered
        rgb = (extras or {}).get("rgb")
        if rgb is None:
            raise self.fail(
                source, "this model reads the map with its RGB image; give the pair (rgb_path)", WRONG_SHAPE
            )
        image = get_modality("image").preprocess(rgb, image_size=opts["image_size"], mean=opts["mean"], std=opts["std"])
        return torch.stack([image, rendered])

    def build_tokenizer(self, width: int, patch_size: int, **options: Any):
        return FrameTokenizer() if self.options(**options)["rgb_pair"] else super().build_tokenizer(width, patch_size)

    def pool_encoded(self, encoded: torch.Tensor, batch: int, **options: Any) -> torch.Tensor:
        """The pair's two encodings averaged token-wise (as the official code averages them)."""
        return mean_over_frames(encoded, batch) if self.options(**options)["rgb_pair"] else encoded


def load_map(modality: Modality, source: Source) -> np.ndarray:
    """A depth or normal map as float32 ``[H, W]`` or ``[H, W, 3]`` from a PNG or a .npy/array."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return modality.load_array(source)
    data = modality.read_bytes(source)
    if data[:6] == b"\x93NUMPY":
        return modality.load_array(source)
    return np.asarray(open_image(modality, source, data), dtype=np.float32)


@register_modality
class DepthModality(MapModality):
    name = "depth"
    group = ONELLM_SET
    order = 4
    noun = "depth map"
    suffixes = (".png", ".npy")

    def file_match(self, path: Path) -> int:
        """A 16/32-bit single-channel image (what depth sensors write), or an ``[H, W]`` array wider than 7 columns."""
        if path.suffix.lower() == ".npy":
            shape = npy_shape(path)
            return 1 if shape is not None and len(shape) == 2 and shape[1] > 7 else 0
        return 3 if image_mode(path) in DEEP_GREY_MODES else 0

    def preprocess_map(self, source: Source, **options: Any) -> torch.Tensor:
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
