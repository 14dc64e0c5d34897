"""The one record schema every data source is converted to (JSONL on disk, ``datasets.Dataset`` in memory).

One JSON object per line::

    {"id": "synth-image-000012",
     "inputs": [{"modality": "image", "path": "media/image/000012.png"}],
     "conversation": [{"role": "user", "content": "<image>\\nProvide a one-sentence caption for the provided image."},
                      {"role": "assistant", "content": "a large red circle on the left"}],
     "task": "caption", "references": ["a large red circle on the left", "..."], "meta": {...}}

Rules (checked by :func:`record_problems`; every problem names the field):

- ``id``: a non-empty string, unique within a manifest.
- ``inputs``: a list (may be empty for text-only chat); each input has ``modality`` (a registered name) and exactly
  one of ``path`` (relative to a media root, or absolute) or ``array`` (inline numbers, for tests and tiny signals);
  optional ``sample_rate`` (audio/imu) and ``rgb_path`` (depth/normal: the paired RGB image).
- ``conversation``: alternating ``user``/``assistant`` turns, user first, assistant last, no empty turn.
- Placeholders: the k-th ``marker(m)`` (e.g. ``<image>``) in the user turns is the k-th input of modality ``m``; the
  number of markers of each modality equals its number of inputs. Assistant turns hold no markers.
- ``task`` (optional): one of :data:`TASKS`. ``references`` (optional): non-empty answer strings for evaluation.
  ``meta`` (optional): a free-form JSON object.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onellm.modalities import get_modality, marker, modality_names

if TYPE_CHECKING:
    import datasets

TASKS = ("caption", "qa", "mc", "chat")
ROLES = ("user", "assistant")
RECORD_KEYS = ("id", "inputs", "conversation", "task", "references", "meta")
INPUT_KEYS = ("modality", "path", "array", "sample_rate", "rgb_path")


def media_noun(modality: str) -> str:
    """How prompts name a modality ("Provide a one-sentence caption for the provided point cloud."): its file's
    ``noun``; an unregistered name is used as it is."""
    return get_modality(modality).prompt_noun if modality in modality_names() else modality


def modalities_with(key: str) -> list[str]:
    """The modalities whose inputs may carry the optional field ``key`` (``sample_rate``, ``rgb_path``)."""
    return [m for m in modality_names() if key in get_modality(m).extra_keys]


QA_SUFFIX = "Answer the question using a single word or phrase."


def caption_prompt(modality: str) -> str:
    """The user turn of a caption record: ``"<image>\\nProvide a one-sentence caption for the provided image."``."""
    return f"{marker(modality)}\nProvide a one-sentence caption for the provided {media_noun(modality)}."


def qa_prompt(modality: str, question: str) -> str:
    """The user turn of a short-answer QA record (the VQAv2 / LLaVA-1.5 instruction)."""
    return f"{marker(modality)}\n{question.strip()} {QA_SUFFIX}"


class SchemaError(ValueError):
    """A record breaks the schema. ``str()`` reads ``train.jsonl:17 (id X): field problem; field problem``."""

    def __init__(self, problems: list[str], where: str = "", record_id: str | None = None):
        self.problems = list(problems)
        self.where = where
        self.record_id = record_id
        prefix = where
        if record_id is not None:
            prefix = f"{prefix} (id {record_id})" if prefix else f"id {record_id}"
        super().__init__(f"{prefix}: {'; '.join(self.problems)}" if prefix else "; ".join(self.problems))


# --- dataclasses ---------------------------------------------------------------------------------------------------


@dataclass
class ModalityInput:
    """One modality input: a file (``path``, relative to a media root) or an inline ``array`` (nested lists)."""

    modality: str
    path: str | None = None
    array: Any = None  # nested lists of numbers, or an np.ndarray (written as lists)
    sample_rate: float | None = None
    rgb_path: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "input") -> ModalityInput:
        problems = _input_problems(data, where, modality_names())
        if problems:
            raise SchemaError(problems)
        return cls(**{key: data.get(key) for key in INPUT_KEYS})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"modality": self.modality}
        if self.path is not None:
            out["path"] = self.path
        if self.array is not None:
            out["array"] = self.array.tolist() if isinstance(self.array, np.ndarray) else self.array
        if self.sample_rate is not None:
            out["sample_rate"] = self.sample_rate
        if self.rgb_path is not None:
            out["rgb_path"] = self.rgb_path
        return out


@dataclass
class Turn:
    role: str
    content: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        return cls(role=data["role"], content=data["content"])

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Record:
    id: str
    inputs: list[ModalityInput]
    conversation: list[Turn]
    task: str | None = None
    references: list[str] | None = None
    meta: dict[str, Any] | None = field(default=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> Record:
        """Validate ``data`` and build a record; a :class:`SchemaError` lists every problem with its field."""
        problems = record_problems(data)
        if problems:
            record_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
            raise SchemaError(problems, where, record_id)
        return cls(
            id=data["id"],
            inputs=[ModalityInput(**{key: item.get(key) for key in INPUT_KEYS}) for item in data.get("inputs", [])],
            conversation=[Turn.from_dict(turn) for turn in data["conversation"]],
            task=data.get("task"),
            references=list(data["references"]) if data.get("references") is not None else None,
            meta=data.get("meta"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSONL object; optional fields that are ``None`` are left out."""
        out: dict[str, Any] = {
            "id": self.id,
            "inputs": [item.to_dict() for item in self.inputs],
            "conversation": [turn.to_dict() for turn in self.conversation],
        }
        if self.task is not None:
            out["task"] = self.task
        if self.references is not None:
            out["references"] = list(self.references)
        if self.meta is not None:
            out["meta"] = self.meta
        return out

    def validate(self) -> None:
        """Raise :class:`SchemaError` if the record (e.g. built in code) breaks the schema."""
        problems = record_problems(self.to_dict())
        if problems:
            raise SchemaError(problems, record_id=self.id)

    @property
    def answer(self) -> str:
        """The last assistant turn (the target of caption / QA records)."""
        return self.conversation[-1].content


