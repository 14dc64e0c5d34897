"""X-ray radiograph: 8/16-bit grey PNG, or a ``.npy`` / array ``[H, W]`` (DICOM pixel data saved as an array) ->
a percentile window to [0, 1] -> 3 channels, encoder mean/std -> the image path (frozen patch embedding, cacheable).

Radiographs carry 10-16 bits of which a study uses a narrow band (detector offsets, collimated borders, burnt-out
skin lines): a fixed scale would waste most of the range, so each image is windowed between two percentiles of its
own values (0.5 % and 99.5 %: a few saturated or dead pixels do not set the window), the way a viewer's auto-window
does. Exposure (dose) then no longer matters; the contrast inside the window does. Stored as MONOCHROME1 (bright =
low attenuation)? Invert it before (``values.max() - values``): dense matter must be bright, as in every dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onellm.modalities import register_modality
from onellm.modalities.base import EXTENDED_SET
from onellm.modalities.image import GreyImageModality


@register_modality
class XRayModality(GreyImageModality):
    name = "xray"
    group = EXTENDED_SET
    order = 8
    noun = "X-ray image"
    # window: the percentiles of the image's own values mapped to 0 and 1.
    defaults = {**GreyImageModality.defaults, "window": (0.5, 99.5)}

    def scale(self, grey: np.ndarray, **options: Any) -> np.ndarray:
        low, high = np.percentile(grey, options["window"])
        if high - low <= 0:  # a flat image (blank detector): nothing to show
            return np.zeros_like(grey)
        return np.clip((grey - low) / (high - low), 0.0, 1.0)
