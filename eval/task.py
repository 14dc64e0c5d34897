"""Evaluation tasks are data: one YAML file per task, loaded and validated here.

A task file (``eval/tasks/<name>.yaml``, or any folder given with ``--include-path``)::

    task: synth_image_caption          # must equal the file name
    version: 1                         # bump when a change alters the numbers (prompt, data, metric options)
    description: Caption the images of the synthetic corpus's test split.
    modality: image                    # the input modality of every sample
    task_type: caption                 # caption | qa | mc: records of this type are selected from the source
    source:                            # where the records come from; ``kind`` picks a loader (onellm.eval.sources)
      kind: synth
      dataset: synth                   # the data folder's name: --data-dir synth=DIR, $ONELLM_DATA_SYNTH, --data-root
      default_dir: runs/synth
      split: test
    prompt: "Provide a one-sentence caption for the provided {modality}."   # optional; default by task_type
    generation: {max_new_tokens: 32, temperature: 0}                          # optional
    metrics: [coco_caption]            # registered metric names, or {name: ..., options: {...}}
    primary_metric: cider              # optional: the number of the bar chart; default the first metric's first

``include: _base.yaml`` (a path relative to the file) merges a shared template under the file's own keys
(nested mappings merge key by key); files whose name starts with ``_`` are templates, not tasks.

Prompt fields: ``{modality}`` is the modality's noun ("point cloud", "fMRI scan"); ``{question}`` (qa and mc
only) is the record's question: its first user turn without the input markers and without the standard answer
instruction ("Answer the question using a single word or phrase.").

Every error names the file and the key (``synth_x.yaml: generation.max_new_tokens: expected a positive integer,
found 0``) and is raised as :class:`TaskConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onellm.eval.backends.base import GenerationConfig
from onellm.eval.metrics import metric_names
from onellm.eval.sources import SOURCE_COMMON_KEYS, get_source, source_kinds
from onellm.instruct_data.schema import QA_SUFFIX, media_noun
from onellm.modalities import modality_names
from onellm.typed_yaml import YamlConfigError, build, read_yaml

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TASK_TYPES = ("caption", "qa", "mc")
DEFAULT_PROMPTS = {
    "caption": "Provide a one-sentence caption for the provided {modality}.",
    "qa": "{question} " + QA_SUFFIX,
    "mc": "{question}",
}
# Fields a prompt may use, per task type: captions have no question to insert.
PROMPT_FIELDS = {"caption": ("modality",), "qa": ("modality", "question"), "mc": ("modality", "question")}


class TaskConfigError(YamlConfigError):
    """A task YAML is invalid; the message starts with the file and names the key."""


# --- the schema of a task file (types checked by onellm.typed_yaml; the rules types cannot say, by parse_task) -----
@dataclass
class GenerationSpec:
    max_new_tokens: int = GenerationConfig.max_new_tokens
    temperature: float = GenerationConfig.temperature
    top_p: float = GenerationConfig.top_p
    stop: list[str] | str = field(default_factory=list)


@dataclass
class MetricEntry:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskFile:
    task: str
    version: int | str
    modality: str
    task_type: Literal["caption", "qa", "mc"]
    source: dict[str, Any]
    metrics: list[str | MetricEntry]
    description: str = ""
    prompt: str | None = None
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    primary_metric: str | None = None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class Task:
    """A validated task. ``config`` is the merged YAML mapping (written to results.json as the task's config)."""

    name: str
    version: int | str
    description: str
    modality: str
    task_type: str
    source: dict[str, Any]
    prompt: str
    generation: GenerationConfig
    metrics: tuple[MetricSpec, ...]
    primary_metric: str | None
    path: Path
    config: dict[str, Any]

    def render_prompt(self, question: str = "") -> str:
        """The user text of one sample (the inputs' markers are placed before it by the backend)."""
        return self.prompt.format(modality=media_noun(self.modality), question=question)


# --- loading ------------------------------------------------------------------------------------------------------


def load_task_file(path: str | os.PathLike) -> Task:
    """Load and validate one task YAML."""
    path = Path(path).resolve()
    return parse_task(read_yaml(path, TaskConfigError, includes=True, what="task file"), path)


def _fail(path: Path, key: str, problem: str) -> TaskConfigError:
    return TaskConfigError(f"{path}: {key}: {problem}")


def parse_task(data: dict[str, Any], path: Path) -> Task:
    """Validate a merged task mapping; the first problem raises :class:`TaskConfigError` naming ``path`` and the key."""
    try:
        spec = build(TaskFile, data, skip=())
        source = _parse_source(spec.source)
    except YamlConfigError as exc:
        raise TaskConfigError(f"{path}: {exc}") from None
    if not spec.task.isidentifier():
        raise _fail(path, "task", f"expected a name of letters, digits and underscores, found {spec.task!r}")
    if spec.task != path.stem:
        raise _fail(path, "task", f"{spec.task!r} differs from the file name {path.stem!r}; they must match")
    if isinstance(spec.version, str) and not spec.version.strip():
        raise _fail(path, "version", "expected an integer or a version string, found an empty string")
    if spec.modality not in modality_names():
        raise _fail(path, "modality", f"{spec.modality!r} is not a registered modality ({', '.join(modality_names())})")
    prompt = _parse_prompt(
        spec.prompt if spec.prompt is not None else DEFAULT_PROMPTS[spec.task_type], spec.task_type, path
    )
    generation = _parse_generation(spec.generation, path)
    metrics = _parse_metrics(spec.metrics, path)
    if spec.primary_metric is not None and not spec.primary_metric.strip():
        raise _fail(path, "primary_metric", "expected a metric result name (e.g. cider), found an empty string")
    config = {
        **{f.name: data[f.name] for f in dataclasses.fields(TaskFile) if f.name in data},
        "prompt": prompt,
        "generation": generation.to_dict(),
        "metrics": [metric.to_dict() for metric in metrics],
    }
    return Task(
        name=spec.task,
        version=spec.version,
        description=spec.description,
        modality=spec.modality,
        task_type=spec.task_type,
        source=source,
        prompt=prompt,
        generation=generation,
        metrics=metrics,
        primary_metric=spec.primary_metric,
        path=path,
        config=config,
    )


def _source_schema(kind: str) -> type:
    """The dataclass a ``source:`` mapping of ``kind`` must fit: kind and dataset, the loader's required keys, and
    optional ones (the common keys and the loader's)."""
    loader = get_source(kind)
    optional = {k: t for k, t in SOURCE_COMMON_KEYS.items() if k not in ("kind", "dataset")} | dict(loader.optional)
    fields = [("kind", str), ("dataset", str), *loader.required.items()]
    fields += [(name, kind_ | None, field(default=None)) for name, kind_ in optional.items()]
    return dataclasses.make_dataclass(f"{kind}_source", fields)


def _parse_source(source: Any) -> dict[str, Any]:
    """The ``source:`` mapping checked against its kind's schema; raises :class:`YamlConfigError` naming the key."""
    if not isinstance(source, dict):
        raise YamlConfigError(f"source: expected a mapping with 'kind' and 'dataset', found {type(source).__name__}")
    kind = source.get("kind")
    if kind not in source_kinds():
        raise YamlConfigError(f"source.kind: {kind!r} is not a source kind ({', '.join(source_kinds())})")
    build(_source_schema(kind), source, "source", skip=())
    if not source["dataset"].isidentifier():
        raise YamlConfigError(
            f"source.dataset: expected a folder name of letters, digits, _; found {source['dataset']!r}"
        )
    problem = get_source(kind).check(source)
    if problem:
        raise YamlConfigError(f"source.{problem[0]}: {problem[1]}")
    return dict(source)


def _parse_prompt(prompt: Any, task_type: str, path: Path) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail(path, "prompt", f"expected a non-empty template string, found {prompt!r}")
    allowed = PROMPT_FIELDS[task_type]
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None]
    except ValueError as exc:
        raise _fail(path, "prompt", f"not a valid template ({exc}); write literal braces as {{{{ }}}}") from None
    for name in fields:
        if name not in allowed:
            raise _fail(path, "prompt", f"unknown field {{{name}}}; {task_type} prompts may use {allowed}")
    return prompt


