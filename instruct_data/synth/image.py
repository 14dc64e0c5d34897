"""Synthetic images: 1-3 coloured shapes of two sizes at five positions on a plain background (PNG RGB 128x128)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from onellm.instruct_data.synth.base import (
    BACKGROUNDS,
    COLOURS,
    PNG_COMPRESSION,
    QA,
    SHAPES_2D,
    Generator,
    article,
    count_word,
    draw_shape,
    join_phrases,
    register_generator,
)

SIZE = 128
# Anchor centres 40 px from the middle: two large shapes (radius 17 + 3 px jitter) at neighbouring anchors never
# overlap (24 + 3 + 17 = 44 = 64 - 3 - 17), so every shape stays fully visible and countable.
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (24, 64),
    "right": (104, 64),
    "top": (64, 24),
    "bottom": (64, 104),
    "center": (64, 64),
}
# One preposition for every place: a caption then commits to a place at its word ("left", "center"), not at the
# preposition before it ("on" / "in" / "at"), which a greedy decoder must choose first (BENCHMARKS.md, "One preposition
# for every place").
POSITION_PHRASES = {position: f"at the {position}" for position in POSITIONS}
RADII = {"small": 9, "large": 17}
JITTER = (-3, 0, 3)  # pixels; part of the content key (different jitter = different picture)
MAX_OBJECTS = 3


def object_phrase(obj: dict[str, Any], with_position: bool = True) -> str:
    """{"shape": "circle", "colour": "red", "size": "large", "position": "left"} -> "a large red circle at the left"."""
    text = f"{article(obj['size'])} {obj['size']} {obj['colour']} {obj['shape']}"
    return f"{text} {POSITION_PHRASES[obj['position']]}" if with_position else text


@register_generator
class ImageGenerator(Generator):
    modality = "image"

    def vocabulary(self) -> dict[str, Any]:
        return {
            "shapes": list(SHAPES_2D),
            "colors": list(COLOURS),
            "sizes": list(RADII),
            "positions": list(POSITIONS),
            "backgrounds": list(BACKGROUNDS),
            "objects_per_image": [1, MAX_OBJECTS],
            "resolution": [SIZE, SIZE],
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        count = int(rng.integers(1, MAX_OBJECTS + 1))
        positions = rng.choice(list(POSITIONS), size=count, replace=False)  # one shape per position: unambiguous QA
        objects = [
            {
                "shape": str(rng.choice(SHAPES_2D)),
                "colour": str(rng.choice(list(COLOURS))),
                "size": str(rng.choice(list(RADII))),
                "position": str(position),
                "dx": int(rng.choice(JITTER)),
                "dy": int(rng.choice(JITTER)),
            }
            for position in positions
        ]
        return {"background": str(rng.choice(list(BACKGROUNDS))), "objects": objects}

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[attrs["background"]])
        draw = ImageDraw.Draw(image)
        for obj in attrs["objects"]:
            cx, cy = POSITIONS[obj["position"]]
            draw_shape(draw, obj["shape"], cx + obj["dx"], cy + obj["dy"], RADII[obj["size"]], COLOURS[obj["colour"]])
        path = Path(root) / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", compress_level=PNG_COMPRESSION)
        return {"modality": self.modality, "path": f"{stem}.png"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        """The caption names each shape's place before its size, colour and shape ("at the top a small red star"):
        a model writing it then reads the attributes of a region it has already named, instead of choosing an object
        silently and naming its place last (BENCHMARKS.md, "Captions that name the place first")."""
        objects, background = attrs["objects"], attrs["background"]
        what_first = join_phrases([object_phrase(obj) for obj in objects])
        caption = join_phrases(
            [f"{POSITION_PHRASES[obj['position']]} {object_phrase(obj, with_position=False)}" for obj in objects]
        )
        n = len(objects)
        shapes_word = "shape" if n == 1 else "shapes"
        paraphrases = [
            f"an image of {what_first}",
            f"{'there is' if n == 1 else 'there are'} {what_first}",
            f"{article(background)} {background} background with {what_first}",
            f"{count_word(n)} {shapes_word} on a plain background: {what_first}",
            what_first,
        ]
        return caption, paraphrases

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        objects = attrs["objects"]
        shape_counts = {s: sum(o["shape"] == s for o in objects) for s in SHAPES_2D}
        questions = [
            QA("count", "How many shapes are there?", str(len(objects))),
            QA("background", "What color is the background?", attrs["background"]),
        ]
        for obj in objects:
            where = POSITION_PHRASES[obj["position"]]
            # Name the shape by its type when it is the only one of that type, otherwise by its (unique) position.
            subject = f"the {obj['shape']}" if shape_counts[obj["shape"]] == 1 else f"the shape {where}"
            questions += [
                QA("color", f"What color is {subject}?", obj["colour"]),
                QA("shape", f"What shape is {where}?", obj["shape"]),
                QA("size", f"Is {subject} small or large?", obj["size"]),
            ]
            same_look = sum(o["shape"] == obj["shape"] and o["colour"] == obj["colour"] for o in objects)
            if same_look == 1:
                questions.append(QA("position", f"Where is the {obj['colour']} {obj['shape']}?", obj["position"]))
        present = {(o["colour"], o["shape"]) for o in objects}
        if rng.random() < 0.5:
            colour, shape = sorted(present)[int(rng.integers(len(present)))]
            questions.append(QA("presence", f"Is there {article(colour)} {colour} {shape}?", "yes"))
        else:
            absent = [(c, s) for c in COLOURS for s in SHAPES_2D if (c, s) not in present]
            colour, shape = absent[int(rng.integers(len(absent)))]
            questions.append(QA("presence", f"Is there {article(colour)} {colour} {shape}?", "no"))
        return questions