# --- validation ----------------------------------------------------------------------------------------------------


def _input_problems(item: Any, where: str, known: list[str]) -> list[str]:
    if not isinstance(item, dict):
        return [f"{where} must be an object, found {type(item).__name__}"]
    problems = []
    unknown = sorted(set(item) - set(INPUT_KEYS))
    if unknown:
        problems.append(f"{where} has unknown key(s) {unknown} (allowed: {', '.join(INPUT_KEYS)})")
    modality = item.get("modality")
    if not isinstance(modality, str):
        problems.append(f"{where}.modality is missing (known: {', '.join(known)})")
    elif modality not in known:
        problems.append(f"{where}.modality {modality!r} is not a known modality (known: {', '.join(known)})")
    has_path, has_array = item.get("path") is not None, item.get("array") is not None
    if has_path == has_array:
        found = "both" if has_path else "neither"
        problems.append(f"{where} needs exactly one of 'path' or 'array', found {found}")
    if has_path and (not isinstance(item["path"], str) or not item["path"].strip()):
        problems.append(f"{where}.path must be a non-empty string, found {item['path']!r}")
    if has_array:
        problems.extend(_array_problems(item["array"], f"{where}.array"))
    rate = item.get("sample_rate")
    if rate is not None:
        if isinstance(modality, str) and modality not in modalities_with("sample_rate"):
            problems.append(
                f"{where}.sample_rate is only allowed for {', '.join(modalities_with('sample_rate'))} inputs"
            )
        elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            problems.append(f"{where}.sample_rate must be a positive number, found {rate!r}")
    rgb = item.get("rgb_path")
    if rgb is not None:
        if isinstance(modality, str) and modality not in modalities_with("rgb_path"):
            problems.append(f"{where}.rgb_path is only allowed for {', '.join(modalities_with('rgb_path'))} inputs")
        elif not isinstance(rgb, str) or not rgb.strip():
            problems.append(f"{where}.rgb_path must be a non-empty string, found {rgb!r}")
    return problems


