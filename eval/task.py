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

import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from onellm.eval.backends.base import GenerationConfig
from onellm.eval.metrics import metric_names
from onellm.eval.sources import SOURCE_COMMON_KEYS, get_source, source_kinds
from onellm.instruct_data.schema import MEDIA_NOUNS, QA_SUFFIX
from onellm.modalities import modality_names

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TASK_TYPES = ("caption", "qa", "mc")
DEFAULT_PROMPTS = {
    "caption": "Provide a one-sentence caption for the provided {modality}.",
    "qa": "{question} " + QA_SUFFIX,
    "mc": "{question}",
}
# Fields a prompt may use, per task type: captions have no question to insert.
PROMPT_FIELDS = {"caption": ("modality",), "qa": ("modality", "question"), "mc": ("modality", "question")}

TOP_KEYS = (
    "task",
    "version",
    "description",
    "modality",
    "task_type",
    "source",
    "prompt",
    "generation",
    "metrics",
    "primary_metric",
)
REQUIRED_KEYS = ("task", "version", "modality", "task_type", "source", "metrics")
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "stop")


class TaskConfigError(ValueError):
    """A task YAML is invalid; the message starts with the file and names the key."""


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
        return self.prompt.format(modality=MEDIA_NOUNS.get(self.modality, self.modality), question=question)


