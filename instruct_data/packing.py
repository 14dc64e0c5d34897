"""Single-turn records that share their inputs, merged into multi-turn conversations (``data.turns_per_input``).

A synthetic or converted corpus often holds several single-turn records per input: one caption and a few questions
per image. Trained one record per sample, each input goes through the projector and the LLM once per question;
merged into one conversation (LLaVA's multi-turn format) it goes through once for all of them, and the projector
gets the gradients of every answer about that input in the same step.

What is merged: records with the same inputs whose conversation is one user turn and one answer, the user turn
starting with the inputs' markers (``"<image>\\n..."``: how the converters and the synthetic corpus write them).
The merged conversation keeps the markers in its first user turn only (one marker per input, as the schema
requires). Turn order is a shuffle seeded by ``(seed, first record id)``, so no kind of record always comes first
and the result is the same on every process and run. Everything else passes through unchanged, in order.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from onellm.instruct_data.schema import Record, Turn
from onellm.modalities import marker


def _markers(record: Record) -> str:
    return "".join(f"{marker(item.modality)}\n" for item in record.inputs)


def mergeable(record: Record) -> bool:
    """One user turn starting with the record's input markers, then one answer."""
    turns = record.conversation
    return (
        bool(record.inputs)
        and len(turns) == 2
        and turns[0].role == "user"
        and turns[0].content.startswith(_markers(record))
    )


def _inputs_key(record: Record) -> str:
    return json.dumps([item.to_dict() for item in record.inputs], sort_keys=True)


def merge(records: Sequence[Record], seed: int) -> Record:
    """One conversation holding every record's question and answer (records share their inputs), shuffled."""
    first = records[0]
    order = np.random.default_rng([seed, zlib.crc32(first.id.encode())]).permutation(len(records))
    prefix = _markers(first)
    turns: list[Turn] = []
    for position, index in enumerate(order):
        question, answer = records[index].conversation
        text = question.content if position == 0 else question.content[len(prefix) :]
        turns += [Turn("user", text), Turn("assistant", answer.content)]
    tasks = {record.task for record in records}
    return Record(
        id=f"{first.id}+{len(records) - 1}",
        inputs=first.inputs,
        conversation=turns,
        task=tasks.pop() if len(tasks) == 1 else "chat",
        meta={"merged": [records[i].id for i in order]},
    )


def merge_by_input(
    records: Sequence[Record],
    turns: int,
    seed: int,
    fits: Callable[[Record], bool] = lambda record: True,
    share: float = 1.0,
) -> list[Record]:
    """``records`` with each run of up to ``turns`` mergeable records that share their inputs merged into one.

    Groups keep the order of their first record; a group larger than ``turns`` becomes several conversations. A
    merged record for which ``fits`` is false (e.g. longer than the stage's ``max_length``) is not made: its records
    stay single. ``share``: the fraction of inputs whose records are merged (drawn by ``seed`` and the group's first
    record id); the others' records stay single turns, so a stage trains on both forms.
    """
    if turns < 1:
        raise ValueError(f"turns_per_input must be >= 1, got {turns}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the share of merged inputs must be in [0, 1], got {share}")
    if turns == 1:
        return list(records)
    groups: dict[str, list[Record]] = {}
    order: list[str | Record] = []
    for record in records:
        if not mergeable(record):
            order.append(record)
            continue
        key = _inputs_key(record)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(record)
    out: list[Record] = []
    for entry in order:
        if isinstance(entry, Record):
            out.append(entry)
            continue
        group = groups[entry]
        if share < 1.0 and np.random.default_rng([seed, zlib.crc32(group[0].id.encode()), 1]).random() >= share:
            out.extend(group)
            continue
        for start in range(0, len(group), turns):
            chunk = group[start : start + turns]
            merged = merge(chunk, seed) if len(chunk) > 1 else chunk[0]
            out.extend([merged] if merged is chunk[0] or fits(merged) else chunk)
    return out


__all__ = ["merge", "merge_by_input", "mergeable"]