def _parse_generation(spec: GenerationSpec, path: Path) -> GenerationConfig:
    if spec.max_new_tokens < 1:
        raise _fail(path, "generation.max_new_tokens", f"expected a positive integer, found {spec.max_new_tokens!r}")
    if spec.temperature < 0:
        raise _fail(path, "generation.temperature", f"expected a number >= 0 (0 = greedy), found {spec.temperature!r}")
    if not 0 < spec.top_p <= 1:
        raise _fail(path, "generation.top_p", f"expected a number in (0, 1], found {spec.top_p!r}")
    stop = [spec.stop] if isinstance(spec.stop, str) else spec.stop
    if not all(stop):
        raise _fail(path, "generation.stop", f"expected a list of non-empty strings, found {spec.stop!r}")
    return GenerationConfig(spec.max_new_tokens, spec.temperature, spec.top_p, tuple(stop))


def _parse_metrics(entries: list[str | MetricEntry], path: Path) -> tuple[MetricSpec, ...]:
    if not entries:
        raise _fail(path, "metrics", "expected a non-empty list of metric names")
    known = metric_names()
    specs = []
    for index, entry in enumerate(entries):
        entry = MetricEntry(entry) if isinstance(entry, str) else entry
        if entry.name not in known:
            raise _fail(
                path, f"metrics[{index}]", f"unknown metric {entry.name!r}; registered metrics: {', '.join(known)}"
            )
        specs.append(MetricSpec(entry.name, dict(entry.options)))
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(path, "metrics", f"metric {duplicates[0]!r} is listed twice")
    return tuple(specs)


