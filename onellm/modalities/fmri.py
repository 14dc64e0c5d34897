"""fMRI: .npy voxel vector [V] -> z-scored -> tokens, by one of two registered layouts (option ``layout``):

- ``chunks`` (default): the vector cut into runs of ``voxels_per_token`` voxels, each through one shared Linear;
- ``interleaved`` (OneLLM's released weights): one Linear from all V voxels to ``tokens`` x C outputs, channel c of
  token t being output c * tokens + t.

OneLLM uses the NSD subject-1 visual-cortex vector (V = 15724 voxels, 8 tokens); presets set V per dataset.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import ONELLM_SET, WRONG_SHAPE, Modality, Source, class_position, npy_shape, pick_variant


class FMRITokenizer(nn.Module):
    """``[B, V]`` -> ``[B, ceil(V / k), C]``: zero-pad to a multiple of k voxels, Linear(k -> C), position table."""

    def __init__(self, width: int, num_voxels: int, voxels_per_token: int, own_class_position: bool = False, **_: Any):
        super().__init__()
        self.voxels_per_token = voxels_per_token
        self.num_tokens = math.ceil(num_voxels / voxels_per_token)
        self.proj = nn.Linear(voxels_per_token, width)
        self.positions = nn.Parameter(torch.randn(1, self.num_tokens, width) * 0.02)
        self.class_position = class_position(width, own_class_position)

    def forward(self, voxels: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        padded = nn.functional.pad(voxels, (0, self.num_tokens * self.voxels_per_token - voxels.shape[1]))
        tokens = padded.view(voxels.shape[0], self.num_tokens, self.voxels_per_token)
        return self.proj(tokens.to(self.proj.weight.dtype)) + self.positions


class InterleavedFMRITokenizer(nn.Module):
    """``[B, V]`` -> ``[B, T, C]``: Linear(V -> C * T), output c * T + t is channel c of token t; position table."""

    def __init__(self, width: int, num_voxels: int, tokens: int, own_class_position: bool = False, **_: Any):
        super().__init__()
        self.num_tokens = tokens
        self.proj = nn.Linear(num_voxels, width * tokens)
        self.positions = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.class_position = class_position(width, own_class_position)

    def forward(self, voxels: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        out = self.proj(voxels.to(self.proj.weight.dtype))  # [B, C * T]
        return out.view(voxels.shape[0], -1, self.num_tokens).transpose(1, 2) + self.positions


LAYOUTS = {"chunks": FMRITokenizer, "interleaved": InterleavedFMRITokenizer}


@register_modality
class FMRIModality(Modality):
    name = "fmri"
    group = ONELLM_SET
    order = 7
    # voxels_per_token: layout "chunks"; tokens: layout "interleaved". class_position: the position table also
    # covers the encoder's class token (OneLLM's layout).
    defaults = {"num_voxels": 15724, "voxels_per_token": 64, "layout": "chunks", "tokens": 8, "class_position": False}
    # tiny and small: 2048 voxels -> 32 tokens; 7b: OneLLM's 15724 NSD voxels -> 8 interleaved tokens.
    preset_options = {
        "tiny": {"num_voxels": 2048, "voxels_per_token": 64},
        "small": {"num_voxels": 2048, "voxels_per_token": 64},
        "7b": {"num_voxels": 15724, "layout": "interleaved", "tokens": 8, "class_position": True},
    }
    noun = "fMRI scan"
    suffixes = (".npy",)

    def file_match(self, path: Path) -> int:
        """A voxel vector ``[V]``."""
        shape = npy_shape(path)
        return 2 if shape is not None and len(shape) == 1 else 0

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        return (self.options(**options)["num_voxels"],)

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        voxels = self.load_array(source)
        if voxels.ndim == 2 and voxels.shape[1] == opts["num_voxels"]:
            voxels = voxels.mean(
                axis=0
            )  # [R, V]: repeated trials of one stimulus are averaged (as OneLLM does for NSD)
        elif voxels.ndim == 2 and 1 in voxels.shape:
            voxels = voxels.reshape(-1)
        if voxels.ndim != 1:
            raise self.fail(source, f"expected a voxel vector [V], found shape {list(voxels.shape)}", WRONG_SHAPE)
        if voxels.shape[0] != opts["num_voxels"]:
            raise self.fail(source, f"expected {opts['num_voxels']} voxels, found {voxels.shape[0]}", WRONG_SHAPE)
        self.check_finite(source, voxels)
        voxels = voxels.astype(np.float64)  # float32 statistics overflow for values near its maximum (3.4e38)
        voxels = (voxels - voxels.mean()) / max(float(voxels.std()), 1e-6)
        return torch.from_numpy(np.ascontiguousarray(voxels, np.float32))

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        tokenizer = pick_variant(self.name, "layout", opts["layout"], LAYOUTS)
        return tokenizer(
            width,
            opts["num_voxels"],
            voxels_per_token=opts["voxels_per_token"],
            tokens=opts["tokens"],
            own_class_position=opts["class_position"],
        )
