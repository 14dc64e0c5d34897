"""Shared parts of the converters: the registry, the report, and the collector that validates and writes records."""

from __future__ import annotations

import csv
import json
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onellm.instruct_data.schema import (
    ModalityInput,
    Record,
    Turn,
    caption_prompt,
    qa_prompt,
    record_problems,
    write_manifest,
)
from onellm.registry import Registry

ConverterFn = Callable[..., "ConvertReport"]
_REGISTRY: Registry[ConverterFn] = Registry("converter")


def register_converter(name: str) -> Callable[[ConverterFn], ConverterFn]:
    """Decorator: register ``convert`` under ``name`` (the CLI's ``onellm data convert NAME``)."""
    return _REGISTRY.register(name)


def get_converter(name: str) -> ConverterFn:
    return _REGISTRY[name]


def converter_names() -> list[str]:
    return _REGISTRY.names()


@dataclass
class ConvertReport:
    """What a conversion kept and rejected. ``rejected`` holds ``(where, reason)``: ``captions.csv:17`` or
    ``questions.json questions[3] (id 42)``; ``skipped`` counts entries left out on purpose (e.g. another split)."""

    format: str
    out_manifest: Path
    kept: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self, limit: int = 10) -> str:
        """``coco_captions: kept 4, rejected 1 -> out.jsonl`` then up to ``limit`` rejected entries."""
        lines = [f"{self.format}: kept {self.kept}, rejected {len(self.rejected)} -> {self.out_manifest}"]
        lines += [f"  skipped {count}: {reason}" for reason, count in self.skipped.items()]
        lines += [f"  rejected {where}: {reason}" for where, reason in self.rejected[:limit]]
        if len(self.rejected) > limit:
            lines.append(f"  ... and {len(self.rejected) - limit} more rejected")
        return "\n".join(lines)


class Rejected(Exception):
    """Raised inside a converter for one entry that cannot be converted; the message is the reason."""


class Collector:
    """Collects converted records: validates each against the schema, refuses duplicate ids, writes the manifest."""

    def __init__(self, format_name: str):
        self.format = format_name
        self.records: list[Record] = []
        self.rejected: list[tuple[str, str]] = []
        self.skipped: dict[str, int] = {}
        self._ids: dict[str, str] = {}
        self._occurrences: dict[str, int] = {}

    def reject(self, where: str, reason: str) -> None:
        self.rejected.append((where, reason))

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def unique_id(self, base: str) -> str:
        """``base`` the first time, then ``base-1``, ``base-2``... (sources where one object has several entries)."""
        count = self._occurrences.get(base, 0)
        self._occurrences[base] = count + 1
        return base if count == 0 else f"{base}-{count}"

    def add(self, record: Record, where: str) -> None:
        problems = record_problems(record.to_dict())
        if record.id in self._ids:
            problems.append(f"duplicate id {record.id!r} (first at {self._ids[record.id]})")
        if problems:
            self.reject(where, "; ".join(problems))
            return
        self._ids[record.id] = where
        self.records.append(record)

    def write(self, out_manifest: str | os.PathLike) -> ConvertReport:
        path = Path(out_manifest)
        kept = write_manifest(path, self.records)
        return ConvertReport(self.format, path, kept, list(self.rejected), dict(self.skipped))


# --- reading sources -----------------------------------------------------------------------------------------------


