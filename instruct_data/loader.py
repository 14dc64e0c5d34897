"""Manifests -> validated records -> a torch dataset whose media are decoded lazily by the processor.

    report = validate_manifest("data/synth/train.jsonl", "data/synth", processor, on_error="skip", max_length=256)
    print(report.summary())                      # kept / rejected counts, one line per rejected record
    dataset = ManifestDataset(report.kept, "data/synth", processor)
    example = dataset[0]                         # {"id", "conversation", "media": [(modality, tensor)], "keys"}

Validation decodes every input once (each file once, however many records share it) and rejects a record for:
``missing file``, ``undecodable``, ``wrong shape``, ``NaN``, ``too long`` (tokens after placeholder expansion, or a
recording longer than the modality allows), ``empty answer``, ``placeholder count`` (markers != inputs),
``unsupported modality`` (the model does not take it) or ``schema`` (any other broken field). Rejected records are
always counted and listed with the manifest line, the file, the modality and the reason; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from onellm.instruct_data.collator import encode_conversation
from onellm.instruct_data.schema import ModalityInput, Record, scan_manifest
from onellm.modalities import MediaError, get_modality
from onellm.modalities.base import MISSING_FILE, NAN, TOO_LONG, UNDECODABLE, WRONG_SHAPE
from onellm.processing import OneLLMProcessor

# Rejection reasons, in the order a record is checked.
SCHEMA = "schema"
EMPTY_ANSWER = "empty answer"
PLACEHOLDER_COUNT = "placeholder count"
UNSUPPORTED = "unsupported modality"
REASONS = (SCHEMA, EMPTY_ANSWER, PLACEHOLDER_COUNT, UNSUPPORTED, MISSING_FILE, UNDECODABLE, WRONG_SHAPE, NAN, TOO_LONG)
ON_ERROR = ("skip", "fail")


class DataValidationError(ValueError):
    """Raised by ``on_error="fail"``; carries the full :class:`ValidationReport`."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(f"{len(report.rejected)} record(s) failed validation:\n{report.summary(limit=20)}")


@dataclass
class Rejection:
    """One rejected record: where it is (``manifest:line``), which record, which input file and why."""

    where: str
    record_id: str | None
    reason: str
    detail: str
    modality: str | None = None
    file: str | None = None

    def line(self) -> str:
        parts = [self.where, f"id {self.record_id}" if self.record_id else None, self.modality, self.file]
        return f"{' | '.join(p for p in parts if p)}: {self.reason}: {self.detail}"


