"""Synthetic hyperspectral cube: a background material with a square patch of another (.npy float32 [24, 24, B]).

Five materials with textbook reflectance shapes over the 400-2500 nm range (t = 0 at 400 nm, 1 at 2500 nm):
vegetation (green bump, red edge, bright near-infrared, water dips), water (blue, dark in the infrared), soil
(rising), concrete (flat, bright), snow (very bright in the visible, dark in the short-wave infrared). The patch is
small (6 px) or large (10 px: 17 % of the scene, so the background always dominates) at one of five positions. The
band count B (32, 48 or 64: sensors differ) and the illumination scale are measurement keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import QA, Generator, register_generator, save_npy
from onellm.instruct_data.synth.image import POSITION_PHRASES

SIZE = 24
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (6, 12),
    "right": (18, 12),
    "top": (12, 6),
    "bottom": (12, 18),
    "center": (12, 12),
}
SIDES = {"small": 6, "large": 10}  # patch side in pixels
BANDS = (32, 48, 64)
ILLUMINATIONS = (0.8, 1.0, 1.2)
JITTER = (-1, 0, 1)
NOISE = 0.01  # reflectance units


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-(((t - centre) / width) ** 2))


def _sigmoid(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(t - centre) / width))


MATERIALS = {
    "vegetation": lambda t: (
        0.04
        + 0.06 * _bump(t, 0.07, 0.03)
        + 0.45 * _sigmoid(t, 0.14, 0.01)
        - 0.2 * _bump(t, 0.29, 0.03)
        - 0.3 * _bump(t, 0.52, 0.04)
    ),
    "water": lambda t: 0.09 * np.exp(-t / 0.06) + 0.005,
    "soil": lambda t: 0.10 + 0.30 * t,
    "concrete": lambda t: 0.32 + 0.04 * t,
    "snow": lambda t: 0.92 - 0.8 * _sigmoid(t, 0.45, 0.05),
}


def spectrum(material: str, bands: int) -> np.ndarray:
    """Reflectance of ``material`` at ``bands`` evenly spaced wavelengths from 400 to 2500 nm."""
    return MATERIALS[material](np.linspace(0.0, 1.0, bands))


def cube(attrs: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """``[24, 24, B]`` float32 reflectance x illumination, with noise."""
    bands = attrs["bands"]
    scene = np.tile(spectrum(attrs["background"], bands), (SIZE, SIZE, 1))
    side = SIDES[attrs["size"]]
    cx, cy = POSITIONS[attrs["position"]]
    left, top = cx + attrs["dx"] - side // 2, cy + attrs["dy"] - side // 2
    scene[max(top, 0) : top + side, max(left, 0) : left + side] = spectrum(attrs["patch"], bands)
    scene = scene * attrs["illumination"] + rng.normal(0, NOISE, scene.shape)
    return scene.astype(np.float32)


@register_generator
class HyperspectralGenerator(Generator):
    modality = "hyperspectral"
    measurement_keys = ("bands", "illumination")

    def vocabulary(self) -> dict[str, Any]:
        return {
            "materials": list(MATERIALS),
            "sizes": list(SIDES),
            "positions": list(POSITIONS),
            "bands": list(BANDS),
            "resolution": [SIZE, SIZE],
            "wavelengths_nm": [400, 2500],
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        background, patch = (str(m) for m in rng.choice(list(MATERIALS), size=2, replace=False))
        return {
            "background": background,
            "patch": patch,
            "size": str(rng.choice(list(SIDES))),
            "position": str(rng.choice(list(POSITIONS))),
            "dx": int(rng.choice(JITTER)),
            "dy": int(rng.choice(JITTER)),
            "bands": int(rng.choice(BANDS)),
            "illumination": float(rng.choice(ILLUMINATIONS)),
        }

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        save_npy(cube(attrs, rng), Path(root) / f"{stem}.npy")
        return {"modality": self.modality, "path": f"{stem}.npy"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        where = POSITION_PHRASES[attrs["position"]]
        background, patch, size = attrs["background"], attrs["patch"], attrs["size"]
        caption = f"{background} with a {size} patch of {patch} {where}"
        paraphrases = [
            f"a hyperspectral scene of {background} and a {size} patch of {patch} {where}",
            f"mostly {background}, with {patch} {where}",
            f"{patch} {where} surrounded by {background}",
            f"a {size} {patch} area {where} in a {background} scene",
        ]
        return caption, paraphrases

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        present = {attrs["background"], attrs["patch"]}
        asked = list(MATERIALS)[int(rng.integers(len(MATERIALS)))]
        return [
            QA("dominant", "Which material covers most of the scene?", attrs["background"]),
            QA("patch", "What material is the patch?", attrs["patch"]),
            QA("position", "Where is the patch?", attrs["position"]),
            QA("size", "Is the patch small or large?", attrs["size"]),
            QA("presence", f"Is there {asked} in the scene?", "yes" if asked in present else "no"),
        ]