def load_json(path: str | os.PathLike) -> Any:
    """A JSON file (or JSONL: a list of its lines); errors name the file and the position."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def require_keys(data: Any, keys: tuple[str, ...], path: str | os.PathLike, layout: str) -> None:
    """Fail on a whole file that is not the expected layout (e.g. the questions file given as the annotations)."""
    if not isinstance(data, dict) or any(key not in data for key in keys):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected {layout} with keys {list(keys)}, found {found}")


def require_list(data: Any, path: str | os.PathLike, layout: str) -> list[Any]:
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected {layout} (a JSON list), found {type(data).__name__}")
    return data


def read_csv(path: str | os.PathLike, required: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a CSV with a header as ``(where, row)``; ``where`` is ``file.csv:LINE``. Missing columns fail early."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: tolerate a BOM from spreadsheet exports
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        for row in reader:
            yield f"{path.name}:{reader.line_num}", {key: (value or "").strip() for key, value in row.items() if key}


def media_path(prefix: str, name: str) -> str:
    """``prefix/name`` with forward slashes (manifests are portable); ``name`` alone when there is no prefix."""
    return posixpath.join(prefix.replace(os.sep, "/"), name) if prefix else name


def describe_entry(path: str | os.PathLike, field_name: str, index: int, entry_id: Any = None) -> str:
    """``questions.json questions[3] (id 42)``: where a JSON entry is, for rejection lists."""
    where = f"{Path(path).name} {field_name}[{index}]"
    return f"{where} (id {entry_id})" if entry_id is not None else where


@dataclass
class CocoQA:
    """A VQA-style questions file joined with its annotations file on ``question_id`` (VQAv2, OK-VQA)."""

    subtype: str  # "val2014": builds COCO image names
    # (where, question_id, question, annotation) for the matched ones, in question order; iterating it also
    # rejects the unmatched ones in place, so rejections stay in file order
    pairs: Iterator[tuple[str, Any, dict, dict]]


def join_coco_qa(
    questions_json: str | os.PathLike, annotations_json: str | os.PathLike, collector: Collector, layout: str
) -> CocoQA:
    """Read both files, check their layout (``layout`` names the dataset in errors), and join them: a question
    without an annotation, an annotation without a question and a non-object entry are rejected by name."""
    questions = load_json(questions_json)
    annotations = load_json(annotations_json)
    require_keys(questions, ("questions",), questions_json, f"a {layout} questions file")
    require_keys(annotations, ("annotations",), annotations_json, f"a {layout} annotations file")
    subtype = questions.get("data_subtype") or annotations.get("data_subtype")
    if not subtype:
        raise ValueError(f"{questions_json}: no 'data_subtype' (e.g. val2014) to build COCO image file names from")
    q_name, a_name = Path(questions_json).name, Path(annotations_json).name
    by_question: dict[Any, tuple[int, dict]] = {}
    for index, ann in enumerate(annotations["annotations"]):
        if isinstance(ann, dict):
            by_question[ann.get("question_id")] = (index, ann)
        else:
            collector.reject(describe_entry(a_name, "annotations", index), "annotation must be an object")

    def pairs() -> Iterator[tuple[str, Any, dict, dict]]:
        asked = set()
        for index, question in enumerate(questions["questions"]):
            if not isinstance(question, dict):
                collector.reject(describe_entry(q_name, "questions", index), "question must be an object")
                continue
            qid = question.get("question_id")
            where = describe_entry(q_name, "questions", index, qid)
            asked.add(qid)
            if qid not in by_question:
                collector.reject(where, f"no annotation with question_id {qid!r} in {a_name}")
                continue
            yield where, qid, question, by_question[qid][1]
        for qid, (index, _) in by_question.items():
            if qid not in asked:
                where = describe_entry(a_name, "annotations", index, qid)
                collector.reject(where, f"no question with this id in {q_name}")

    return CocoQA(subtype, pairs())


def add_coco_qa(
    questions_json: str | os.PathLike,
    annotations_json: str | os.PathLike,
    collector: Collector,
    layout: str,
    media_prefix: str,
    choose: Callable[[dict, list[str]], str],
) -> None:
    """VQA-layout questions + annotations (joined on ``question_id``) -> image QA records: references = the crowd
    ``answers``, target = ``choose(annotation, answers)`` (which may raise :class:`Rejected`). Pairs without a
    non-empty answer list, question text or integer ``image_id`` are rejected."""
    source = collector.format
    joined = join_coco_qa(questions_json, annotations_json, collector, layout)
    for where, qid, question, ann in joined.pairs:
        raw = ann.get("answers") if isinstance(ann.get("answers"), list) else []
        answers = [str(a.get("answer") or "").strip() if isinstance(a, dict) else "" for a in raw]
        image_id = question.get("image_id")
        try:
            if not answers or not all(answers):
                found = ann.get("answers")
                raise Rejected(f"'answers' must be a non-empty list of {{'answer': text}}, found {found!r:.80}")
            answer = choose(ann, answers)
            if not isinstance(image_id, int) or not str(question.get("question", "")).strip():
                raise Rejected("missing question text or integer image_id")
        except Rejected as exc:
            collector.reject(where, str(exc))
            continue
        path = media_path(media_prefix, f"COCO_{joined.subtype}_{image_id:012d}.jpg")
        meta = {
            "source": source,
            "question_id": qid,
            "image_id": image_id,
            "question_type": ann.get("question_type"),
            "answer_type": ann.get("answer_type"),
        }
        item = ModalityInput("image", path=path)
        collector.add(qa_record(f"{source}-{qid}", item, question["question"], answer, answers, meta), where)


def register_vqa_converter(name: str, layout: str, choose: Callable[[dict, list[str]], str], doc: str) -> ConverterFn:
    """Register converter ``name`` for a VQA-layout pair of files (``questions_json``, ``annotations_json``) whose
    target answer is ``choose(annotation, answers)``; ``doc`` is its docstring (the CLI's help)."""

    def convert(
        questions_json: str | os.PathLike,
        annotations_json: str | os.PathLike,
        out_manifest: str | os.PathLike,
        *,
        media_prefix: str = "",
    ) -> ConvertReport:
        collector = Collector(name)
        add_coco_qa(questions_json, annotations_json, collector, layout, media_prefix, choose)
        return collector.write(out_manifest)

    convert.__doc__ = doc
    return register_converter(name)(convert)


def coco_caption_images(
    captions_json: str | os.PathLike, collector: Collector, layout: str, required: tuple[str, ...]
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """A COCO-captions-layout file (``images`` + ``annotations`` joined on ``image_id``) -> ``(where, image entry, its
    captions)`` for every image that has the keys ``required`` and at least one caption. Orphan or empty captions
    and images without captions are rejected."""
    data = load_json(captions_json)
    require_keys(data, ("images", "annotations"), captions_json, layout)
    name = Path(captions_json).name
    captions: dict[Any, list[str]] = {}
    known = {image.get("id") for image in data["images"] if isinstance(image, dict)}
    for index, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = describe_entry(name, "annotations", index, ann_id)
        if not isinstance(ann, dict) or ann.get("image_id") not in known:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            collector.reject(where, f"image_id {image_id!r} is not in 'images'")
        elif not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
            collector.reject(where, "empty caption")
        else:
            captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    found = []
    for index, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        where = describe_entry(name, "images", index, image_id)
        missing = [key for key in ("id", *required) if not isinstance(image, dict) or image.get(key) in (None, "")]
        if missing:
            collector.reject(where, f"missing {missing}")
        elif image_id not in captions:
            collector.reject(where, "no captions")
        else:
            found.append((where, image, captions[image_id]))
    return found


def majority_answer(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one given first (VQA-style crowd answers)."""
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


# LLaVA-style conversations: [{"from": "human" | "gpt", "value": "..."}]. OneLLM also writes "assistant".
SOURCE_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def source_turns(conversations: Any) -> list[Turn]:
    """LLaVA-style ``conversations`` -> turns; :class:`Rejected` names the first malformed turn."""
    if not isinstance(conversations, list) or not conversations:
        raise Rejected("'conversations' must be a non-empty list")
    turns = []
    for index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise Rejected(f"conversations[{index}] needs 'from' and a string 'value'")
        role = SOURCE_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise Rejected(f"conversations[{index}].from {turn.get('from')!r} is not one of {sorted(SOURCE_ROLES)}")
        turns.append(Turn(role, turn["value"]))
    return turns


def replace_placeholder(turns: list[Turn], source_token: str, marker: str) -> int:
    """Replace ``source_token`` by ``marker`` in user turns; returns how many were found there."""
    found = 0
    for turn in turns:
        if turn.role == "user" and source_token in turn.content:
            found += turn.content.count(source_token)
            turn.content = turn.content.replace(source_token, marker)
    return found


def add_conversations(
    path: str | os.PathLike,
    collector: Collector,
    layout: str,
    id_key: str,
    build: Callable[[dict[str, Any], Any, list[Turn]], Record],
    index_if_missing: bool = False,
) -> None:
    """Every entry of a LLaVA-style conversation list (JSON list or JSONL) -> ``build(entry, entry_id, turns)``,
    added to ``collector``. Entries that are not objects, lack ``id_key`` (unless ``index_if_missing``: then the
    entry's position is its id) or have malformed ``conversations``, and entries ``build`` raises
    :class:`Rejected` for, are rejected by position."""
    entries = require_list(load_json(path), path, layout)
    name = Path(path).name
    for index, entry in enumerate(entries):
        entry_id = entry.get(id_key, index if index_if_missing else None) if isinstance(entry, dict) else None
        where = describe_entry(name, "entries", index, entry_id)
        try:
            if not isinstance(entry, dict):
                raise Rejected("entry must be an object")
            if entry_id in (None, ""):
                raise Rejected(f"entry needs an {id_key!r}")
            record = build(entry, entry_id, source_turns(entry.get("conversations")))
        except Rejected as exc:
            collector.reject(where, str(exc))
            continue
        collector.add(record, where)


def qa_record(
    record_id: str, item: ModalityInput, question: str, answer: str, references: list[str], meta: dict[str, Any]
) -> Record:
    """One short-answer QA record about ``item`` (the modality's QA prompt around ``question``)."""
    return Record(
        id=record_id,
        inputs=[item],
        conversation=[Turn("user", qa_prompt(item.modality, question)), Turn("assistant", answer)],
        task="qa",
        references=references,
        meta=meta,
    )


def caption_records(
    collector: Collector,
    base_id: str,
    path: str,
    captions: list[str],
    where: str,
    meta: dict[str, Any],
    modality: str = "image",
    each_caption: bool = False,
) -> None:
    """One caption record (answer = first caption, references = all) or, with ``each_caption``, one per caption
    (ids ``base-c0``, ``base-c1``...; every record keeps all captions as references). Shared by caption sources."""
    targets = list(enumerate(captions)) if each_caption else [(0, captions[0])]
    for number, caption in targets:
        collector.add(
            Record(
                id=f"{base_id}-c{number}" if each_caption else base_id,
                inputs=[ModalityInput(modality, path=path)],
                conversation=[Turn("user", caption_prompt(modality)), Turn("assistant", caption)],
                task="caption",
                references=list(captions),
                meta=meta,
            ),
            where,
        )
