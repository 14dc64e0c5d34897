"""Point cloud: .npy / .ply / array [P, 3] or [P, 6] (xyz + rgb) -> centred, unit-sphere scaled, fixed count.

Tokenizers (pure torch, no CUDA extension), registered by the option ``tokenizer``:

- ``mlp`` (default): farthest-point-sampled centres and k nearest neighbours in xyz, a shared per-point MLP over
  [relative xyz, rgb], max over the neighbours, plus an embedding of the centre and a position table;
- ``official`` (OneLLM's released weights): centres and neighbours chosen on the colour channels 3:6 (as the official
  code does), one shared linear map (its 1x1 convolution) of the raw 6 channels, max over the neighbours, a
  position table that also covers the encoder's class token.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import ONELLM_SET, WRONG_SHAPE, Modality, Source, class_position, npy_shape, pick_variant


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
        chosen, neighbours = group_neighbours(xyz, self.num_groups, self.group_size)  # [B, G], [B, G, k]
        centres = xyz[rows, chosen]  # [B, G, 3]
        rows = rows.unsqueeze(-1)
        local = torch.cat([xyz[rows, neighbours] - centres.unsqueeze(2), rgb[rows, neighbours]], dim=-1)  # [B, G, k, 6]
        features = self.point_mlp(local).amax(dim=2)  # [B, G, C]
        return features + self.centre_embed(centres) + self.positions


def group_neighbours(keys: torch.Tensor, num_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Farthest-point-sampled centres on ``keys`` ``[B, P, d]`` and each centre's ``group_size`` nearest points:
    (centre indices ``[B, G]``, neighbour indices ``[B, G, k]``)."""
    rows = torch.arange(keys.shape[0], device=keys.device).unsqueeze(1)
    centres = farthest_point_sample(keys.detach(), num_groups)
    neighbours = torch.cdist(keys[rows, centres], keys).topk(group_size, dim=-1, largest=False).indices
    return centres, neighbours


class OfficialPointTokenizer(nn.Module):
    """OneLLM's point tokenizer: ``[B, P, 6]`` -> ``[B, G, C]``. Groups are chosen on channels 3:6; each neighbour's
    raw 6 channels go through one linear map (the official 1x1 convolution), max over the group, plus positions."""

    def __init__(self, width: int, num_groups: int, group_size: int):
        super().__init__()
        self.num_groups, self.group_size = num_groups, group_size
        self.proj = nn.Linear(6, width)
        self.positions = nn.Parameter(torch.randn(1, num_groups, width) * 0.02)
        self.class_position = class_position(width, True)

    def forward(self, points: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        points = points.to(self.proj.weight.dtype)
        _, neighbours = group_neighbours(points[..., 3:6], self.num_groups, self.group_size)
        rows = torch.arange(points.shape[0], device=points.device).view(-1, 1, 1)
        return self.proj(points[rows, neighbours]).amax(dim=2) + self.positions  # [B, G, k, C] -> [B, G, C]


TOKENIZERS = {"mlp": PointTokenizer, "official": OfficialPointTokenizer}


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
    types = {
        "float": "<f4",
        "float32": "<f4",
        "double": "<f8",
        "uchar": "u1",
        "uint8": "u1",
        "int": "<i4",
        "short": "<i2",
    }
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
    group = ONELLM_SET
    order = 3
    # OneLLM: 8192 points; presets for CPU training use fewer points and groups.
    defaults = {"num_points": 8192, "num_groups": 512, "group_size": 32, "tokenizer": "mlp"}
    preset_options = {
        "tiny": {"num_points": 256, "num_groups": 16, "group_size": 8},
        "small": {"num_points": 1024, "num_groups": 32, "group_size": 16},
        "7b": {"tokenizer": "official", "num_points": 8192, "num_groups": 1024, "group_size": 32},
    }
    noun = "point cloud"
    part_types = ("input_point_cloud",)
    suffixes = (".ply", ".npy")

    def file_match(self, path: Path) -> int:
        """A PLY file, or a ``[P, 3]`` / ``[P, 6]`` array (an IMU recording ``[T, 6]`` looks the same)."""
        if path.suffix.lower() == ".ply":
            return 3
        shape = npy_shape(path)
        return 2 if shape is not None and len(shape) == 2 and shape[1] in (3, 6) else 0

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
            raise self.fail(
                source,
                f"expected a [P, 3] (xyz) or [P, 6] (xyz + rgb) array, found shape {list(points.shape)}",
                WRONG_SHAPE,
            )
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
        xyz = torch.nn.functional.normalize(
            torch.randn(self.options(**options)["num_points"], 3, generator=generator), dim=1
        )
        return torch.cat([xyz, torch.rand(xyz.shape, generator=generator)], dim=1)

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        tokenizer = pick_variant(self.name, "tokenizer", opts["tokenizer"], TOKENIZERS)
        return tokenizer(width, opts["num_groups"], opts["group_size"])
