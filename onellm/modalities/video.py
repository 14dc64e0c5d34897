"""Video: PyAV decode, T frames sampled uniformly, each through the image path; encoder outputs pooled over frames.

``temporal_pool`` decides how the T frames' encoder outputs become one token set of the image path's shape:

- ``mean`` (OneLLM): the token-wise average. An average is blind to the frames' order: a shape moving left to right
  and one moving right to left leave the same streak (BENCHMARKS.md, "The long profile": a probe reads the sign
  from a time-symmetric average at chance).
- ``mean_delta``: the average plus the late half's average minus the early half's. A moving shape then weighs more
  where it ends than where it starts, so the direction is in the tokens without changing their number or layout.
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import ONELLM_SET, TOO_LONG, WRONG_SHAPE, Modality, Source
from onellm.modalities.image import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchTokenizer,
    fit_square,
    normalise,
)

# Cap on decoded frames before sampling: about 10 minutes at 30 fps; longer videos are refused, not truncated.
MAX_DECODED_FRAMES = 18_000


class FrameTokenizer(nn.Module):
    """``[B, T, 3, H, W]`` -> per-frame patch tokens ``[B*T, L, C]`` (the encoder's frozen patch embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = PatchTokenizer()

    def forward(self, frames: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        return self.patches(frames.flatten(0, 1), encoder)


def mean_over_frames(encoded: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B*T, 1+L, C]`` encodings of T frames per input -> ``[B, 1+L, C]``, averaged token-wise."""
    return encoded.unflatten(0, (batch, -1)).mean(dim=1)


def mean_plus_change(encoded: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B*T, 1+L, C]`` -> ``[B, 1+L, C]``: the token-wise mean plus (mean of the last T//2 frames - mean of the first
    T//2); with one frame, the frame itself."""
    frames = encoded.unflatten(0, (batch, -1))
    half = frames.shape[1] // 2
    if half == 0:
        return frames.mean(dim=1)
    return frames.mean(dim=1) + frames[:, -half:].mean(dim=1) - frames[:, :half].mean(dim=1)


TEMPORAL_POOLS = {"mean": mean_over_frames, "mean_delta": mean_plus_change}


def uniform_indices(total: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over ``total`` frames (centre of each segment)."""
    return np.minimum(((np.arange(count) + 0.5) * total / count).astype(np.int64), total - 1)


@register_modality
class VideoModality(Modality):
    name = "video"
    group = ONELLM_SET
    order = 1
    image_like = True
    defaults = {"image_size": 224, "mean": CLIP_MEAN, "std": CLIP_STD, "num_frames": 8, "temporal_pool": "mean"}
    preset_options = {
        "tiny": {"image_size": 32, "num_frames": 2},
        "small": {"image_size": 112, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "num_frames": 4},
        "7b": {"image_size": 224},
    }
    part_types = ("video_url",)
    url_part = True
    suffixes = (".mp4", ".webm", ".avi", ".mov", ".mkv")

    def options(self, **overrides: Any) -> dict[str, Any]:
        opts = super().options(**overrides)
        if opts["temporal_pool"] not in TEMPORAL_POOLS:
            raise ValueError(
                f"video option temporal_pool={opts['temporal_pool']!r} is not supported; choose one of {sorted(TEMPORAL_POOLS)}"
            )
        return opts

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        opts = self.options(**options)
        return (opts["num_frames"], 3, opts["image_size"], opts["image_size"])

    def decode(self, source: Source) -> list[Image.Image]:
        data = self.read_bytes(source)
        frames: list[Image.Image] = []
        try:
            with av.open(io.BytesIO(data)) as container:
                if not container.streams.video:
                    raise self.fail(source, "no video stream in the file")
                for frame in container.decode(video=0):
                    frames.append(frame.to_image())
                    if len(frames) > MAX_DECODED_FRAMES:
                        raise self.fail(source, f"longer than {MAX_DECODED_FRAMES} frames", TOO_LONG)
        except (av.error.FFmpegError, ValueError) as exc:
            raise self.fail(source, f"not a decodable video ({exc})") from None
        if not frames:
            raise self.fail(source, "the video has no decodable frames")
        return frames

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            array = self.load_array(source)  # [T, H, W, 3] in [0, 1] or [0, 255]
            if array.ndim != 4 or array.shape[-1] != 3:
                raise self.fail(
                    source, f"expected a [T, H, W, 3] frame array, found shape {list(array.shape)}", WRONG_SHAPE
                )
            self.check_finite(source, array)
            scale = 255.0 if array.max() > 1.0 else 1.0
            frames = [Image.fromarray(np.clip(f / scale * 255.0, 0, 255).astype(np.uint8)) for f in array]
        else:
            frames = self.decode(source)
        picked = [frames[i] for i in uniform_indices(len(frames), opts["num_frames"])]
        size = opts["image_size"]
        return torch.stack(
            [
                normalise(np.asarray(fit_square(f.convert("RGB"), size), np.float32) / 255.0, opts["mean"], opts["std"])
                for f in picked
            ]
        )

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        return FrameTokenizer()

    def pool_encoded(self, encoded: torch.Tensor, batch: int, **options: Any) -> torch.Tensor:
        """``[B*T, 1+L, C]`` -> ``[B, 1+L, C]``, pooled over frames as ``temporal_pool`` says."""
        return TEMPORAL_POOLS[self.options(**options)["temporal_pool"]](encoded, batch)
