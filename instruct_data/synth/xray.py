"""Synthetic X-ray: a radiograph of soft tissue holding one or two dense objects (16-bit grey PNG 96x96).

Values are detector counts as a radiograph stores them (bright = dense): soft tissue is a smooth dome (thicker in the
middle) with quantum noise, and dense objects (a coin, a clip, a screw) stand out bright. Attributes: the objects'
shape (round or rectangular), size (small or large), count (1 or 2, same shape and size) and positions (left, right,
top, bottom, center, with a few pixels of jitter); the dose scales every value and is a measurement key (the
modality's percentile window removes it, so the same content at another dose is the same item).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import QA, Generator, count_word, join_phrases, register_generator, save_png
from onellm.instruct_data.synth.image import POSITION_PHRASES

SIZE = 96
# Anchors 28 px apart: two large objects (half-size 11 + 2 px jitter) at neighbouring anchors never touch.
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (20, 48),
    "right": (76, 48),
    "top": (48, 20),
    "bottom": (48, 76),
    "center": (48, 48),
}
HALF_SIZES = {"small": 5, "large": 11}  # pixels from the centre to the edge
SHAPES = ("round", "rectangular")
JITTER = (-2, 0, 2)
DOSES = {"low": 0.6, "normal": 0.8, "high": 1.0}  # scale of every count: the brightest object stays below 65 535
TISSUE = (6_000.0, 14_000.0)  # counts at the body's edge and centre
DENSE = 50_000.0  # counts behind a metal object
OFFSET = 500.0  # detector dark level
NOISE = 250.0  # quantum noise std (counts)


def radiograph(attrs: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """``[96, 96]`` uint16 counts."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dome = np.exp(-((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (2 * 30.0**2))
    counts = TISSUE[0] + (TISSUE[1] - TISSUE[0]) * dome
    half = HALF_SIZES[attrs["size"]]
    for obj in attrs["objects"]:
        cx, cy = POSITIONS[obj["position"]]
        cx, cy = cx + obj["dx"], cy + obj["dy"]
        if attrs["shape"] == "round":
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
        else:  # a bar twice as wide as high: clearly not round at either size
            inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half / 2)
        counts[inside] = DENSE
    counts = counts * DOSES[attrs["dose"]] + OFFSET + rng.normal(0, NOISE, counts.shape)
    return np.clip(np.round(counts), 0, 65_535).astype(np.uint16)


def objects_phrase(attrs: dict[str, Any]) -> str:
    """ "a small round bright object on the left" / "two large rectangular bright objects at the top and in the center"."""
    n = len(attrs["objects"])
    where = join_phrases([POSITION_PHRASES[o["position"]] for o in attrs["objects"]])
    noun = "bright object" if n == 1 else "bright objects"
    return f"{'a' if n == 1 else count_word(n)} {attrs['size']} {attrs['shape']} {noun} {where}"


@register_generator
class XRayGenerator(Generator):
    modality = "xray"
    measurement_keys = ("dose",)

    def vocabulary(self) -> dict[str, Any]:
        return {
            "shapes": list(SHAPES),
            "sizes": list(HALF_SIZES),
            "positions": list(POSITIONS),
            "objects": [1, 2],
            "doses": list(DOSES),
            "resolution": [SIZE, SIZE],
            "format": "16-bit grey PNG (detector counts, bright = dense)",
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        count = int(rng.integers(1, 3))
        positions = sorted(rng.choice(list(POSITIONS), size=count, replace=False), key=list(POSITIONS).index)
        return {
            "shape": str(rng.choice(SHAPES)),
            "size": str(rng.choice(list(HALF_SIZES))),
            "objects": [
                {"position": str(p), "dx": int(rng.choice(JITTER)), "dy": int(rng.choice(JITTER))} for p in positions
            ],
            "dose": str(rng.choice(list(DOSES))),
        }

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        save_png(radiograph(attrs, rng), Path(root) / f"{stem}.png")
        return {"modality": self.modality, "path": f"{stem}.png"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        phrase = objects_phrase(attrs)
        caption = phrase
        paraphrases = [
            f"an X-ray showing {phrase}",
            f"a radiograph with {phrase}",
            f"{phrase} in front of soft tissue",
            f"dense matter: {phrase}",
        ]
        return caption, paraphrases

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        n = len(attrs["objects"])
        subject = "the bright object" if n == 1 else "the bright objects"
        verb = "is" if n == 1 else "are"
        questions = [
            QA("count", "How many bright objects are there?", str(n)),
            QA("shape", f"Is {subject} round or rectangular?", attrs["shape"]),
            QA("size", f"{verb.capitalize()} {subject} small or large?", attrs["size"]),
        ]
        if n == 1:
            questions.append(QA("position", "Where is the bright object?", attrs["objects"][0]["position"]))
        taken = {o["position"] for o in attrs["objects"]}
        asked = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
        questions.append(
            QA("presence", f"Is there a bright object {POSITION_PHRASES[asked]}?", "yes" if asked in taken else "no")
        )
        return questions
