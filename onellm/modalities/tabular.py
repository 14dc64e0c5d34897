"""Tabular: one row of named fields, numeric or categorical: a JSON object (``{"age": 41, "city": "Oslo"}``), a
one-row CSV table with a header, a dict in memory, or a numeric array ``[F]`` (fields named "0", "1", ...) -> one
token per field.

The preprocessed input is ``[max_fields, 7]``, row f = field f in the row's order (rows past the field count are
zeros): present (1/0), kind (0 numeric, 1 categorical), the field name's hash bucket as two base-256 digits, the
categorical value's hash bucket as two digits, and the numeric value as ``signed_log(x)`` (a row carries no dataset
statistics to standardise with; signed_log puts 3, 3e3 and 3e30 on one O(10) scale). Buckets are CRC-32 of the
lower-cased text, stable across processes; the digits stay below 256 so they survive a cast to bfloat16 exactly.

Tokenizer (trainable): token = name embedding + kind embedding + (categorical: value embedding | numeric: an MLP of
the normalised value); absent fields get a learned pad vector. No position table: a row is a set of fields, named by
their embeddings (the same field in another column order gives the same tokens, permuted).

JSON cells: numbers are numeric, strings and booleans categorical, null a missing field (left out). CSV cells that
parse as numbers are numeric, other text categorical, empty cells missing.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import EXTENDED_SET, NAN, TOO_LONG, WRONG_SHAPE, Modality, Source, signed_log

COLUMNS = 7  # present, kind, name_hi, name_lo, value_hi, value_lo, number
DIGIT = 256


def bucket(text: str, buckets: int) -> int:
    """The hash bucket of a field name or a categorical value: CRC-32 of the stripped, lower-cased text."""
    return zlib.crc32(text.strip().lower().encode("utf-8")) % buckets


def _ids(values: torch.Tensor, high: int, low: int, buckets: int) -> torch.Tensor:
    """Two base-256 digit columns -> bucket ids ``[B, F]`` (rounded and clamped, so any input indexes safely)."""
    ids = values[..., high].float().round() * DIGIT + values[..., low].float().round()
    return ids.clamp(0, buckets - 1).long()


class TabularTokenizer(nn.Module):
    """``[B, max_fields, 7]`` -> ``[B, max_fields, C]``: one token per field."""

    def __init__(self, width: int, name_buckets: int, value_buckets: int):
        super().__init__()
        self.name_buckets, self.value_buckets = name_buckets, value_buckets
        self.names = nn.Embedding(name_buckets, width)
        self.values = nn.Embedding(value_buckets, width)
        self.kinds = nn.Embedding(2, width)
        self.number = nn.Sequential(nn.Linear(1, width), nn.GELU(), nn.Linear(width, width))
        self.pad = nn.Parameter(torch.zeros(width))

    def forward(self, fields: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        dtype = self.pad.dtype
        present = fields[..., 0].float() > 0.5  # [B, F]
        categorical = fields[..., 1].float() > 0.5
        names = self.names(_ids(fields, 2, 3, self.name_buckets))
        values = torch.where(
            categorical[..., None],
            self.values(_ids(fields, 4, 5, self.value_buckets)),
            self.number(fields[..., 6:7].to(dtype)),
        )
        tokens = names + self.kinds(categorical.long()) + values
        return torch.where(present[..., None], tokens, self.pad)


@register_modality
class TabularModality(Modality):
    name = "tabular"
    group = EXTENDED_SET
    order = 12
    noun = "table row"
    suffixes = (".json", ".csv")
    # max_fields tokens per row; the two hash tables' sizes (at most 256 x 256 buckets: two base-256 digits).
    defaults = {"max_fields": 64, "name_buckets": 4096, "value_buckets": 4096}
    # tiny: 8 fields; small: 16 fields, one per projector query; 7b: 64.
    preset_options = {
        "tiny": {"max_fields": 8, "name_buckets": 1024, "value_buckets": 1024},
        "small": {"max_fields": 16, "name_buckets": 2048, "value_buckets": 2048},
        "7b": {"max_fields": 64},
    }

    def file_match(self, path: Path) -> int:
        """A JSON object of scalars, or a CSV table of a header and exactly one row."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return 0
        if path.suffix.lower() == ".csv":
            return 4 if len([line for line in text.splitlines() if line.strip()]) == 2 else 0
        try:
            data = json.loads(text)
        except ValueError:
            return 0
        return 3 if isinstance(data, dict) and all(not isinstance(v, (dict, list)) for v in data.values()) else 0

    def encode_array(self, array: Any, extras: dict | None = None) -> tuple[bytes, str]:
        """A row (a dict, or a numeric array: fields "0", "1", ...) as JSON."""
        row = array if isinstance(array, dict) else {str(i): float(v) for i, v in enumerate(np.ravel(array))}
        return json.dumps(row).encode("utf-8"), "json"

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        return (self.options(**options)["max_fields"], COLUMNS)

    def load_row(self, source: Source | dict) -> dict[str, Any]:
        """``{name: number | str | None}`` in the row's order."""
        if isinstance(source, dict):
            return dict(source)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            array = self.load_array(source)
            if array.ndim != 1:
                raise self.fail(
                    source, f"an array row must be [F] numbers, found shape {list(array.shape)}", WRONG_SHAPE
                )
            return {str(i): float(v) for i, v in enumerate(array)}
        data = self.read_bytes(source)
        is_csv = isinstance(source, (str, Path)) and str(source).lower().endswith(".csv")
        if not is_csv:
            try:
                row = json.loads(data.decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError) as exc:
                if isinstance(source, (str, Path)):
                    raise self.fail(source, f"not a readable JSON object ({exc})") from None
                is_csv = True  # bytes of unknown format: a CSV table, if anything
            else:
                if not isinstance(row, dict):
                    raise self.fail(
                        source, f"expected a JSON object of fields, found a {type(row).__name__}", WRONG_SHAPE
                    )
                return row
        rows = self.read_csv(source, data)
        if len(rows) != 2:
            raise self.fail(source, f"expected a CSV header and one row, found {len(rows)} rows", WRONG_SHAPE)
        header, cells = rows
        return {name: (_csv_value(cell) if cell else None) for name, cell in zip(header, cells, strict=True)}

    def preprocess(self, source: Source | dict, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        row = self.load_row(source)
        fields = [(str(name), value) for name, value in row.items() if value is not None]
        if not fields:
            raise self.fail(source, "the row has no field with a value", WRONG_SHAPE)
        if len(fields) > opts["max_fields"]:
            raise self.fail(source, f"{len(fields)} fields exceeds the {opts['max_fields']}-field limit", TOO_LONG)
        out = np.zeros(self.input_shape(**opts), np.float32)
        for index, (name, value) in enumerate(fields):
            if not name.strip():
                raise self.fail(source, f"field {index} has an empty name", WRONG_SHAPE)
            out[index, 0] = 1.0
            out[index, 2:4] = divmod(bucket(name, opts["name_buckets"]), DIGIT)
            if isinstance(value, (bool, str)):
                out[index, 1] = 1.0
                out[index, 4:6] = divmod(bucket(str(value).lower(), opts["value_buckets"]), DIGIT)
            elif isinstance(value, (int, float)):
                if not math.isfinite(value):
                    raise self.fail(source, f"field {name!r} is {value}", NAN)
                out[index, 6] = signed_log(value)
            else:
                raise self.fail(
                    source,
                    f"field {name!r} holds a {type(value).__name__}; expected a number, text, true/false or null",
                    WRONG_SHAPE,
                )
        return torch.from_numpy(out)

    def dummy_input(self, **options: Any) -> torch.Tensor:
        """Two numeric fields and one categorical one (valid bucket digits)."""
        opts = self.options(**options)
        row = {"height": 1.5, "count": 12, "colour": "red"}
        return (
            self.preprocess(json.dumps(row).encode(), **opts)
            if opts["max_fields"] >= len(row)
            else torch.zeros(self.input_shape(**opts))
        )

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        for key in ("name_buckets", "value_buckets"):
            if not 1 <= opts[key] <= DIGIT * DIGIT:
                raise ValueError(f"modality 'tabular': {key} must be in 1..{DIGIT * DIGIT}, got {opts[key]}")
        return TabularTokenizer(width, opts["name_buckets"], opts["value_buckets"])


def _csv_value(cell: str) -> float | str:
    try:
        return float(cell)
    except ValueError:
        return cell
