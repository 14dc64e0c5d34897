"""Synthetic fMRI: voxel responses to viewing a picture of a shape (.npy float32 [fmri_voxels], default 2048).

Each response is the sum of fixed random patterns, one per stimulus attribute value (colour, shape, size; drawn
from the corpus seed), plus a per-session offset and noise. The patterns are additive, so a decoder can name a
colour/shape pair it never saw together; a stimulus is the content (its repeated presentations share a split, as
in NSD), the session is the measurement.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import (
    COLOURS,
    QA,
    SHAPES_2D,
    Generator,
    article,
    register_generator,
    rng_for,
    save_npy,
)

DEFAULT_VOXELS = 2048
SIZES = ("small", "large")
SESSIONS = 4
# Per-voxel standard deviations: stimulus signal 1 (sum of three unit patterns / sqrt 3), session drift 0.3,
# measurement noise 0.7 -> SNR ~2 per voxel, decodable from 2048 voxels yet not a lookup table.
SESSION_SCALE = 0.3
NOISE_SCALE = 0.7


@lru_cache(maxsize=4)
def patterns(seed: int, voxels: int) -> dict[str, np.ndarray]:
    """Fixed unit-variance pattern per attribute value (``"colour=red"``, ``"shape=circle"``, ``"session=0"``...)."""
    names = (
        [f"colour={c}" for c in COLOURS]
        + [f"shape={s}" for s in SHAPES_2D]
        + [f"size={s}" for s in SIZES]
        + [f"session={i}" for i in range(SESSIONS)]
    )
    return {name: rng_for(seed, "fmri-pattern", name).standard_normal(voxels) for name in names}


def response(attrs: dict[str, Any], rng: np.random.Generator, seed: int, voxels: int) -> np.ndarray:
    """``[voxels]`` float32 response to the stimulus described by ``attrs``."""
    table = patterns(seed, voxels)
    stimulus = table[f"colour={attrs['colour']}"] + table[f"shape={attrs['shape']}"] + table[f"size={attrs['size']}"]
    signal = stimulus / np.sqrt(3) + SESSION_SCALE * table[f"session={attrs['session']}"]
    return (signal + rng.normal(0, NOISE_SCALE, voxels)).astype(np.float32)


@register_generator
class FmriGenerator(Generator):
    modality = "fmri"
    measurement_keys = ("session",)
    allow_repeats = True

    def __init__(self, seed: int, voxels: int = DEFAULT_VOXELS):
        super().__init__(seed)
        if voxels < 1:
            raise ValueError(f"fmri_voxels must be a positive integer, got {voxels}")
        self.voxels = voxels

    def vocabulary(self) -> dict[str, Any]:
        return {
            "colors": list(COLOURS),
            "shapes": list(SHAPES_2D),
            "sizes": list(SIZES),
            "sessions": SESSIONS,
            "voxels": self.voxels,
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "colour": str(rng.choice(list(COLOURS))),
            "shape": str(rng.choice(SHAPES_2D)),
            "size": str(rng.choice(SIZES)),
            "session": int(rng.integers(SESSIONS)),
        }

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        save_npy(response(attrs, rng, self.seed, self.voxels), Path(root) / f"{stem}.npy")
        return {"modality": self.modality, "path": f"{stem}.npy"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        colour, shape, size = attrs["colour"], attrs["shape"], attrs["size"]
        thing = f"{article(size)} {size} {colour} {shape}"
        return f"a picture of {thing}", [
            f"the person is looking at {thing}",
            f"brain activity while viewing {thing}",
            f"an image of {thing}",
            f"{thing} on a plain background",
        ]

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        colour, shape, size = attrs["colour"], attrs["shape"], attrs["size"]
        asked_colour = (
            colour if rng.random() < 0.5 else [c for c in COLOURS if c != colour][int(rng.integers(len(COLOURS) - 1))]
        )
        questions = [
            QA("shape", "What shape is the person looking at?", shape),
            QA("color", "What color is the shape?", colour),
            QA("size", "Is the shape small or large?", size),
            QA("presence", f"Is the shape {asked_colour}?", "yes" if asked_colour == colour else "no"),
        ]
        return questions
