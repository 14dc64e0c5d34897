"""Build the synthetic corpus (OneLLM's eight modalities by default, all fourteen on request): media files +
train/val/test JSONL manifests + synth_info.json."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.schema import ModalityInput, Record, Turn, caption_prompt, qa_prompt, write_manifest
from onellm.instruct_data.synth.base import QA, Generator, generator_names, get_generator, key_rank, rng_for

GENERATOR_VERSION = "1.5"  # bump whenever the same seed would give different files
SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = 0.1  # per held-out split (val, test): 80/10/10
QA_PER_ITEM = 3  # question records per item, each asking a different kind of question
MAX_DRAWS = 50  # attribute draws per item before a repeated content is accepted
PARALLEL_MIN_ITEMS = 200  # below this, process start-up (~0.1 s per worker) costs more than it saves


@dataclass
class SynthReport:
    """What :func:`synthesize` wrote. ``items[m][split]`` counts items (one caption + QA_PER_ITEM QA records each)."""

    out_dir: Path
    seed: int
    per_modality: int
    items: dict[str, dict[str, int]] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    duplicates_avoided: dict[str, int] = field(default_factory=dict)
    repeated_content: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 1

    def summary(self) -> str:
        """A small text table: items per modality and split, then totals."""
        width = max([10, *(len(name) + 1 for name in self.items)])
        lines = [f"{'modality':<{width}}" + "".join(f"{s:>8}" for s in SPLITS) + f"{'dup-avoided':>13}{'repeats':>9}"]
        for name, counts in self.items.items():
            row = "".join(f"{counts.get(s, 0):>8}" for s in SPLITS)
            lines.append(f"{name:<{width}}{row}{self.duplicates_avoided[name]:>13}{self.repeated_content[name]:>9}")
        totals = ", ".join(f"{s} {self.records.get(s, 0)}" for s in SPLITS)
        lines.append(f"records: {totals}; {self.seconds:.1f} s on {self.workers} worker(s); written to {self.out_dir}")
        return "\n".join(lines)


@dataclass
class _Item:
    modality: str
    index: int
    attrs: dict[str, Any]
    key: str
    split: str = ""


def _sample_items(gen: Generator, n: int, seed: int) -> tuple[list[_Item], int, int]:
    """Draw ``n`` items sequentially (the corpus must not depend on the worker count).

    A draw whose content key was already used is redrawn (counted as avoided) unless the generator allows repeats
    and there are already at least as many distinct contents as splits; after MAX_DRAWS it is kept (a repeat).
    """
    rng = rng_for(seed, gen.modality, "sample")
    seen: set[str] = set()
    items, avoided, repeats = [], 0, 0
    for index in range(n):
        for _ in range(MAX_DRAWS):
            attrs = gen.sample(rng)
            key = gen.content_key(attrs)
            if key not in seen or (gen.allow_repeats and len(seen) >= len(SPLITS)):
                break
            avoided += 1
        repeats += key in seen
        seen.add(key)
        items.append(_Item(gen.modality, index, attrs, key))
    return items, avoided, repeats


def _assign_splits(items: list[_Item]) -> None:
    """80/10/10 by content: items sharing a key form one group; groups in hash order fill val, then test, then train.

    With >= 3 distinct contents every split gets at least one, so small corpora still cover every modality.
    """
    groups: dict[str, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.key, []).append(item)
    held_out = max(1, round(HELD_OUT_FRACTION * len(items))) if len(groups) >= len(SPLITS) else 0
    filled = dict.fromkeys(SPLITS, 0)
    for key in sorted(groups, key=lambda k: key_rank(items[0].modality, k)):
        split = "val" if filled["val"] < held_out else "test" if filled["test"] < held_out else "train"
        for item in groups[key]:
            item.split = split
        filled[split] += len(groups[key])


# --- rendering (runs in worker processes) --------------------------------------------------------------------------

_WORKER_GENERATORS: dict[tuple[str, str], Generator] = {}


def _generator(modality: str, seed: int, options: dict[str, Any]) -> Generator:
    cache_key = (modality, json.dumps([seed, options], sort_keys=True))
    if cache_key not in _WORKER_GENERATORS:
        _WORKER_GENERATORS[cache_key] = get_generator(modality)(seed, **options)
    return _WORKER_GENERATORS[cache_key]


def _render(task: tuple[str, int, dict[str, Any], int, dict[str, Any], str]) -> dict[str, Any]:
    modality, seed, options, index, attrs, out_dir = task
    gen = _generator(modality, seed, options)
    stem = f"media/{modality}/{index:06d}"
    return gen.render(attrs, rng_for(seed, modality, index, "render"), Path(out_dir), stem)


def _choose_questions(questions: list[QA], rng: np.random.Generator) -> list[QA]:
    """QA_PER_ITEM questions of different kinds (fewer if fewer kinds exist), in the generator's order."""
    kinds = list(dict.fromkeys(q.kind for q in questions))
    chosen = sorted(rng.permutation(len(kinds))[:QA_PER_ITEM])
    picked = []
    for kind in (kinds[i] for i in chosen):
        options = [q for q in questions if q.kind == kind]
        picked.append(options[int(rng.integers(len(options)))])
    return picked


