"""Hyperspectral image: a cube ``[H, W, B]`` (``.npy`` or array; B bands, band axis last as ENVI/numpy tools write it)
-> B resampled to the model's ``num_bands``, resized + centre-cropped, standardised -> ``[num_bands, S, S]``.

Tokenizer (trainable): a per-pixel spectral MLP (``num_bands`` -> ``spectral_width``: learns the material signatures,
like a linear unmixing with a nonlinearity) then a patch embedding (Conv2d, kernel = stride = ``patch``) and a learned
position table: one token per ``patch`` x ``patch`` region, ``(S / patch)^2`` tokens on a square grid.

Any B from 2 to ``max_bands`` is read: sensors differ (AVIRIS 224 bands, Pavia 103, Indian Pines 200), so each
pixel's spectrum is linearly resampled onto ``num_bands`` evenly spaced positions over the same range (the band
order, short to long wavelengths, is assumed; the absolute wavelengths are not known from a bare array). The cube is
standardised as a whole (one mean and std), not per band: per-band scaling would erase the spectral shape that tells
materials apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import EXTENDED_SET, TOO_LONG, WRONG_SHAPE, Modality, Source, npy_header_shape, npy_shape
from onellm.modalities.image import MAX_PIXELS, fit_square_array

# Refuse cubes above 256 M values (1 GiB as float32) before resampling them.
MAX_VALUES = 256_000_000


def band_resampler(bands: int, num_bands: int) -> np.ndarray:
    """``[bands, num_bands]`` linear-interpolation weights: ``cube @ W`` puts ``bands`` evenly spaced samples of each
    spectrum onto ``num_bands`` evenly spaced positions over the same range (identity when they are equal)."""
    positions = np.linspace(0, bands - 1, num_bands)
    low = np.minimum(np.floor(positions).astype(np.int64), bands - 2)
    frac = positions - low
    weights = np.zeros((bands, num_bands))
    weights[low, np.arange(num_bands)] = 1 - frac
    weights[low + 1, np.arange(num_bands)] += frac
    return weights


class HyperspectralTokenizer(nn.Module):
    """``[B, num_bands, S, S]`` -> ``[B, (S / patch)^2, C]``: spectral MLP per pixel, patch embedding, positions."""

    def __init__(self, width: int, num_bands: int, image_size: int, patch: int, spectral_width: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"modality 'hyperspectral': image_size {image_size} must be a multiple of patch {patch}")
        self.spectral = nn.Sequential(nn.Conv2d(num_bands, spectral_width, kernel_size=1), nn.GELU())
        self.patches = nn.Conv2d(spectral_width, width, kernel_size=patch, stride=patch)
        self.positions = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, width) * 0.02)

    def forward(self, cube: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        features = self.spectral(cube.to(self.patches.weight.dtype))
        return self.patches(features).flatten(2).transpose(1, 2) + self.positions


@register_modality
class HyperspectralModality(Modality):
    name = "hyperspectral"
    group = EXTENDED_SET
    order = 10
    noun = "hyperspectral image"
    suffixes = (".npy",)
    # image_size S and patch: the token grid; num_bands: the spectral sampling the tokenizer reads; max_bands: the
    # most bands a cube may have.
    defaults = {"image_size": 128, "patch": 8, "num_bands": 64, "spectral_width": 128, "max_bands": 1024}
    # tiny: 32 px, 16 bands -> 4 x 4 = 16 tokens; small: 64 px, 32 bands -> 8 x 8 = 64 tokens (pooled to the 16
    # query regions like an image); 7b: 128 px, 64 bands -> 256 tokens.
    preset_options = {
        "tiny": {"image_size": 32, "patch": 8, "num_bands": 16, "spectral_width": 32},
        "small": {"image_size": 64, "patch": 8, "num_bands": 32, "spectral_width": 64},
        "7b": {"image_size": 128, "patch": 8, "num_bands": 64, "spectral_width": 128},
    }

    def file_match(self, path: Path) -> int:
        """A cube ``[H, W, B]`` with more than 4 bands (3 or 4 are RGB(A) or a normal map)."""
        shape = npy_shape(path)
        return 3 if shape is not None and len(shape) == 3 and shape[-1] > 4 else 0

    def precheck(self, data: bytes, limits: dict[str, float]) -> str | None:
        """A ``.npy`` header announcing more than ``max_image_pixels`` pixels (H x W) is refused undecoded."""
        shape, limit = npy_header_shape(data), limits.get("max_image_pixels")
        if shape is not None and limit is not None and len(shape) == 3 and shape[0] * shape[1] > limit:
            return f"cube is {shape[1]}x{shape[0]} = {shape[0] * shape[1]} pixels, above the server's {int(limit)}-pixel limit"
        return None

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        opts = self.options(**options)
        return (opts["num_bands"], opts["image_size"], opts["image_size"])

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        cube = self.load_array(source)
        if cube.ndim != 3 or min(cube.shape) < 1:
            raise self.fail(
                source, f"expected a cube [H, W, B] (bands last), found shape {list(cube.shape)}", WRONG_SHAPE
            )
        height, width, bands = cube.shape
        if bands < 2:
            raise self.fail(
                source,
                f"a hyperspectral cube needs at least 2 bands, found {bands} (single-band images: xray, infrared)",
                WRONG_SHAPE,
            )
        if bands > opts["max_bands"]:
            raise self.fail(
                source, f"{bands} bands exceeds the {opts['max_bands']}-band limit (is the band axis last?)", TOO_LONG
            )
        if height * width > MAX_PIXELS or cube.size > MAX_VALUES:
            raise self.fail(
                source,
                f"{height}x{width}x{bands} exceeds the limit of {MAX_PIXELS} pixels / {MAX_VALUES} values",
                TOO_LONG,
            )
        self.check_finite(source, cube)
        # Space first (band by band, at full precision), then the spectra of the S x S pixels left; float64 because
        # float32 statistics overflow for values near its maximum.
        square = fit_square_array(cube, opts["image_size"]).astype(np.float64)
        resampled = square @ band_resampler(bands, opts["num_bands"])
        standardised = (resampled - resampled.mean()) / max(float(resampled.std()), 1e-6)
        return torch.from_numpy(np.ascontiguousarray(standardised.transpose(2, 0, 1), np.float32))

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        return HyperspectralTokenizer(
            width, opts["num_bands"], opts["image_size"], opts["patch"], opts["spectral_width"]
        )
