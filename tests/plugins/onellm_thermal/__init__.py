"""A modality from outside onellm (issue 12's plugin test): thermal images, ``.npy`` arrays ``[H, W]`` of degrees
Celsius. Installed through the entry point group ``onellm.modalities`` (see the ``.dist-info`` folder beside it);
nothing in onellm names it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from onellm.modalities import register_modality
from onellm.modalities.base import WRONG_SHAPE, Source
from onellm.modalities.image import ImageLikeModality, fit_square_array, normalise


@register_modality
class ThermalModality(ImageLikeModality):
    name = "thermal"
    order = 50
    noun = "thermal image"
    suffixes = (".npy",)
    defaults = {**ImageLikeModality.defaults, "low": -20.0, "high": 120.0}

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        celsius = self.load_array(source)
        if celsius.ndim != 2:
            raise self.fail(
                source, f"expected an [H, W] array of degrees Celsius, found {list(celsius.shape)}", WRONG_SHAPE
            )
        self.check_finite(source, celsius)
        unit = np.clip((celsius - opts["low"]) / (opts["high"] - opts["low"]), 0.0, 1.0).astype(np.float32)
        square = fit_square_array(unit[..., None], opts["image_size"])
        return normalise(np.repeat(square, 3, axis=-1), opts["mean"], opts["std"])
