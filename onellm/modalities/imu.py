"""IMU: .npy / .csv / array [T, 6] (accelerometer xyz m/s^2, gyroscope xyz rad/s) -> fixed rate and length.

Tokenizer: Conv1d over the 6 channels (stride = kernel unless ``stride`` is set), plus a learned position table.
OneLLM reads Ego4D IMU at 200 Hz for 10 s (2000 samples); presets choose smaller numbers for CPU runs. Its released
weights use a stride of 1 and no bias on the convolution, and a position table that covers the class token.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import ONELLM_SET, WRONG_SHAPE, Modality, Source, class_position, npy_shape

GRAVITY = 9.80665  # accelerometer channels are divided by g so both sensor groups are O(1)


class IMUTokenizer(nn.Module):
    """``[B, 6, T]`` -> ``[B, (T - kernel) // stride + 1, C]``."""

    def __init__(
        self,
        width: int,
        num_samples: int,
        kernel: int,
        stride: int | None = None,
        bias: bool = True,
        own_class_position: bool = False,
    ):
        super().__init__()
        stride = stride or kernel
        self.conv = nn.Conv1d(6, width, kernel_size=kernel, stride=stride, bias=bias)
        self.positions = nn.Parameter(torch.randn(1, (num_samples - kernel) // stride + 1, width) * 0.02)
        self.class_position = class_position(width, own_class_position)

    def forward(self, signal: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        return self.conv(signal.to(self.conv.weight.dtype)).transpose(1, 2) + self.positions


@register_modality
class IMUModality(Modality):
    name = "imu"
    group = ONELLM_SET
    order = 6
    # stride None: the kernel (non-overlapping windows). class_position: the table also covers the class token.
    # accel_in_g: accelerometer channels divided by g (OneLLM's released weights read them raw, in m/s^2).
    defaults = {
        "sample_rate": 200,
        "num_samples": 2000,
        "kernel": 10,
        "stride": None,
        "bias": True,
        "class_position": False,
        "accel_in_g": True,
    }
    # tiny and small: 4 s at 50 Hz -> 20 tokens; 7b: OneLLM's 2 s windows at 200 Hz, raw m/s^2, 391 tokens.
    preset_options = {
        "tiny": {"sample_rate": 50, "num_samples": 200, "kernel": 10},
        "small": {"sample_rate": 50, "num_samples": 200, "kernel": 10},
        "7b": {
            "sample_rate": 200,
            "num_samples": 400,
            "kernel": 10,
            "stride": 1,
            "bias": False,
            "class_position": True,
            "accel_in_g": False,
        },
    }
    noun = "IMU recording"
    suffixes = (".csv", ".npy")
    extra_keys = ("sample_rate",)

    def file_match(self, path: Path) -> int:
        """A CSV table, or a ``[T, 7]`` (timestamps first) / ``[T, 6]`` array (a point cloud ``[P, 6]`` looks the
        same)."""
        if path.suffix.lower() == ".csv":
            return 2
        shape = npy_shape(path)
        if shape is None or len(shape) != 2:
            return 0
        return {7: 3, 6: 1}.get(shape[1], 0)

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        return (6, self.options(**options)["num_samples"])

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        array = self.load_array(source)
        rate = (extras or {}).get("sample_rate")
        # A 7-column CSV/array carries timestamps (seconds) in its first column: derive the rate from them.
        if array.ndim == 2 and array.shape[1] == 7:
            times, array = array[:, 0], array[:, 1:]
            if times.size > 1 and np.all(np.diff(times) > 0):
                rate = (times.size - 1) / float(times[-1] - times[0])
        if array.ndim != 2 or array.shape[1] != 6:
            raise self.fail(
                source,
                f"expected [T, 6] (accelerometer xyz + gyroscope xyz), found shape {list(array.shape)}",
                WRONG_SHAPE,
            )
        if array.shape[0] < 2:
            raise self.fail(source, f"needs at least 2 samples, found {array.shape[0]}")
        self.check_finite(source, array)
        rate = float(rate or opts["sample_rate"])
        if not math.isfinite(rate) or rate <= 0:
            raise self.fail(source, f"sample_rate must be a positive number, got {rate}")
        # Resample every channel linearly onto the model's clock, then pad with zeros / cut to num_samples. Only the
        # kept samples are built: the length never depends on the (client-given) rate, so a tiny rate cannot make a
        # huge timeline.
        duration = (array.shape[0] - 1) / rate
        kept = min(opts["num_samples"], int(math.floor(duration * opts["sample_rate"] + 1e-9)) + 1)
        target_times = np.arange(kept) / opts["sample_rate"]
        source_times = np.arange(array.shape[0]) / rate
        resampled = np.stack([np.interp(target_times, source_times, array[:, c]) for c in range(6)], axis=0)
        if opts["accel_in_g"]:
            resampled[:3] /= GRAVITY
        signal = np.zeros((6, opts["num_samples"]), np.float32)
        signal[:, : resampled.shape[1]] = resampled
        return torch.from_numpy(signal)

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        return IMUTokenizer(
            width, opts["num_samples"], opts["kernel"], opts["stride"], opts["bias"], opts["class_position"]
        )
