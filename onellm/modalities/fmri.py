"""fMRI: .npy voxel vector [V] -> z-scored -> reshaped into tokens of `voxels_per_token` -> Linear.

OneLLM uses the NSD subject-1 visual-cortex vector (V = 15724 voxels); presets set V per dataset.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import WRONG_SHAPE, Modality, Source


class FMRITokenizer(nn.Module):
    """``[B, V]`` -> ``[B, ceil(V / k), C]``: zero-pad to a multiple of k voxels, Linear(k -> C), position table."""

    def __init__(self, width: int, num_voxels: int, voxels_per_token: int):
        super().__init__()
        self.voxels_per_token = voxels_per_token
        self.num_tokens = math.ceil(num_voxels / voxels_per_token)
        self.proj = nn.Linear(voxels_per_token, width)
        self.positions = nn.Parameter(torch.randn(1, self.num_tokens, width) * 0.02)

    def forward(self, voxels: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        padded = nn.functional.pad(voxels, (0, self.num_tokens * self.voxels_per_token - voxels.shape[1]))
        tokens = padded.view(voxels.shape[0], self.num_tokens, self.voxels_per_token)
        return self.proj(tokens.to(self.proj.weight.dtype)) + self.positions


@register_modality
class FMRIModality(Modality):
    name = "fmri"
    order = 7
    defaults = {"num_voxels": 15724, "voxels_per_token": 64}

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        return (self.options(**options)["num_voxels"],)

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        voxels = self.load_array(source)
        if voxels.ndim == 2 and voxels.shape[1] == opts["num_voxels"]:
            voxels = voxels.mean(axis=0)  # [R, V]: repeated trials of one stimulus are averaged (as OneLLM does for NSD)
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
        return FMRITokenizer(width, opts["num_voxels"], opts["voxels_per_token"])
