"""Synthetic thermal infrared: a scene at ambient temperature with one to three hot spots (16-bit grey PNG 64x64).

Values are radiometric centi-kelvin as thermal cameras store them (29 315 = 20 C): the background is ambient with a
gentle gradient and sensor noise; each hot spot is a Gaussian blob (sigma 4 px) 15, 30 or 50 K above ambient, in
one cell of a 3 x 3 grid, every spot at its own temperature so the hottest is unambiguous. The ambient temperature
is a measurement key (per-image scaling removes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import QA, Generator, count_word, register_generator, save_png

SIZE = 64
CELLS: dict[str, tuple[int, int]] = {
    "top left": (12, 12), "top": (32, 12), "top right": (52, 12),
    "left": (12, 32), "center": (32, 32), "right": (52, 32),
    "bottom left": (12, 52), "bottom": (32, 52), "bottom right": (52, 52),
}  # fmt: skip
CELL_PHRASES = {cell: ("in the center" if cell == "center" else f"at the {cell}") for cell in CELLS}
DELTAS = (15, 30, 50)  # kelvin above ambient
AMBIENTS = (288, 293, 298)  # kelvin (15, 20, 25 C)
SIGMA = 4.0  # pixels
JITTER = (-2, 0, 2)
NOISE_CK = 5.0  # sensor noise (centi-kelvin): an uncooled microbolometer's ~50 mK


def thermogram(attrs: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """``[64, 64]`` uint16 centi-kelvin."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    kelvin = attrs["ambient"] + 1.5 * (y / SIZE)  # warmer towards the floor
    for spot in attrs["spots"]:
        cx, cy = CELLS[spot["cell"]]
        cx, cy = cx + spot["dx"], cy + spot["dy"]
        kelvin = kelvin + spot["delta"] * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * SIGMA**2))
    return np.clip(np.round(kelvin * 100 + rng.normal(0, NOISE_CK, kelvin.shape)), 0, 65_535).astype(np.uint16)


def hottest(attrs: dict[str, Any]) -> dict[str, Any]:
    return max(attrs["spots"], key=lambda spot: spot["delta"])


def side_of(cell: str) -> str | None:
    """ "left" / "right" for a cell in the left / right column, None for the middle column."""
    return next((side for side in ("left", "right") if cell.endswith(side)), None)


@register_generator
class InfraredGenerator(Generator):
    modality = "infrared"
    measurement_keys = ("ambient",)

    def vocabulary(self) -> dict[str, Any]:
        return {
            "cells": list(CELLS),
            "spots": [1, len(DELTAS)],
            "deltas_kelvin": list(DELTAS),
            "ambients_kelvin": list(AMBIENTS),
            "resolution": [SIZE, SIZE],
            "format": "16-bit grey PNG (centi-kelvin)",
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        count = int(rng.integers(1, len(DELTAS) + 1))
        cells = sorted(rng.choice(list(CELLS), size=count, replace=False), key=list(CELLS).index)
        deltas = rng.permutation(DELTAS)[:count]
        spots = [
            {"cell": str(c), "delta": int(d), "dx": int(rng.choice(JITTER)), "dy": int(rng.choice(JITTER))}
            for c, d in zip(cells, deltas, strict=True)
        ]
        return {"spots": spots, "ambient": int(rng.choice(AMBIENTS))}

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        save_png(thermogram(attrs, rng), Path(root) / f"{stem}.png")
        return {"modality": self.modality, "path": f"{stem}.png"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        n, top = len(attrs["spots"]), hottest(attrs)["cell"]
        if n == 1:
            caption = f"one hot spot {CELL_PHRASES[top]}"
            paraphrases = [
                f"a thermal image with a single hot spot {CELL_PHRASES[top]}",
                f"a warm object {CELL_PHRASES[top]} on a cool background",
                f"infrared view: one heat source {CELL_PHRASES[top]}",
            ]
        else:
            caption = f"{count_word(n)} hot spots, the hottest {CELL_PHRASES[top]}"
            paraphrases = [
                f"a thermal image with {count_word(n)} hot spots; the hottest is {CELL_PHRASES[top]}",
                f"{count_word(n)} heat sources, the warmest {CELL_PHRASES[top]}",
                f"infrared view of {count_word(n)} warm objects, the hottest {CELL_PHRASES[top]}",
            ]
        return caption, paraphrases

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        top = hottest(attrs)["cell"]
        questions = [
            QA("count", "How many hot spots are there?", str(len(attrs["spots"]))),
            QA("hottest", "Where is the hottest spot?", top),
        ]
        side = side_of(top)
        if side is not None:
            questions.append(QA("side", "Is the hottest spot on the left or the right?", side))
        taken = {spot["cell"] for spot in attrs["spots"]}
        asked = list(CELLS)[int(rng.integers(len(CELLS)))]
        questions.append(
            QA("presence", f"Is there a hot spot {CELL_PHRASES[asked]}?", "yes" if asked in taken else "no")
        )
        return questions
