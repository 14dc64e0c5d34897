"""Synthetic point clouds: one coloured primitive of given proportions (.npy float32 [2048, 6]: xyz + rgb)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import COLOURS, QA, Generator, article, register_generator, save_npy

NUM_POINTS = 2048
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
# (x, y, z) scale of the unit primitive (z up), named by its proportions ("regular": as built, no word in the text). Only
# proportions: every point cloud is centred and scaled to the unit sphere before the encoder (onellm/modalities/
# point.py, as in OneLLM and Point-BERT), so an absolute size ("small" / "large", corpus 1.1) reached the model as the
# same input and its captions and size questions could only be guessed (size answers at the blind baseline in every
# measured run). Elongated forms only for shapes where they read as such.
FORMS = {
    "regular": (1.0, 1.0, 1.0),
    "tall thin": (0.4, 0.4, 1.2),
    "short wide": (1.1, 1.1, 0.35),
}
FORMS_FOR = {
    "sphere": ("regular",),
    "torus": ("regular",),
    "cube": tuple(FORMS),
    "cylinder": tuple(FORMS),
    "cone": tuple(FORMS),
}
YAWS = tuple(range(0, 180, 15))  # degrees about the vertical axis
PITCHES = (-15, 0, 15)  # degrees of forward/backward tilt
POSITION_NOISE = 0.005  # scanner noise, in units of the object size
COLOUR_NOISE = 0.03  # per-point RGB jitter in [0, 1] units
TORUS_RADII = (0.7, 0.3)  # major, minor radius of the unit torus


def _unit_surface(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points spread uniformly by area over a unit primitive centred at the origin, ``[n, 3]``."""
    if shape == "sphere":
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if shape == "cube":
        points = rng.uniform(-1, 1, size=(n, 3))
        axis = rng.integers(0, 3, n)  # six faces of equal area: pick an axis, then a side
        points[np.arange(n), axis] = rng.choice([-1.0, 1.0], n)
        return points
    if shape == "cylinder":  # radius 1, height 2: side area 4 pi, each cap pi
        on_side = rng.random(n) < 4 / 6
        angle = rng.uniform(0, 2 * np.pi, n)
        radius = np.where(on_side, 1.0, np.sqrt(rng.random(n)))
        z = np.where(on_side, rng.uniform(-1, 1, n), rng.choice([-1.0, 1.0], n))
        return np.stack([radius * np.cos(angle), radius * np.sin(angle), z], axis=1)
    if shape == "cone":  # base radius 1 at z=-1, apex at z=1: slant sqrt(5), lateral area pi*sqrt(5), base pi
        on_side = rng.random(n) < np.sqrt(5) / (np.sqrt(5) + 1)
        angle = rng.uniform(0, 2 * np.pi, n)
        u = np.sqrt(rng.random(n))  # area density grows linearly with the distance from the apex
        radius = np.where(on_side, u, np.sqrt(rng.random(n)))
        z = np.where(on_side, 1 - 2 * u, -1.0)
        return np.stack([radius * np.cos(angle), radius * np.sin(angle), z], axis=1)
    if shape == "torus":
        major, minor = TORUS_RADII
        u, v = rng.uniform(0, 2 * np.pi, (2, 4 * n))
        keep = rng.random(4 * n) < (major + minor * np.cos(v)) / (major + minor)  # area weighting by rejection
        u, v = u[keep][:n], v[keep][:n]
        ring = major + minor * np.cos(v)
        return np.stack([ring * np.cos(u), ring * np.sin(u), minor * np.sin(v)], axis=1)
    raise ValueError(f"unknown 3-D shape {shape!r}; known: {', '.join(SHAPES)}")


def point_cloud(attrs: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """``[2048, 6]`` float32: xyz (object size ~1, z up) and rgb in [0, 1]."""
    xyz = _unit_surface(attrs["shape"], NUM_POINTS, rng) * np.asarray(FORMS[attrs["form"]])
    yaw, pitch = np.deg2rad(attrs["yaw"]), np.deg2rad(attrs["pitch"])
    about_z = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    about_y = np.array([[np.cos(pitch), 0, np.sin(pitch)], [0, 1, 0], [-np.sin(pitch), 0, np.cos(pitch)]])
    rotation = about_y @ about_z
    xyz = xyz @ rotation.T + rng.normal(0, POSITION_NOISE, xyz.shape)
    rgb = np.asarray(COLOURS[attrs["colour"]]) / 255 + rng.normal(0, COLOUR_NOISE, xyz.shape)
    return np.concatenate([xyz, np.clip(rgb, 0, 1)], axis=1).astype(np.float32)


@register_generator
class PointGenerator(Generator):
    modality = "point"

    def vocabulary(self) -> dict[str, Any]:
        return {
            "shapes": list(SHAPES),
            "colors": list(COLOURS),
            "forms": {shape: list(forms) for shape, forms in FORMS_FOR.items()},
            "points": NUM_POINTS,
            "channels": ["x", "y", "z", "r", "g", "b"],
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        shape = str(rng.choice(SHAPES))
        return {
            "shape": shape,
            "colour": str(rng.choice(list(COLOURS))),
            "form": str(rng.choice(FORMS_FOR[shape])),
            "yaw": int(rng.choice(YAWS)),
            "pitch": int(rng.choice(PITCHES)),
        }

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        save_npy(point_cloud(attrs, rng), Path(root) / f"{stem}.npy")
        return {"modality": self.modality, "path": f"{stem}.npy"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        shape, colour, form = attrs["shape"], attrs["colour"], attrs["form"]
        named = colour if form == "regular" else f"{form} {colour}"
        caption = f"{article(named)} {named} {shape}"
        looks = f"{article(colour)} {colour} object shaped like {article(shape)} {shape}"
        if form == "regular":
            return caption, [f"a 3D point cloud of {caption}", f"{article(shape)} {shape} colored {colour}", looks]
        predicate = form.replace(" ", " and ")  # "tall thin" -> "tall and thin"
        return caption, [
            f"a 3D point cloud of {caption}",
            f"{article(form)} {form} {shape} colored {colour}",
            f"{article(colour)} {colour} {shape} that is {predicate}",
            f"{looks}, {predicate}",
        ]

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        shape, colour, form = attrs["shape"], attrs["colour"], attrs["form"]
        questions = [
            QA("shape", "What shape is this object?", shape),
            QA("color", "What color is the object?", colour),
            QA("tall", "Is the object tall and thin?", "yes" if form == "tall thin" else "no"),
        ]
        other = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
        asked = shape if rng.random() < 0.5 else other
        questions.append(QA("presence", f"Is this {article(asked)} {asked}?", "yes" if asked == shape else "no"))
        return questions
