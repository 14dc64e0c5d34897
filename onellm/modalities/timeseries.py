"""Time series: C channels x T steps, any C up to ``max_channels``: a ``.npy`` / array ``[T, C]`` (``[T]``: one
channel) or a CSV table (one row per step, one column per channel, an optional header row; rows are time, as in IMU
files, pandas and the server's CSV parts) -> each channel z-scored and resampled to ``num_steps``.

The preprocessed input is ``[max_channels, 3 + num_steps]``, row c = channel c (rows past the series' C are zeros):
column 0 is 1 for a channel present (0: padding), columns 1-2 the channel's level and scale (signed_log of its mean
and std, kept apart as RevIN does so the tokens see both the shape and the magnitude), columns 3.. the z-scored
series resampled over its whole length to ``num_steps`` (bin means when shortening, linear interpolation when
lengthening; clipped to +-10 std).

Tokenizer (trainable; its weights do not depend on C): each channel is cut into patches of ``patch`` steps embedded
by ONE shared Linear (+ an embedding of the channel's level and scale). Two kinds of tokens come out:

- ``num_steps / patch`` time tokens: at each patch, the present channels pooled (mean and max, then a Linear) plus a
  time position: what happens when, whatever the channel count (max pooling keeps a spike of one channel among many);
- ``max_channels`` channel tokens: each channel's patch embeddings averaged over time plus its index embedding, a
  learned pad vector for absent channels: which channel does what ("channel 2 spikes").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import (
    EXTENDED_SET,
    TOO_LONG,
    WRONG_SHAPE,
    Modality,
    Source,
    npy_shape,
    signed_log,
)

STATS = 3  # columns before the series: present, signed_log(mean), signed_log(std)
Z_CLIP = 10.0  # a z-score beyond 10 std carries no more information than "a huge spike", and keeps inputs bounded


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def resample(values: np.ndarray, length: int) -> np.ndarray:
    """``[T, C]`` -> ``[length, C]`` over the whole series: bin means when shortening (piecewise aggregate
    approximation: a one-step spike keeps its area instead of falling between two samples), linear interpolation
    when lengthening."""
    steps = values.shape[0]
    if steps <= length:
        targets = np.linspace(0, steps - 1, length)
        return np.stack([np.interp(targets, np.arange(steps), values[:, c]) for c in range(values.shape[1])], axis=1)
    # The integral of the series as a step function, at fractional bin edges: mean = difference / bin width.
    edges = np.linspace(0, steps, length + 1)
    whole = np.minimum(np.floor(edges).astype(np.int64), steps - 1)
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    integral = cumulative[whole] + (edges - whole)[:, None] * values[whole]
    return np.diff(integral, axis=0) / np.diff(edges)[:, None]


class TimeSeriesTokenizer(nn.Module):
    """``[B, max_channels, 3 + num_steps]`` -> ``[B, num_steps / patch + max_channels, C]``."""

    def __init__(self, width: int, max_channels: int, num_steps: int, patch: int):
        super().__init__()
        if num_steps % patch:
            raise ValueError(f"modality 'timeseries': num_steps {num_steps} must be a multiple of patch {patch}")
        self.patch = patch
        self.patch_embed = nn.Linear(patch, width)
        self.stats_embed = nn.Linear(STATS - 1, width)
        self.pool = nn.Linear(2 * width, width)
        self.time_positions = nn.Parameter(torch.randn(1, num_steps // patch, width) * 0.02)
        self.channel_index = nn.Parameter(torch.randn(1, max_channels, width) * 0.02)
        self.pad = nn.Parameter(torch.zeros(width))

    def forward(self, values: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        dtype = self.patch_embed.weight.dtype
        present = values[..., 0].float() > 0.5  # [B, Cm]
        series = values[..., STATS:].to(dtype)
        batch, channels, steps = series.shape
        patches = series.reshape(batch, channels, steps // self.patch, self.patch)
        embedded = self.patch_embed(patches) + self.stats_embed(values[..., 1:STATS].to(dtype)).unsqueeze(2)
        mask = present[:, :, None, None]  # [B, Cm, 1, 1] over [B, Cm, N, C]
        mean = (embedded * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B, N, C]
        peak = embedded.masked_fill(~mask, torch.finfo(embedded.dtype).min).amax(1)  # bf16 under autocast
        peak = torch.where(mask.any(1), peak, torch.zeros_like(peak))  # no channel at all (a blank dummy)
        time_tokens = self.pool(torch.cat([mean, peak], dim=-1)) + self.time_positions
        channel_tokens = torch.where(present[..., None], embedded.mean(2) + self.channel_index, self.pad.to(dtype))
        return torch.cat([time_tokens, channel_tokens], dim=1)


@register_modality
class TimeSeriesModality(Modality):
    name = "timeseries"
    group = EXTENDED_SET
    order = 11
    noun = "time series"
    suffixes = (".csv", ".npy")
    # num_steps / patch time tokens + max_channels channel tokens; max_steps: the longest series read.
    defaults = {"num_steps": 512, "patch": 16, "max_channels": 32, "max_steps": 10_000_000}
    # tiny: 64 steps in patches of 8 -> 8 time + 8 channel tokens; small: 128 in 16 -> 8 + 8 = 16 tokens, one per
    # projector query; 7b: 512 in 16 -> 32 + 32 channel tokens.
    preset_options = {
        "tiny": {"num_steps": 64, "patch": 8, "max_channels": 8},
        "small": {"num_steps": 128, "patch": 16, "max_channels": 8},
        "7b": {"num_steps": 512, "patch": 16, "max_channels": 32},
    }

    def file_match(self, path: Path) -> int:
        """A CSV table whose column count is not an IMU recording's (6, or 7 with timestamps), or a ``[T, C]`` array
        with a few channels and many more steps (shorter or wider arrays look like a depth map or a point cloud)."""
        if path.suffix.lower() == ".csv":
            try:
                with path.open(encoding="utf-8-sig") as handle:
                    first = next((line for line in handle if line.strip()), "")
            except (OSError, UnicodeDecodeError):
                return 0
            return 1 if len(first.split(",")) in (6, 7) else 3
        shape = npy_shape(path)
        if shape is None or len(shape) != 2:
            return 0
        steps, channels = shape
        return 2 if channels <= 16 and channels not in (3, 6, 7) and steps >= 8 * channels else 0

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        opts = self.options(**options)
        return (opts["max_channels"], STATS + opts["num_steps"])

    def load_series(self, source: Source) -> np.ndarray:
        """``[T, C]`` float32 from an array, a ``.npy`` file/bytes or a CSV table (header row skipped)."""
        if isinstance(source, (np.ndarray, torch.Tensor)):
            return self.load_array(source)
        data = self.read_bytes(source)
        if data[:6] == b"\x93NUMPY":
            return self.load_array(source)
        rows = self.read_csv(source, data)
        if not all(_number(cell) for cell in rows[0]):
            rows = rows[1:]  # a header row (channel names)
        bad = next(((i, c) for i, row in enumerate(rows) for c in row if not _number(c)), None)
        if bad is not None:
            raise self.fail(source, f"CSV cell {bad[1]!r} (data row {bad[0] + 1}) is not a number", WRONG_SHAPE)
        if not rows:
            raise self.fail(source, "the CSV table has a header but no data rows", WRONG_SHAPE)
        return np.asarray(rows, dtype=np.float64).astype(np.float32)

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        series = self.load_series(source)
        if series.ndim == 1:
            series = series[:, None]
        if series.ndim != 2:
            raise self.fail(
                source, f"expected a [T, C] series (rows = steps), found shape {list(series.shape)}", WRONG_SHAPE
            )
        steps, channels = series.shape
        if channels < 1 or channels > opts["max_channels"]:
            hint = " (a [C, T] array? rows must be time steps: transpose it)" if steps <= opts["max_channels"] else ""
            raise self.fail(
                source, f"expected 1 to {opts['max_channels']} channels, found {channels}{hint}", WRONG_SHAPE
            )
        if steps < 2:
            raise self.fail(source, f"needs at least 2 steps, found {steps}", WRONG_SHAPE)
        if steps > opts["max_steps"]:
            raise self.fail(source, f"{steps} steps exceeds the {opts['max_steps']}-step limit", TOO_LONG)
        self.check_finite(source, series)
        values = series.astype(np.float64)  # float32 statistics overflow for values near its maximum
        mean, std = values.mean(axis=0), values.std(axis=0)
        z = np.clip((values - mean) / np.where(std > 0, std, 1.0), -Z_CLIP, Z_CLIP)
        resampled = resample(z, opts["num_steps"]).T  # [C, num_steps]
        out = np.zeros(self.input_shape(**opts), np.float32)
        out[:channels, 0] = 1.0
        out[:channels, 1], out[:channels, 2] = signed_log(mean), signed_log(std)
        out[:channels, STATS:] = resampled
        return torch.from_numpy(out)

    def dummy_input(self, **options: Any) -> torch.Tensor:
        """Two channels of noise (as a real input: the present flags set, the padding rows zero)."""
        generator = torch.Generator().manual_seed(0)
        out = torch.zeros(self.input_shape(**options))
        out[:2, 0] = 1.0
        out[:2, STATS:] = torch.randn(2, out.shape[1] - STATS, generator=generator)
        return out

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        return TimeSeriesTokenizer(width, opts["max_channels"], opts["num_steps"], opts["patch"])