def _records(gen: Generator, item: _Item, input_dict: dict[str, Any], seed: int) -> list[Record]:
    text = gen.describe(item.attrs, rng_for(seed, item.modality, item.index, "text"))
    base_id = f"synth-{item.modality}-{item.index:06d}"
    meta = {
        "source": "synth",
        "generator_version": GENERATOR_VERSION,
        "split": item.split,
        "content_id": hashlib.sha256(item.key.encode()).hexdigest()[:16],
        "attributes": item.attrs,
    }
    records = [
        Record(
            id=base_id,
            inputs=[ModalityInput(**input_dict)],
            conversation=[Turn("user", caption_prompt(item.modality)), Turn("assistant", text.caption)],
            task="caption",
            references=[text.caption, *text.paraphrases],
            meta=meta,
        )
    ]
    picked = _choose_questions(text.questions, rng_for(seed, item.modality, item.index, "questions"))
    for number, qa in enumerate(picked):
        records.append(
            Record(
                id=f"{base_id}-qa{number}",
                inputs=[ModalityInput(**input_dict)],
                conversation=[Turn("user", qa_prompt(item.modality, qa.question)), Turn("assistant", qa.answer)],
                task="qa",
                references=[qa.answer],
                meta={**meta, "question_kind": qa.kind},
            )
        )
    return records


def corpus_modalities(selection: str | Sequence[str] | None = None) -> list[str]:
    """The modalities a corpus holds, from a selection as presets take it (:func:`onellm.modalities.resolve_modalities`):
    None = the default sets (OneLLM's eight), ``"all"``, a set name (``"extended"``) or names. A set keeps its
    modalities that have a generator (a plugin may bring none); a name without one is an error listing the known."""
    from onellm.modalities import ALL, DEFAULT, resolve_modalities
    from onellm.modalities.base import MODALITY_SETS

    if selection is None:
        items = []
    else:
        items = [s.strip() for s in selection.split(",")] if isinstance(selection, str) else list(selection)
    missing = [i for i in items if i not in (ALL, DEFAULT, *MODALITY_SETS) and i not in generator_names()]
    if missing or (selection is not None and not items):
        raise KeyError(
            f"no synthetic generator for {missing or 'an empty list'}; known: {', '.join(generator_names())}"
        )
    return [n for n in resolve_modalities(selection) if n in generator_names()]


def synthesize(
    out_dir: str | os.PathLike,
    per_modality: int,
    seed: int,
    modalities: str | Sequence[str] | None = None,
    *,
    fmri_voxels: int = 2048,
    workers: int | None = None,
) -> SynthReport:
    """Write the synthetic corpus to ``out_dir``: ``media/<modality>/...``, ``train.jsonl``, ``val.jsonl``,
    ``test.jsonl`` (every modality in each when ``per_modality >= 3``) and ``synth_info.json``.

    ``modalities``: None = OneLLM's eight (the default sets), ``"all"`` = all fourteen, a set name (``"extended"``)
    or names (see :func:`corpus_modalities`).

    Deterministic for a seed (same JSONL bytes, same media content) whatever ``workers`` is. Each item yields one
    caption record and ``QA_PER_ITEM`` QA records; the split of an item follows from its content key, so identical
    content never lands in two splits. ``workers`` defaults to the CPU count for corpora of >= 200 items.
    """
    if per_modality < 1:
        raise ValueError(f"per_modality must be >= 1, got {per_modality}")
    names = corpus_modalities(modalities)
    options = {name: ({"voxels": fmri_voxels} if name == "fmri" else {}) for name in names}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    report = SynthReport(out_dir=out, seed=seed, per_modality=per_modality)
    items: list[_Item] = []
    for name in names:
        gen = _generator(name, seed, options[name])
        drawn, report.duplicates_avoided[name], report.repeated_content[name] = _sample_items(gen, per_modality, seed)
        _assign_splits(drawn)
        report.items[name] = {split: sum(item.split == split for item in drawn) for split in SPLITS}
        items += drawn

    tasks = [(item.modality, seed, options[item.modality], item.index, item.attrs, str(out)) for item in items]
    if workers is None:
        workers = (os.cpu_count() or 1) if len(tasks) >= PARALLEL_MIN_ITEMS else 1
    report.workers = max(1, workers)
    if report.workers > 1:
        # fork: workers inherit the imported generators (spawn would re-import torch via onellm.modalities, ~3 s).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(report.workers) as pool:
            inputs = pool.map(_render, tasks, chunksize=max(1, len(tasks) // (report.workers * 8)))
    else:
        inputs = [_render(task) for task in tasks]

    by_split: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for item, input_dict in zip(items, inputs, strict=True):
        for record in _records(_generator(item.modality, seed, options[item.modality]), item, input_dict, seed):
            record.validate()
            by_split[item.split].append(record)
    for split in SPLITS:
        report.records[split] = write_manifest(out / f"{split}.jsonl", by_split[split])

    info = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "per_modality": per_modality,
        "modalities": names,
        "qa_per_item": QA_PER_ITEM,
        "items": report.items,
        "records": report.records,
        "duplicates_avoided": report.duplicates_avoided,
        "repeated_content": report.repeated_content,
        "vocabulary": {name: _generator(name, seed, options[name]).vocabulary() for name in names},
    }
    (out / "synth_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    report.seconds = time.perf_counter() - started
    return report
