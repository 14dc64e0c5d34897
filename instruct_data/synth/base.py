"""What every synthetic-modality generator provides, the registry, and the helpers they share.

A generator turns random draws into *attributes* (a small JSON object: what the item shows), renders the media
from the attributes, and describes them in words (one caption + paraphrases, several question/answer pairs).
Answers are computed from the attributes only, so they follow from the content by construction.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from onellm.registry import Registry

_REGISTRY: Registry[type[Generator]] = Registry("synthetic generator for modality", sort=False)


@dataclass
class QA:
    """One question about an item. ``kind`` names what it asks (colour, count, ...) so tests can re-derive it."""

    kind: str
    question: str
    answer: str


@dataclass
class Description:
    caption: str
    paraphrases: list[str]
    questions: list[QA] = field(default_factory=list)


class Generator:
    """Base class of a synthetic generator for one modality (subclass, set ``modality``, register).

    ``sample`` runs in the parent process (sequential, so the corpus is the same for a seed whatever the worker
    count); ``render`` may run in a worker process and must depend only on its arguments.
    """

    modality: ClassVar[str] = ""
    # Attribute keys that describe the measurement rather than the content (e.g. the fMRI session): left out of the
    # content key, so repeated measurements of one stimulus share a key and therefore a split.
    measurement_keys: ClassVar[tuple[str, ...]] = ()
    # Whether distinct items may show the same content (fMRI: repeated presentations of one stimulus, as in NSD).
    allow_repeats: ClassVar[bool] = False

    def __init__(self, seed: int, **options: Any):
        if options:
            raise TypeError(f"synthetic {self.modality} generator takes no option(s) {sorted(options)}")
        self.seed = seed

    def vocabulary(self) -> dict[str, Any]:
        """The attribute values this generator draws from (written to synth_info.json and docs/data.md)."""
        raise NotImplementedError

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the attributes of one item (JSON-serialisable)."""
        raise NotImplementedError

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        """Write the media of one item under ``root`` (file names start with ``stem``, a path relative to ``root``)
        and return the input dict (``modality`` + ``path`` + optional ``rgb_path`` / ``sample_rate``)."""
        raise NotImplementedError

    def describe(self, attrs: dict[str, Any], rng: np.random.Generator) -> Description:
        """Caption, 1-4 paraphrases (drawn from :meth:`captions`' candidates) and every answerable question. ``rng`` is
        used in this order: captions, paraphrases, questions (same seed = same text)."""
        caption, candidates = self.captions(attrs, rng)
        return Description(caption, pick_paraphrases(rng, candidates, caption), self.questions(attrs, rng))

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        """The caption of these attributes and candidate paraphrases (others' words for the same content)."""
        raise NotImplementedError

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        """Every question these attributes answer (``rng``: e.g. which wrong value a yes/no question asks about)."""
        raise NotImplementedError

    def content_key(self, attrs: dict[str, Any]) -> str:
        """Canonical JSON of the content attributes: equal keys = same content = same split."""
        content = {key: value for key, value in attrs.items() if key not in self.measurement_keys}
        return json.dumps(content, sort_keys=True, separators=(",", ":"))


def register_generator(cls: type[Generator]) -> type[Generator]:
    """Class decorator: register a generator under its modality name."""
    if not cls.modality:
        raise ValueError(f"generator class {cls.__name__} needs a `modality` name")
    return _REGISTRY.add(cls.modality, cls)


def get_generator(modality: str) -> type[Generator]:
    return _REGISTRY[modality]


def generator_names() -> list[str]:
    return _REGISTRY.names()


# --- deterministic seeding -----------------------------------------------------------------------------------------


def stable_id(text: str) -> int:
    """A process-independent 32-bit integer for a name (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def rng_for(*parts: int | str) -> np.random.Generator:
    """A generator seeded from a tuple of ints and names: independent streams per (seed, modality, item, purpose)."""
    return np.random.default_rng([part if isinstance(part, int) else stable_id(part) for part in parts])


def key_rank(modality: str, key: str) -> str:
    """Order of content keys used to assign splits (a hash, so the order is unrelated to generation order)."""
    return hashlib.sha256(f"{modality}\n{key}".encode()).hexdigest()


# --- shared vocabulary ---------------------------------------------------------------------------------------------

# Saturated, mutually distinct RGB values; none is close to the gray/black/white backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light gray": (190, 190, 190),
    "dark gray": (70, 70, 70),
    "black": (15, 15, 15),
}
SHAPES_2D = ("circle", "square", "triangle", "star", "diamond", "hexagon")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def count_word(n: int) -> str:
    return NUMBER_WORDS.get(n, str(n))


def join_phrases(phrases: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def pick_paraphrases(rng: np.random.Generator, candidates: list[str], caption: str) -> list[str]:
    """1-4 distinct paraphrases (never the caption itself), in a seed-determined order."""
    unique = [text for text in dict.fromkeys(candidates) if text != caption]
    count = int(rng.integers(1, min(4, len(unique)) + 1))
    order = rng.permutation(len(unique))[:count]
    return [unique[i] for i in order]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill: tuple[int, int, int]
) -> None:
    """Draw a filled 2-D shape centred at (cx, cy) that fits in a circle of ``radius`` pixels."""
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        half = radius * 0.8  # a square inscribed near the circle looks as large as the other shapes
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape in ("triangle", "diamond", "hexagon", "star"):
        if shape == "star":
            angles = np.deg2rad(-90 + 36 * np.arange(10))
            radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)  # 5 tips, inner radius 0.45 r
        else:
            sides = {"triangle": 3, "diamond": 4, "hexagon": 6}[shape]
            angles = np.deg2rad(-90 + 360 / sides * np.arange(sides))
            radii = np.full(sides, radius)
        points = [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown 2-D shape {shape!r}; known: {', '.join(SHAPES_2D)}")


# zlib level 1: ~3x faster than Pillow's default 6 for noisy 16-bit depth maps, files ~20% larger.
PNG_COMPRESSION = 1


def save_png(array: np.ndarray, path: Path) -> None:
    """Save uint8 RGB ``[H, W, 3]`` or uint16 grey ``[H, W]`` as PNG (Pillow writes no timestamp: same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype != np.uint16:
        array = np.ascontiguousarray(array, dtype=np.uint8)
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESSION)


def save_npy(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
