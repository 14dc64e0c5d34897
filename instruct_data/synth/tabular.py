"""Synthetic table rows: 3-5 numeric fields and 1-2 categorical ones, in a shuffled order (.json object).

Numeric fields come from a pool of measurements, each an integer from 1 to 99, all different in one row (so the
largest and smallest field are unambiguous); categorical fields are a colour, a city or a material. The questions
compare fields, read a category, count fields and threshold a value: their answers follow from the row alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import COLOURS, QA, Generator, count_word, register_generator

NUMERIC = ("height", "width", "weight", "price", "age", "speed", "temperature", "score")
CATEGORICAL: dict[str, tuple[str, ...]] = {
    "color": tuple(COLOURS),
    "city": ("paris", "tokyo", "lima", "oslo", "cairo", "delhi"),
    "material": ("wood", "steel", "glass", "stone", "plastic"),
}
THRESHOLD = 50


def numbers(attrs: dict[str, Any]) -> dict[str, int]:
    return {name: value for name, value in attrs["fields"] if isinstance(value, int)}


def categories(attrs: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in attrs["fields"] if isinstance(value, str)}


@register_generator
class TabularGenerator(Generator):
    modality = "tabular"

    def vocabulary(self) -> dict[str, Any]:
        return {
            "numeric_fields": list(NUMERIC),
            "categorical_fields": {name: list(values) for name, values in CATEGORICAL.items()},
            "numeric_per_row": [3, 5],
            "categorical_per_row": [1, 2],
            "values": [1, 99],
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        numeric = rng.choice(NUMERIC, size=int(rng.integers(3, 6)), replace=False)
        values = rng.choice(np.arange(1, 100), size=len(numeric), replace=False)
        categorical = rng.choice(list(CATEGORICAL), size=int(rng.integers(1, 3)), replace=False)
        fields: list[list[Any]] = [[str(n), int(v)] for n, v in zip(numeric, values, strict=True)]
        fields += [[str(c), str(rng.choice(CATEGORICAL[str(c)]))] for c in categorical]
        order = rng.permutation(len(fields))
        return {"fields": [fields[i] for i in order]}

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        path = Path(root) / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(attrs["fields"])) + "\n", encoding="utf-8")
        return {"modality": self.modality, "path": f"{stem}.json"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        nums, cats = numbers(attrs), categories(attrs)
        largest = max(nums, key=nums.get)
        n = len(attrs["fields"])
        cat_phrase = " and ".join(f"the {name} is {value}" for name, value in cats.items())
        caption = f"a row of {count_word(n)} fields; {largest} is the largest at {nums[largest]} and {cat_phrase}"
        listing = ", ".join(f"{name} {value}" for name, value in attrs["fields"])
        paraphrases = [
            f"a record with {listing}",
            f"{count_word(n)} fields: {listing}",
            f"a table row where {largest} is largest ({nums[largest]}) and {cat_phrase}",
        ]
        return caption, paraphrases

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        nums, cats = numbers(attrs), categories(attrs)
        questions = [
            QA("largest", "Which numeric field has the largest value?", max(nums, key=nums.get)),
            QA("smallest", "Which numeric field has the smallest value?", min(nums, key=nums.get)),
            QA("count", "How many fields are there?", str(len(attrs["fields"]))),
        ]
        questions += [QA("category", f"What is the {name}?", value) for name, value in cats.items()]
        first, second = (str(n) for n in rng.choice(sorted(nums), size=2, replace=False))
        questions.append(
            QA("compare", f"Is the {first} greater than the {second}?", "yes" if nums[first] > nums[second] else "no")
        )
        asked = sorted(nums)[int(rng.integers(len(nums)))]
        questions.append(
            QA("threshold", f"Is the {asked} above {THRESHOLD}?", "yes" if nums[asked] > THRESHOLD else "no")
        )
        return questions
