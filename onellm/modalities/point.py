"""Point cloud: .npy / .ply / array [P, 3] or [P, 6] (xyz + rgb) -> centred, unit-sphere scaled, fixed count.

Tokenizer (pure torch, no CUDA extension): farthest-point-sampled centres, k nearest neighbours per
centre, a shared 1x1 convolution (per-point MLP) over [relative xyz, rgb], max over the neighbours.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import WRONG_SHAPE, Modality, Source


def farthest_point_sample(xyz: torch.Tensor, count: int) -> torch.Tensor:
    """Indices ``[B, count]`` of points chosen greedily farthest from those already chosen (starting at index 0)."""
    batch, num_points, _ = xyz.shape
    chosen = torch.zeros(batch, count, dtype=torch.long, device=xyz.device)
    distance = torch.full((batch, num_points), float("inf"), device=xyz.device, dtype=xyz.dtype)
    current = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    rows = torch.arange(batch, device=xyz.device)
    for i in range(count):
        chosen[:, i] = current
        delta = xyz - xyz[rows, current].unsqueeze(1)
        distance = torch.minimum(distance, delta.pow(2).sum(-1))
        current = distance.argmax(dim=1)
    return chosen


class PointTokenizer(nn.Module):
    """``[B, P, 6]`` -> ``[B, G, C]``: G groups of k neighbours, per-point MLP, max-pool, centre + position embedding."""

    def __init__(self, width: int, num_groups: int, group_size: int, hidden: int = 128):
        super().__init__()
        self.num_groups, self.group_size = num_groups, group_size
        # 1x1 convolutions over the neighbour axis == a shared per-point MLP.
        self.point_mlp = nn.Sequential(nn.Linear(6, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.centre_embed = nn.Linear(3, width)
        self.positions = nn.Parameter(torch.randn(1, num_groups, width) * 0.02)

    def forward(self, points: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        points = points.to(self.centre_embed.weight.dtype)
        xyz, rgb = points[..., :3], points[..., 3:]
        rows = torch.arange(points.shape[0], device=points.device).unsqueeze(1)
        centres = xyz[rows, farthest_point_sample(xyz.detach(), self.num_groups)]  # [B, G, 3]
        neighbours = torch.cdist(centres, xyz).topk(self.group_size, dim=-1, largest=False).indices  # [B, G, k]
        rows = rows.unsqueeze(-1)
        local = torch.cat([xyz[rows, neighbours] - centres.unsqueeze(2), rgb[rows, neighbours]], dim=-1)  # [B, G, k, 6]
        features = self.point_mlp(local).amax(dim=2)  # [B, G, C]
        return features + self.centre_embed(centres) + self.positions


def read_ply(modality: Modality, source: Source, data: bytes) -> np.ndarray:
    """ASCII or binary little-endian PLY vertices -> [P, 3] or [P, 6] (x y z [red green blue])."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise modality.fail(source, "not a PLY file (missing 'ply' magic or 'end_header')")
    header = data[:end].decode("ascii", "replace").splitlines()
    body = data[data.index(b"\n", end) + 1 :]
    fmt = next((line.split()[1] for line in header if line.startswith("format")), "")
    count, props, in_vertex = 0, [], False
    for line in header:
        words = line.split()
        if words[:2] == ["element", "vertex"]:
            count, in_vertex = int(words[2]), True
        elif words[:1] == ["element"]:
            in_vertex = False
        elif words[:1] == ["property"] and in_vertex:
            props.append((words[-1], words[1]))
    types = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1", "int": "<i4", "short": "<i2"}
    try:
        if fmt == "ascii":
            rows = np.loadtxt(io.StringIO(body.decode("ascii")), max_rows=count, ndmin=2)
            table = {name: rows[:, i] for i, (name, _) in enumerate(props)}
        elif fmt == "binary_little_endian":
            dtype = np.dtype([(name, types[kind]) for name, kind in props])
            raw = np.frombuffer(body, dtype=dtype, count=count)
            table = {name: raw[name].astype(np.float32) for name, _ in props}
        else:
            raise modality.fail(source, f"PLY format {fmt!r} is not supported (ascii, binary_little_endian)")
    except (ValueError, KeyError) as exc:
        raise modality.fail(source, f"malformed PLY vertex data ({exc})") from None
    columns = ["x", "y", "z"] + (["red", "green", "blue"] if "red" in table else [])
    missing = [c for c in columns if c not in table]
    if missing:
        raise modality.fail(source, f"PLY vertices lack properties {missing}")
    return np.stack([table[c] for c in columns], axis=1).astype(np.float32)


@register_modality
class PointModality(Modality):
    name = "point"
    order = 3
    # OneLLM: 8192 points; presets for CPU training use fewer points and groups.
    defaults = {"num_points": 8192, "num_groups": 512, "group_size": 32}

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        return (self.options(**options)["num_points"], 6)

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            points = self.load_array(source)
        else:
            data = self.read_bytes(source)
            points = read_ply(self, source, data) if data.startswith(b"ply") else self.load_array(data)
        if points.ndim != 2 or points.shape[1] not in (3, 6):
            raise self.fail(source, f"expected a [P, 3] (xyz) or [P, 6] (xyz + rgb) array, found shape {list(points.shape)}", WRONG_SHAPE)
        if points.shape[0] < 1:
            raise self.fail(source, "the point cloud is empty")
        self.check_finite(source, points)
        xyz = points[:, :3] - points[:, :3].mean(axis=0)
        xyz = xyz / max(float(np.linalg.norm(xyz, axis=1).max()), 1e-8)  # unit sphere
        if points.shape[1] == 6:
            rgb = points[:, 3:] / (255.0 if points[:, 3:].max() > 1.0 else 1.0)
        else:
            rgb = np.full_like(xyz, 0.5)  # no colour: neutral grey
        cloud = np.concatenate([xyz, rgb], axis=1)
        # Fixed count: an even stride over the points (deterministic); repeat the cloud when it is too small.
        index = np.linspace(0, cloud.shape[0] - 1, opts["num_points"]).round().astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(cloud[index], np.float32))

    def dummy_input(self, **options: Any) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        xyz = torch.nn.functional.normalize(torch.randn(self.options(**options)["num_points"], 3, generator=generator), dim=1)
        return torch.cat([xyz, torch.rand(xyz.shape, generator=generator)], dim=1)

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        return PointTokenizer(width, opts["num_groups"], opts["group_size"])
