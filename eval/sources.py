"""Where a task's records come from: source kinds registered by name, and the data folders they read.

Every source yields records of the one schema (``onellm.instruct_data.schema.Record``) plus the folder their
relative media paths start from. Kinds:

- ``synth``: the synthetic corpus written by ``onellm data synth`` (``<folder>/<split>.jsonl``, media under it);
- ``manifest``: any onellm JSONL manifest (``manifest: test.jsonl`` relative to the folder);
- ``hf_dataset``: a ``datasets.Dataset`` of onellm records saved with ``save_to_disk`` (``path: ...``);
- ``converter``: official dataset files turned into records by a converter of ``onellm.instruct_data.converters``
  (``converter: coco_karpathy``, ``files: {dataset_json: dataset_coco.json}``, ``options: {...}``): formats are
  parsed in one place, the converters, never here.

The folder of a source is named by its ``dataset`` key and found, first match wins, from
``--data-dir NAME=DIR``, ``$ONELLM_DATA_<NAME>``, ``--data-root ROOT`` / ``$ONELLM_DATA_ROOT`` (ROOT/NAME), and
finally the YAML's ``default_dir`` (``runs/synth`` for the synthetic corpus) or ``data/NAME``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from onellm.instruct_data.schema import Record, read_manifest
from onellm.registry import Registry

# Keys every source mapping may have, with their types; each kind adds its own.
SOURCE_COMMON_KEYS: dict[str, type] = {"kind": str, "dataset": str, "default_dir": str, "hint": str}
ROOT_ENV = "ONELLM_DATA_ROOT"
DEFAULT_ROOT = "data"


class EvalDataError(RuntimeError):
    """A task's data cannot be read: the message names the task, the missing file and how to provide it."""


def dataset_env(dataset: str) -> str:
    """``coco`` -> ``ONELLM_DATA_COCO``: the environment variable naming one dataset's folder."""
    return f"ONELLM_DATA_{dataset.upper()}"


@dataclass
class DataDirs:
    """Resolves a dataset name to its folder (see the module docstring for the order)."""

    overrides: dict[str, Path] = field(default_factory=dict)
    root: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def resolve(self, dataset: str, default_dir: str | None = None) -> tuple[Path, str]:
        """``(folder, how it was chosen)``; the second part goes into error messages and results.json."""
        if dataset in self.overrides:
            return Path(self.overrides[dataset]).resolve(), f"--data-dir {dataset}=..."
        variable = dataset_env(dataset)
        if self.env.get(variable):
            return Path(self.env[variable]).resolve(), f"${variable}"
        if self.root is not None:
            return (Path(self.root) / dataset).resolve(), "--data-root"
        if self.env.get(ROOT_ENV):
            return (Path(self.env[ROOT_ENV]) / dataset).resolve(), f"${ROOT_ENV}"
        if default_dir:
            return Path(default_dir).resolve(), "the task's default_dir"
        return (Path(DEFAULT_ROOT) / dataset).resolve(), f"the default {DEFAULT_ROOT}/{dataset}"


@dataclass
class SourceData:
    """What a source yields: records, the folder relative media paths start from, and facts for results.json."""

    records: list[Record]
    media_root: Path
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceContext:
    """The task-side facts a loader needs for its messages and scratch files."""

    task: str
    yaml_path: Path
    folder: Path
    how: str  # how the folder was chosen
    scratch: Path  # a private folder for converted manifests

    def where_to_point(self, dataset: str) -> str:
        return (
            f"The folder of dataset '{dataset}' is {self.folder} (chosen by {self.how}); point to another with "
            f"--data-dir {dataset}=DIR, ${dataset_env(dataset)}, or --data-root ROOT (then ROOT/{dataset})."
        )

    def missing(self, path: Path, key: str, spec: dict[str, Any], advice: str = "") -> EvalDataError:
        hint = spec.get("hint")
        parts = [f"task {self.task}: missing file {path} ({key} in {self.yaml_path.name})."]
        if advice:
            parts.append(advice)
        if hint:
            parts.append(hint.strip())
        parts.append(self.where_to_point(spec["dataset"]))
        return EvalDataError(" ".join(parts))


class SourceLoader:
    """Base class of a source kind: its keys (name -> type) and how it loads."""

    kind: ClassVar[str] = ""
    required: ClassVar[dict[str, type]] = {}
    optional: ClassVar[dict[str, type]] = {}

    def check(self, spec: dict[str, Any]) -> tuple[str, str] | None:
        """A ``(key, problem)`` found without touching the disk, or None (called when the YAML loads)."""
        return None

    def load(self, spec: dict[str, Any], ctx: SourceContext) -> SourceData:
        raise NotImplementedError


_REGISTRY: Registry[SourceLoader] = Registry("source kind", same=lambda old, new: type(old) is type(new))


def register_source(cls: type[SourceLoader]) -> type[SourceLoader]:
    if cls.kind not in _REGISTRY or type(_REGISTRY[cls.kind]) is not cls:
        _REGISTRY.add(cls.kind, cls())  # a different class under a taken kind is an error naming both
    return cls


def get_source(kind: str) -> SourceLoader:
    return _REGISTRY[kind]


def source_kinds() -> list[str]:
    return _REGISTRY.names()