# --- discovery ----------------------------------------------------------------------------------------------------


def task_files(include_paths: Sequence[str | os.PathLike] = ()) -> dict[str, Path]:
    """``{task name: yaml path}`` of the shipped tasks plus those in ``include_paths`` (which win on a clash)."""
    found: dict[str, Path] = {}
    for folder in (TASKS_DIR, *map(Path, include_paths)):
        if not folder.is_dir():
            raise TaskConfigError(f"{folder}: --include-path is not a folder")
        for path in sorted(folder.glob("*.yaml")):
            if not path.name.startswith("_"):
                found[path.stem] = path.resolve()
    return found


def task_names(include_paths: Sequence[str | os.PathLike] = ()) -> list[str]:
    return sorted(task_files(include_paths))


def load_task(name_or_path: str, include_paths: Sequence[str | os.PathLike] = ()) -> Task:
    """A task by name (shipped or in ``include_paths``) or by the path of its YAML file."""
    if name_or_path.endswith((".yaml", ".yml")):
        return load_task_file(name_or_path)
    files = task_files(include_paths)
    if name_or_path not in files:
        raise TaskConfigError(
            f"unknown task {name_or_path!r}; known tasks: {', '.join(sorted(files))} "
            "(or pass the path of a task YAML, or a folder of them with --include-path)"
        )
    return load_task_file(files[name_or_path])


def load_tasks(names: Iterable[str], include_paths: Sequence[str | os.PathLike] = ()) -> list[Task]:
    """Several tasks, validated all before any runs (a typo in the last one fails at once)."""
    tasks = [load_task(name, include_paths) for name in names]
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise TaskConfigError(f"task {task.name!r} is listed twice")
        seen.add(task.name)
    return tasks


def question_text(user_turn: str, markers: Iterable[str]) -> str:
    """The question of a QA record's user turn: markers removed, the standard answer instruction cut off the end.

    ``"<image>\\nWhat colour is it? Answer the question using a single word or phrase."`` -> ``"What colour is it?"``
    """
    text = user_turn
    for marker in markers:
        text = text.replace(marker, "")
    text = text.strip()
    if text.endswith(QA_SUFFIX):
        text = text[: -len(QA_SUFFIX)].rstrip()
    return text