# --- loading ------------------------------------------------------------------------------------------------------


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of one YAML file with its ``include`` chain merged in (the file's own keys win)."""
    where = " (included from " + " <- ".join(p.name for p in reversed(chain)) + ")" if chain else ""
    if not path.is_file():
        raise TaskConfigError(f"{path}: task file not found{where}")
    if path in chain:
        raise TaskConfigError(f"{path}: include cycle: {' -> '.join(p.name for p in (*chain, path))}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaskConfigError(f"{path}: not valid YAML{where}: {exc}") from None
    if not isinstance(data, dict):
        raise TaskConfigError(f"{path}: expected a mapping of task keys{where}, found {type(data).__name__}")
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str) or not include.strip():
        raise TaskConfigError(f"{path}: include: expected a file name relative to this file, found {include!r}")
    base = _read_yaml(path.parent / include, (*chain, path))
    return _merge(base, data)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_task_file(path: str | os.PathLike) -> Task:
    """Load and validate one task YAML."""
    path = Path(path).resolve()
    return parse_task(_read_yaml(path), path)


def _fail(path: Path, key: str, problem: str) -> TaskConfigError:
    return TaskConfigError(f"{path}: {key}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_task(data: dict[str, Any], path: Path) -> Task:
    """Validate a merged task mapping; the first problem raises :class:`TaskConfigError` naming ``path`` and the key."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise _fail(path, unknown[0], f"unknown key (allowed: {', '.join(TOP_KEYS)}, include)")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise _fail(path, key, "missing (required keys: " + ", ".join(REQUIRED_KEYS) + ")")

    name = data["task"]
    if not isinstance(name, str) or not name.isidentifier():
        raise _fail(path, "task", f"expected a name of letters, digits and underscores, found {name!r}")
    if name != path.stem:
        raise _fail(path, "task", f"{name!r} differs from the file name {path.stem!r}; they must match")
    version = data["version"]
    if not (_is_int(version) or (isinstance(version, str) and version.strip())):
        raise _fail(path, "version", f"expected an integer or a version string, found {version!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", f"expected text, found {type(description).__name__}")
    modality = data["modality"]
    if modality not in modality_names():
        raise _fail(path, "modality", f"{modality!r} is not a registered modality ({', '.join(modality_names())})")
    task_type = data["task_type"]
    if task_type not in TASK_TYPES:
        raise _fail(path, "task_type", f"{task_type!r} is not one of {', '.join(TASK_TYPES)}")

    source = _parse_source(data["source"], path)
    prompt = _parse_prompt(data.get("prompt", DEFAULT_PROMPTS[task_type]), task_type, path)
    generation = _parse_generation(data.get("generation", {}), path)
    metrics = _parse_metrics(data["metrics"], path)
    primary = data.get("primary_metric")
    if primary is not None and (not isinstance(primary, str) or not primary.strip()):
        raise _fail(path, "primary_metric", f"expected a metric result name (e.g. cider), found {primary!r}")

    config = {
        **{key: data[key] for key in TOP_KEYS if key in data},
        "prompt": prompt,
        "generation": generation.to_dict(),
        "metrics": [metric.to_dict() for metric in metrics],
    }
    return Task(
        name=name,
        version=version,
        description=description,
        modality=modality,
        task_type=task_type,
        source=source,
        prompt=prompt,
        generation=generation,
        metrics=metrics,
        primary_metric=primary,
        path=path,
        config=config,
    )


def _parse_source(source: Any, path: Path) -> dict[str, Any]:
    if not isinstance(source, dict):
        raise _fail(path, "source", f"expected a mapping with 'kind' and 'dataset', found {type(source).__name__}")
    kind = source.get("kind")
    if kind not in source_kinds():
        raise _fail(path, "source.kind", f"{kind!r} is not a source kind ({', '.join(source_kinds())})")
    loader = get_source(kind)
    keys = {**SOURCE_COMMON_KEYS, **loader.required, **loader.optional}
    for key in sorted(source):
        if key not in keys:
            raise _fail(path, f"source.{key}", f"unknown key for kind {kind!r} (allowed: {', '.join(keys)})")
    for key in ("dataset", *loader.required):
        if key not in source:
            raise _fail(path, f"source.{key}", f"missing (kind {kind!r} needs: dataset, {', '.join(loader.required)})")
    for key, value in source.items():
        expected = keys[key]
        if not isinstance(value, expected):
            raise _fail(path, f"source.{key}", f"expected {expected.__name__}, found {type(value).__name__} {value!r}")
    if not source["dataset"].isidentifier():
        raise _fail(
            path, "source.dataset", f"expected a folder name of letters, digits, _; found {source['dataset']!r}"
        )
    problem = loader.check(source)
    if problem:
        key, text = problem
        raise _fail(path, f"source.{key}", text)
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


def _parse_generation(generation: Any, path: Path) -> GenerationConfig:
    if not isinstance(generation, dict):
        raise _fail(path, "generation", f"expected a mapping, found {type(generation).__name__}")
    for key in generation:
        if key not in GENERATION_KEYS:
            raise _fail(path, f"generation.{key}", f"unknown key (allowed: {', '.join(GENERATION_KEYS)})")
    defaults = GenerationConfig()
    max_new = generation.get("max_new_tokens", defaults.max_new_tokens)
    if not _is_int(max_new) or max_new < 1:
        raise _fail(path, "generation.max_new_tokens", f"expected a positive integer, found {max_new!r}")
    temperature = generation.get("temperature", defaults.temperature)
    if not _is_number(temperature) or temperature < 0:
        raise _fail(path, "generation.temperature", f"expected a number >= 0 (0 = greedy), found {temperature!r}")
    top_p = generation.get("top_p", defaults.top_p)
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise _fail(path, "generation.top_p", f"expected a number in (0, 1], found {top_p!r}")
    stop = generation.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _fail(path, "generation.stop", f"expected a list of non-empty strings, found {stop!r}")
    return GenerationConfig(int(max_new), float(temperature), float(top_p), tuple(stop))


def _parse_metrics(metrics: Any, path: Path) -> tuple[MetricSpec, ...]:
    if not isinstance(metrics, list) or not metrics:
        raise _fail(path, "metrics", f"expected a non-empty list of metric names, found {metrics!r}")
    known = metric_names()
    specs = []
    for index, entry in enumerate(metrics):
        key = f"metrics[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise _fail(path, key, f"expected a metric name or {{name: ..., options: {{...}}}}, found {entry!r}")
        extra = sorted(set(entry) - {"name", "options"})
        if extra:
            raise _fail(path, f"{key}.{extra[0]}", "unknown key (allowed: name, options)")
        name, options = entry.get("name"), entry.get("options", {})
        if name not in known:
            raise _fail(path, key, f"unknown metric {name!r}; registered metrics: {', '.join(known)}")
        if not isinstance(options, dict):
            raise _fail(path, f"{key}.options", f"expected a mapping of constructor options, found {options!r}")
        specs.append(MetricSpec(name, dict(options)))
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
