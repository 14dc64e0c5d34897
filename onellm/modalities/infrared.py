"""Thermal infrared image: raw radiometric values (16-bit counts or centi-kelvin), 8/16-bit grey PNG, or a ``.npy`` /
array ``[H, W]`` (e.g. degrees) -> per-image scaling to [0, 1] -> 3 channels, encoder mean/std -> the image path
(frozen patch embedding, cacheable).

Cameras report values whose offset and gain differ by model and setting, and a scene spans a few kelvin to hundreds:
what carries the content is the contrast inside the image (where the hot spots are), so each image is scaled by its
own statistics (option ``scaling``): ``minmax`` (default, what a camera's auto-gain shows: coldest black, hottest
white) or ``standardize`` (z-scored, +-3 standard deviations over [0, 1]: one very hot pixel does not darken the
rest). Hot is bright in both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onellm.modalities import register_modality
from onellm.modalities.base import EXTENDED_SET, pick_variant
from onellm.modalities.image import GreyImageModality


def _minmax(grey: np.ndarray) -> np.ndarray:
    span = grey.max() - grey.min()
    return (grey - grey.min()) / span if span > 0 else np.zeros_like(grey)


def _standardize(grey: np.ndarray) -> np.ndarray:
    std = grey.std()
    return np.clip(0.5 + (grey - grey.mean()) / (6.0 * std), 0.0, 1.0) if std > 0 else np.full_like(grey, 0.5)


SCALINGS = {"minmax": _minmax, "standardize": _standardize}


@register_modality
class InfraredModality(GreyImageModality):
    name = "infrared"
    group = EXTENDED_SET
    order = 9
    noun = "infrared image"
    defaults = {**GreyImageModality.defaults, "scaling": "minmax"}

    def scale(self, grey: np.ndarray, **options: Any) -> np.ndarray:
        return pick_variant(self.name, "scaling", options["scaling"], SCALINGS)(grey)