@dataclass
class ValidationReport:
    """Kept records (in manifest order) and every rejection."""

    manifest: str
    kept: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rejections per reason (only reasons that occurred)."""
        return dict(Counter(r.reason for r in self.rejected))

    def summary(self, limit: int | None = None) -> str:
        head = f"{self.manifest}: kept {len(self.kept)}, rejected {len(self.rejected)}"
        if self.rejected:
            head += " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts().items())) + ")"
        shown = self.rejected if limit is None else self.rejected[:limit]
        lines = [head] + [f"  {r.line()}" for r in shown]
        if limit is not None and len(self.rejected) > limit:
            lines.append(f"  ... and {len(self.rejected) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "kept": len(self.kept),
            "kept_ids": [record.id for record in self.kept],
            "rejected": [vars(r) for r in self.rejected],
            "counts": self.counts(),
        }


# --- inputs ---------------------------------------------------------------------------------------------------------


def resolve_input(item: ModalityInput, media_root: str | os.PathLike | None) -> tuple[Any, dict[str, Any]]:
    """``(source, extras)`` for the processor: a path joined to ``media_root`` (unless absolute) or an array."""
    extras = input_extras(item, media_root)
    if item.array is not None:
        return np.asarray(item.array, dtype=np.float32), extras
    return media_path(item.path, media_root), extras


def media_path(path: str, media_root: str | os.PathLike | None) -> Path:
    """``path`` joined to ``media_root`` unless it is absolute."""
    path = Path(path)
    return path if path.is_absolute() or media_root is None else Path(media_root) / path


def input_extras(item: ModalityInput, media_root: str | os.PathLike | None) -> dict[str, Any]:
    """Per-input facts the modality's preprocessing reads: ``sample_rate``; ``rgb`` (the paired RGB image's path)."""
    extras: dict[str, Any] = {}
    if item.sample_rate is not None:
        extras["sample_rate"] = item.sample_rate
    if item.rgb_path is not None:
        extras["rgb"] = str(media_path(item.rgb_path, media_root))
    return extras


def content_key(source: Any, extras: dict[str, Any]) -> str:
    """A hash of the input's content (file bytes or array values) and its extras: the frozen-feature cache key.

    Keyed by content, not path, so a renamed or copied file hits the cache and an overwritten file misses it.
    """
    digest = hashlib.sha256()
    if isinstance(source, np.ndarray):
        digest.update(str(source.shape).encode())
        digest.update(np.ascontiguousarray(source, dtype=np.float32).tobytes())
    else:
        digest.update(Path(source).read_bytes())
    if "rgb" in extras:  # the paired image counts by content too
        rgb = Path(extras["rgb"])
        digest.update(rgb.read_bytes() if rgb.is_file() else b"missing")
    digest.update(json.dumps({k: v for k, v in extras.items() if k != "rgb"}, sort_keys=True).encode())
    return digest.hexdigest()[:32]


class _Preprocessor:
    """Preprocess with a processor, or with plain per-modality options when no model is at hand."""

    def __init__(self, processor_or_options: OneLLMProcessor | dict[str, dict] | None):
        self.processor = processor_or_options if isinstance(processor_or_options, OneLLMProcessor) else None
        self.options = None if self.processor else dict(processor_or_options or {})

    def takes(self, modality: str) -> bool:
        if self.processor is not None:
            return modality in self.processor.modalities
        return not self.options or modality in self.options

    def options_of(self, modality: str) -> dict[str, Any]:
        if self.processor is not None:
            return self.processor.options(modality)
        return get_modality(modality).options(**self.options.get(modality, {}))

    def __call__(self, modality: str, source: Any, extras: dict[str, Any]) -> torch.Tensor:
        return get_modality(modality).preprocess(source, extras=extras, **self.options_of(modality))

    def shape(self, modality: str) -> tuple[int, ...]:
        return tuple(get_modality(modality).input_shape(**self.options_of(modality)))


# --- validation -----------------------------------------------------------------------------------------------------


def _schema_reason(problems: list[str]) -> str:
    text = "; ".join(problems)
    if "empty answer" in text:
        return EMPTY_ANSWER
    if "placeholder(s) but inputs has" in text:
        return PLACEHOLDER_COUNT
    return SCHEMA


def validate_manifest(
    manifest: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    processor_or_modality_options: OneLLMProcessor | dict[str, dict] | None = None,
    on_error: str = "skip",
    *,
    max_length: int | None = None,
    modalities: Sequence[str] | None = None,
) -> ValidationReport:
    """Check every record of ``manifest``: schema, each input decoded to the expected shape, finite, and (with a
    processor and ``max_length``) the token count after placeholder expansion.

    Args:
        media_root: folder that relative input paths are joined to (default: the manifest's folder).
        processor_or_modality_options: the model's processor (checks everything), or ``{modality: options}`` to
            validate media without a model (no token-length check), or None for the modality defaults.
        on_error: ``"skip"`` returns the report (rejections listed); ``"fail"`` raises :class:`DataValidationError`
            listing every rejection when there is at least one.
        modalities: keep only records whose inputs all belong to these modalities (others are neither kept nor
            rejected: they belong to another stage). Text-only records count as belonging to every selection.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    manifest = Path(manifest)
    root = Path(media_root) if media_root is not None else manifest.parent
    preprocess = _Preprocessor(processor_or_modality_options)
    processor = preprocess.processor
    report = ValidationReport(manifest=str(manifest))
    decoded: dict[tuple[str, str, str], tuple[str, str] | None] = {}  # per file: None = fine, else (reason, detail)

    for where, data, problems in scan_manifest(manifest):
        record_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        if problems:
            report.rejected.append(Rejection(where, record_id, _schema_reason(problems), "; ".join(problems)))
            continue
        record = Record.from_dict(data, where)
        if modalities is not None and any(item.modality not in modalities for item in record.inputs):
            continue
        rejection = _check_inputs(record, where, root, preprocess, decoded)
        if rejection is None and processor is not None and max_length is not None:
            ids, _ = encode_conversation(processor, record.conversation)
            if len(ids) > max_length:
                rejection = Rejection(where, record.id, TOO_LONG, f"{len(ids)} tokens > max_length {max_length}")
        if rejection is None:
            report.kept.append(record)
        else:
            report.rejected.append(rejection)
    if on_error == "fail" and report.rejected:
        raise DataValidationError(report)
    return report


def _check_inputs(record: Record, where: str, root: Path, preprocess: _Preprocessor, decoded: dict) -> Rejection | None:
    for item in record.inputs:
        name = item.path if item.path is not None else "<inline array>"
        if not preprocess.takes(item.modality):
            return Rejection(
                where, record.id, UNSUPPORTED, "the model does not take this modality", item.modality, name
            )
        source, extras = resolve_input(item, root)
        if item.array is not None:
            problem = _check_one(item.modality, source, extras, preprocess)
        else:
            cache_key = (item.modality, str(source), json.dumps(extras, sort_keys=True))
            if cache_key not in decoded:
                decoded[cache_key] = _check_one(item.modality, source, extras, preprocess)
            problem = decoded[cache_key]
        if problem is not None:
            return Rejection(where, record.id, problem[0], problem[1], item.modality, name)
    return None


def _check_one(modality: str, source: Any, extras: dict, preprocess: _Preprocessor) -> tuple[str, str] | None:
    try:
        tensor = preprocess(modality, source, extras)
    except MediaError as error:
        return error.reason, error.problem
    expected = preprocess.shape(modality)
    if tuple(tensor.shape) != expected:
        return WRONG_SHAPE, f"preprocessed to {list(tensor.shape)}, expected {list(expected)}"
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        return NAN, f"{bad} NaN/inf value(s) after preprocessing"
    return None


# --- statistics -----------------------------------------------------------------------------------------------------


@dataclass
class ManifestStats:
    """What a manifest holds. Token counts are present only when a processor was given."""

    manifest: str
    records: int = 0
    invalid: int = 0
    by_modality: dict[str, int] = field(default_factory=dict)
    by_task: dict[str, int] = field(default_factory=dict)
    inputs_per_record: dict[int, int] = field(default_factory=dict)
    turns_per_record: dict[int, int] = field(default_factory=dict)
    answer_words: dict[str, float] = field(default_factory=dict)  # spread of the last assistant turn's length
    answer_vocabulary: int = 0  # distinct lower-cased words over every final answer (QA answer space size)
    tokens: dict[str, float] = field(default_factory=dict)  # spread after placeholder expansion

    def summary(self) -> str:
        def spread(values: dict[str, float]) -> str:
            if not values:
                return "-"
            return (
                f"min {values['min']:.0f}, p50 {values['p50']:.0f}, p90 {values['p90']:.0f}, p99 {values['p99']:.0f}, "
                f"max {values['max']:.0f}, mean {values['mean']:.1f}"
            )

        lines = [
            f"{self.manifest}: {self.records} valid record(s), {self.invalid} with schema problems",
            "  by modality: " + ", ".join(f"{k} {v}" for k, v in self.by_modality.items()),
            "  by task:     " + ", ".join(f"{k} {v}" for k, v in self.by_task.items()),
            "  inputs/record: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.inputs_per_record.items())),
            "  turns/record:  " + ", ".join(f"{k}: {v}" for k, v in sorted(self.turns_per_record.items())),
            f"  answer words:  {spread(self.answer_words)}",
            f"  answer vocabulary: {self.answer_vocabulary} distinct words",
        ]
        if self.tokens:
            lines.append(f"  tokens:        {spread(self.tokens)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _spread(values: list[int]) -> dict[str, float]:
    """min / percentiles (p50, p90, p99: numpy's linear interpolation) / max / mean; empty for no values."""
    if not values:
        return {}
    p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
    return {
        "min": min(values),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def manifest_stats(manifest: str | os.PathLike, processor: OneLLMProcessor | None = None) -> ManifestStats:
    """Counts per modality / task / shape of conversations; no media are decoded (that is validation's job)."""
    stats = ManifestStats(manifest=str(manifest))
    by_modality: Counter = Counter()
    by_task: Counter = Counter()
    inputs: Counter = Counter()
    turns: Counter = Counter()
    words, tokens = [], []
    vocabulary: set[str] = set()
    for where, data, problems in scan_manifest(manifest):
        if problems:
            stats.invalid += 1
            continue
        record = Record.from_dict(data, where)
        stats.records += 1
        for modality in dict.fromkeys(item.modality for item in record.inputs) or ["text"]:
            by_modality[modality] += 1
        by_task[record.task or "-"] += 1
        inputs[len(record.inputs)] += 1
        turns[len(record.conversation)] += 1
        words.append(len(record.answer.split()))
        vocabulary.update(word.strip(".,!?;:").lower() for word in record.answer.split())
        if processor is not None:
            tokens.append(len(encode_conversation(processor, record.conversation)[0]))
    stats.by_modality, stats.by_task = dict(by_modality), dict(by_task)
    stats.inputs_per_record, stats.turns_per_record = dict(inputs), dict(turns)
    stats.answer_words, stats.tokens = _spread(words), _spread(tokens)
    stats.answer_vocabulary = len(vocabulary - {""})
    return stats


# --- the dataset ----------------------------------------------------------------------------------------------------


class ManifestDataset(Dataset):
    """Validated records; ``dataset[i]`` decodes record i's media with the processor (lazily, every access).

    Returns ``{"id", "conversation": [{"role", "content"}], "media": [(modality, tensor | None)], "keys": [content
    key]}``, media in input order (= marker order). The content key is computed first (file bytes hashed once per
    dataset); when ``cached(modality, key)`` says the frozen-feature cache already holds that input's encoder
    features, the input is not decoded and its tensor is ``None`` (the training loop reads the features instead).
    A media error here means the file changed after validation; it is raised with the record id rather than skipped.
    """

    def __init__(
        self,
        records: Sequence[Record],
        media_root: str | os.PathLike | None,
        processor: OneLLMProcessor,
        cached: Callable[[str, str], bool] | None = None,
    ):
        self.records = list(records)
        self.media_root = media_root
        self.processor = processor
        self.cached = cached
        self._keys: dict[str, str] = {}  # file path -> content key (hashing a file once per dataset)

    def __len__(self) -> int:
        return len(self.records)

    def modalities(self, index: int) -> tuple[str, ...]:
        """The distinct modalities of record ``index`` (input order)."""
        return tuple(dict.fromkeys(item.modality for item in self.records[index].inputs))

    def _key(self, source: Any, extras: dict) -> str:
        if isinstance(source, np.ndarray):
            return content_key(source, extras)
        cache = f"{source}\n{json.dumps(extras, sort_keys=True)}"
        if cache not in self._keys:
            self._keys[cache] = content_key(source, extras)
        return self._keys[cache]

    def input_keys(self, index: int) -> list[str]:
        """The content keys of record ``index``'s inputs (what a batch's ``mm_keys`` hold), in input order."""
        return [self._key(*resolve_input(item, self.media_root)) for item in self.records[index].inputs]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        media, keys = [], []
        for item in record.inputs:
            source, extras = resolve_input(item, self.media_root)
            key = self._key(source, extras)
            keys.append(key)
            if self.cached is not None and self.cached(item.modality, key):
                media.append((item.modality, None))
                continue
            try:
                media.append((item.modality, self.processor.preprocess(item.modality, source, extras)))
            except MediaError as error:
                raise MediaError(
                    error.modality, error.source, f"{error.problem} (record {record.id})", error.reason
                ) from None
        return {
            "id": record.id,
            "conversation": [turn.to_dict() for turn in record.conversation],
            "media": media,
            "keys": keys,
        }


__all__ = [
    "REASONS",
    "DataValidationError",
    "ManifestDataset",
    "ManifestStats",
    "Rejection",
    "ValidationReport",
    "content_key",
    "manifest_stats",
    "resolve_input",
    "validate_manifest",
]