def _array_problems(array: Any, where: str) -> list[str]:
    if isinstance(array, np.ndarray):
        values = array
    else:
        if not isinstance(array, list):
            return [f"{where} must be a (nested) list of numbers, found {type(array).__name__}"]
        try:
            values = np.asarray(array, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            return [f"{where} is not a rectangular array of numbers ({exc})"]
    if not np.issubdtype(values.dtype, np.number) or values.dtype == bool:
        return [f"{where} must hold numbers, found dtype {values.dtype}"]
    if values.size == 0:
        return [f"{where} is empty"]
    bad = int((~np.isfinite(values)).sum())
    if bad:
        return [f"{where} has {bad} NaN/inf value(s)"]
    return []


def record_problems(data: Any) -> list[str]:
    """Every schema problem of one raw record (a dict as read from JSON), each naming its field. Empty = valid."""
    if not isinstance(data, dict):
        return [f"a record must be a JSON object, found {type(data).__name__}"]
    problems: list[str] = []
    unknown = sorted(set(data) - set(RECORD_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {unknown} (allowed: {', '.join(RECORD_KEYS)})")
    record_id = data.get("id")
    if not isinstance(record_id, str) or not record_id.strip():
        problems.append(f"id must be a non-empty string, found {record_id!r}")

    inputs = data.get("inputs", [])
    if not isinstance(inputs, list):
        problems.append(f"inputs must be a list, found {type(inputs).__name__}")
        inputs = []
    known = modality_names()
    for index, item in enumerate(inputs):
        problems.extend(_input_problems(item, f"inputs[{index}]", known))

    conversation = data.get("conversation")
    turns_ok = isinstance(conversation, list) and len(conversation) > 0
    if not turns_ok:
        problems.append(f"conversation must be a non-empty list of turns, found {conversation!r:.60}")
        conversation = []
    markers = {name: marker(name) for name in known}
    user_counts = dict.fromkeys(markers, 0)
    for index, turn in enumerate(conversation):
        where = f"conversation[{index}]"
        if not isinstance(turn, dict):
            problems.append(f"{where} must be an object with 'role' and 'content'")
            continue
        extra = sorted(set(turn) - {"role", "content"})
        if extra:
            problems.append(f"{where} has unknown key(s) {extra} (allowed: role, content)")
        expected = ROLES[index % 2]
        role, content = turn.get("role"), turn.get("content")
        if role != expected:
            problems.append(f"{where}.role is {role!r}, expected {expected!r} (turns alternate user/assistant)")
        if not isinstance(content, str) or not content.strip():
            what = "answer" if role == "assistant" else "content"
            problems.append(f"{where}.content: empty {what}")
            continue
        for name, text in markers.items():
            found = content.count(text)
            if found and role == "assistant":
                problems.append(f"{where}.content contains the placeholder {text}; placeholders go in user turns only")
            elif found:
                user_counts[name] += found
    if conversation and isinstance(conversation[-1], dict) and conversation[-1].get("role") == "user":
        problems.append(
            f"conversation ends with a user turn (conversation[{len(conversation) - 1}]); the last turn must be the assistant's"
        )

    input_counts = dict.fromkeys(markers, 0)
    for item in inputs:
        if isinstance(item, dict) and item.get("modality") in input_counts:
            input_counts[item["modality"]] += 1
    for name in markers:
        if user_counts[name] != input_counts[name]:
            problems.append(
                f"conversation has {user_counts[name]} {markers[name]} placeholder(s) but inputs has "
                f"{input_counts[name]} {name} input(s); they must match one to one"
            )

    task = data.get("task")
    if task is not None and task not in TASKS:
        problems.append(f"task {task!r} is not one of {', '.join(TASKS)}")
    references = data.get("references")
    if references is not None:
        if not isinstance(references, list) or not references:
            problems.append(f"references must be a non-empty list of strings, found {references!r:.60}")
        else:
            for index, ref in enumerate(references):
                if not isinstance(ref, str) or not ref.strip():
                    problems.append(f"references[{index}] must be a non-empty string, found {ref!r}")
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, dict):
        problems.append(f"meta must be a JSON object, found {type(meta).__name__}")
    return problems


# --- JSONL manifests -----------------------------------------------------------------------------------------------


def scan_manifest(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any] | None, list[str]]]:
    """Yield ``(where, raw record or None, problems)`` per non-blank line, including duplicate-id problems."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, None, [f"not valid JSON ({exc.msg} at column {exc.colno})"]
                continue
            problems = record_problems(data)
            record_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(record_id, str):
                if record_id in seen:
                    problems.append(f"id {record_id!r} is already used on line {seen[record_id]}; ids must be unique")
                else:
                    seen[record_id] = number
            yield where, data, problems


def iter_manifest(path: str | os.PathLike) -> Iterator[Record]:
    """Records of a JSONL manifest, validated; the first bad line raises :class:`SchemaError` naming file:line."""
    for where, data, problems in scan_manifest(path):
        if problems:
            record_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
            raise SchemaError(problems, where, record_id)
        yield Record.from_dict(data, where)


def read_manifest(path: str | os.PathLike) -> list[Record]:
    """All records of a JSONL manifest (see :func:`iter_manifest`)."""
    return list(iter_manifest(path))


def check_manifest(path: str | os.PathLike) -> list[str]:
    """Every problem in a manifest, one line each (``file:line (id X): problem``); empty when the file is valid."""
    lines = []
    for where, data, problems in scan_manifest(path):
        if problems:
            record_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
            lines.append(str(SchemaError(problems, where, record_id)))
    return lines


def dumps_record(record: Record | dict[str, Any]) -> str:
    """One JSONL line (no newline). Key order is fixed, so equal records give equal bytes."""
    data = record.to_dict() if isinstance(record, Record) else record
    return json.dumps(data, ensure_ascii=False, separators=(", ", ": "))


def write_manifest(path: str | os.PathLike, records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records as JSONL atomically (temp file in the same folder + rename); returns the count written.

    A crash mid-write leaves the old file (or none), never a truncated manifest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    count = 0
    try:
        with handle:
            for record in records:
                handle.write(dumps_record(record) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return count


# --- datasets.Dataset ----------------------------------------------------------------------------------------------


def hf_features() -> datasets.Features:
    """Arrow schema of :func:`to_hf_dataset`. Inline arrays are stored flat (float64) with their shape, because
    Arrow needs one nesting depth per column and inputs differ (audio ``[T]``, IMU ``[T, 6]``); ``meta`` is free-form
    and stored as a JSON string."""
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "inputs": List(
                {
                    "modality": Value("string"),
                    "path": Value("string"),
                    "array": List(Value("float64")),
                    "array_shape": List(Value("int64")),
                    "sample_rate": Value("float64"),
                    "rgb_path": Value("string"),
                }
            ),
            "conversation": List({"role": Value("string"), "content": Value("string")}),
            "task": Value("string"),
            "references": List(Value("string")),
            "meta": Value("string"),
        }
    )


def _input_row(item: ModalityInput) -> dict[str, Any]:
    array = None if item.array is None else np.asarray(item.array, dtype=np.float64)
    return {
        "modality": item.modality,
        "path": item.path,
        "array": None if array is None else array.reshape(-1).tolist(),
        "array_shape": None if array is None else list(array.shape),
        "sample_rate": None if item.sample_rate is None else float(item.sample_rate),
        "rgb_path": item.rgb_path,
    }


def to_hf_dataset(records: Iterable[Record]) -> datasets.Dataset:
    """Records -> ``datasets.Dataset`` (media stay paths/arrays; decoding belongs to the modality preprocessing)."""
    from datasets import Dataset

    rows = [
        {
            "id": record.id,
            "inputs": [_input_row(item) for item in record.inputs],
            "conversation": [turn.to_dict() for turn in record.conversation],
            "task": record.task,
            "references": record.references,
            "meta": None if record.meta is None else json.dumps(record.meta, ensure_ascii=False),
        }
        for record in records
    ]
    return Dataset.from_list(rows, features=hf_features())


def record_from_row(row: dict[str, Any]) -> Record:
    """One ``datasets`` row (as produced by :func:`to_hf_dataset`) -> :class:`Record`."""
    inputs = []
    for item in row["inputs"]:
        array = None
        if item.get("array") is not None:
            array = np.asarray(item["array"], dtype=np.float64).reshape(item["array_shape"]).tolist()
        rate = item.get("sample_rate")
        if rate is not None and float(rate).is_integer():
            rate = int(rate)  # 50.0 -> 50, so a JSONL -> Dataset -> JSONL round trip gives the same bytes
        inputs.append(ModalityInput(item["modality"], item.get("path"), array, rate, item.get("rgb_path")))
    return Record(
        id=row["id"],
        inputs=inputs,
        conversation=[Turn(turn["role"], turn["content"]) for turn in row["conversation"]],
        task=row.get("task"),
        references=row.get("references"),
        meta=None if row.get("meta") is None else json.loads(row["meta"]),
    )


def from_hf_dataset(dataset: datasets.Dataset) -> list[Record]:
    """``datasets.Dataset`` (from :func:`to_hf_dataset`) -> records."""
    return [record_from_row(row) for row in dataset]