def _relative(folder: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else folder / path


# --- kinds ---------------------------------------------------------------------------------------------------------


@register_source
class SynthSource(SourceLoader):
    """The synthetic corpus: ``<folder>/<split>.jsonl`` with media under the folder."""

    kind = "synth"
    required = {"split": str}

    def check(self, spec: dict[str, Any]) -> tuple[str, str] | None:
        from onellm.instruct_data.synth import SPLITS

        if spec["split"] not in SPLITS:
            return "split", f"{spec['split']!r} is not a split of the synthetic corpus ({', '.join(SPLITS)})"
        return None

    def load(self, spec: dict[str, Any], ctx: SourceContext) -> SourceData:
        manifest = ctx.folder / f"{spec['split']}.jsonl"
        if not manifest.is_file():
            default = spec.get("default_dir") or "runs/synth"
            raise ctx.missing(
                manifest,
                "source.split",
                spec,
                f"Build the synthetic corpus with `onellm data synth --out {default} --per-modality 500` "
                "(or `python -m onellm.instruct_data.cli synth ...`).",
            )
        return SourceData(read_manifest(manifest), ctx.folder, {"manifest": str(manifest)})


@register_source
class ManifestSource(SourceLoader):
    """A onellm JSONL manifest; media paths start at ``media_root`` (default: the manifest's folder)."""

    kind = "manifest"
    required = {"manifest": str}
    optional = {"media_root": str}

    def load(self, spec: dict[str, Any], ctx: SourceContext) -> SourceData:
        manifest = _relative(ctx.folder, spec["manifest"])
        if not manifest.is_file():
            raise ctx.missing(manifest, "source.manifest", spec)
        media_root = _relative(ctx.folder, spec["media_root"]) if "media_root" in spec else manifest.parent
        return SourceData(read_manifest(manifest), media_root, {"manifest": str(manifest)})


@register_source
class HFDatasetSource(SourceLoader):
    """A ``datasets`` folder (``save_to_disk``) of onellm records (``onellm.instruct_data.schema.to_hf_dataset``)."""

    kind = "hf_dataset"
    required = {"path": str}
    optional = {"split": str, "media_root": str}

    def load(self, spec: dict[str, Any], ctx: SourceContext) -> SourceData:
        from datasets import DatasetDict, load_from_disk

        from onellm.instruct_data.schema import from_hf_dataset

        folder = _relative(ctx.folder, spec["path"])
        if not folder.is_dir():
            raise ctx.missing(folder, "source.path", spec, "Expected a folder written by datasets' save_to_disk.")
        dataset = load_from_disk(str(folder))
        if isinstance(dataset, DatasetDict):
            split = spec.get("split")
            if split not in dataset:
                raise EvalDataError(
                    f"task {ctx.task}: {folder} holds splits {sorted(dataset)}; set source.split in "
                    f"{ctx.yaml_path.name} to one of them (found {split!r})"
                )
            dataset = dataset[split]
        media_root = _relative(ctx.folder, spec["media_root"]) if "media_root" in spec else folder
        return SourceData(from_hf_dataset(dataset), media_root, {"path": str(folder)})


@register_source
class ConverterSource(SourceLoader):
    """Official files run through a registered converter into a scratch manifest, then read back.

    ``files`` maps the converter's source parameters (those before ``out_manifest`` in its signature) to file
    names relative to the dataset folder; ``options`` are its keyword-only options (``media_prefix``...). The
    converter's report (kept / rejected entries) goes into results.json, so nothing is dropped silently.
    """

    kind = "converter"
    required = {"converter": str, "files": dict}
    optional = {"options": dict}

    def check(self, spec: dict[str, Any]) -> tuple[str, str] | None:
        if not spec["files"]:
            return "files", "expected at least one official file (parameter name: file name)"
        for key, value in spec["files"].items():
            if not isinstance(value, str) or not value.strip():
                return f"files.{key}", f"expected a file name relative to the dataset folder, found {value!r}"
        return None

    def load(self, spec: dict[str, Any], ctx: SourceContext) -> SourceData:
        from onellm.instruct_data.converters import converter_names, get_converter

        name = spec["converter"]
        if name not in converter_names():
            raise EvalDataError(
                f"task {ctx.task}: {ctx.yaml_path.name} needs the converter {name!r}, which is not registered in "
                f"onellm.instruct_data.converters (registered: {', '.join(converter_names())})"
            )
        convert = get_converter(name)
        wanted = source_parameters(convert)
        given = list(spec["files"])
        if sorted(given) != sorted(wanted):
            raise EvalDataError(
                f"task {ctx.task}: source.files in {ctx.yaml_path.name} names {given}, but converter {name!r} reads "
                f"{wanted}; make the keys match its parameters"
            )
        paths = {}
        for key in wanted:
            path = _relative(ctx.folder, spec["files"][key])
            if not path.is_file():
                raise ctx.missing(path, f"source.files.{key}", spec)
            paths[key] = path
        ctx.scratch.mkdir(parents=True, exist_ok=True)
        out = ctx.scratch / f"{ctx.task}.jsonl"
        try:
            report = convert(*(paths[key] for key in wanted), out, **spec.get("options", {}))
        except TypeError as exc:  # an option the converter does not take
            raise EvalDataError(f"task {ctx.task}: source.options in {ctx.yaml_path.name}: {exc}") from None
        except (ValueError, FileNotFoundError) as exc:  # the file is not the expected layout
            raise EvalDataError(f"task {ctx.task}: converter {name!r} could not read the files: {exc}") from None
        info = {
            "converter": name,
            "files": {key: str(path) for key, path in paths.items()},
            "kept": report.kept,
            "rejected": len(report.rejected),
            "rejected_examples": [f"{where}: {why}" for where, why in report.rejected[:5]],
            "skipped": dict(report.skipped),
        }
        return SourceData(read_manifest(out), ctx.folder, info)


def source_parameters(convert: Callable[..., Any]) -> list[str]:
    """The source-file parameters of a converter: the positional ones before ``out_manifest``."""
    names = []
    for param in inspect.signature(convert).parameters.values():
        if param.name == "out_manifest" or param.kind is inspect.Parameter.KEYWORD_ONLY:
            break
        names.append(param.name)
    return names
