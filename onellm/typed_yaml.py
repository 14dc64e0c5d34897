"""YAML configuration files -> typed dataclasses: the one reader and the one converter behind stage, curriculum and
evaluation-task YAMLs.

- :func:`read_yaml`: a file's mapping (optionally with its ``include:`` chain merged in), errors naming the file;
- :func:`build`: a mapping checked against a dataclass's annotations (``int``, ``float``, ``str``, ``bool``,
  ``Literal``, unions, ``list``, ``dict``, nested dataclasses, ``Any``): unknown and missing keys and wrong types
  are errors naming the dotted key (``generation.max_new_tokens: expected int, got 'x'``).

Each caller raises its own subclass of :class:`YamlConfigError` (``ConfigError`` for training,
``TaskConfigError`` for evaluation) with the file in front: ``file: key: problem``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class YamlConfigError(ValueError):
    """A configuration file or value is invalid. Messages read ``file: key: problem`` (or ``key: problem`` from
    :func:`build`, before the caller adds the file)."""


def read_yaml(
    path: Path,
    error: type[YamlConfigError] = YamlConfigError,
    includes: bool = False,
    what: str = "config file",
    _chain: tuple[Path, ...] = (),
) -> Any:
    """The parsed content of ``path``. With ``includes``: a mapping whose ``include: other.yaml`` (relative to the
    file) is merged under the file's own keys, nested mappings key by key, recursively."""
    where = " (included from " + " <- ".join(p.name for p in reversed(_chain)) + ")" if _chain else ""
    if not path.is_file():
        raise error(f"{path}: {what} not found{where}")
    if path in _chain:
        raise error(f"{path}: include cycle: {' -> '.join(p.name for p in (*_chain, path))}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML{where}: {exc}") from None
    if not includes:
        return data
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of keys{where}, found {type(data).__name__}")
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str) or not include.strip():
        raise error(f"{path}: include: expected a file name relative to this file, found {include!r}")
    return merge(read_yaml(path.parent / include, error, True, what, (*_chain, path)), data)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _shape(kind_or_value: Any) -> type | None:
    """dict, list or None (a scalar) for an annotation or a value: which union option a value was meant for."""
    if (
        isinstance(kind_or_value, dict)
        or dataclasses.is_dataclass(kind_or_value)
        or typing.get_origin(kind_or_value) is dict
    ):
        return dict
    if isinstance(kind_or_value, list) or typing.get_origin(kind_or_value) is list:
        return list
    return None


def convert(value: Any, kind: Any, key: str) -> Any:
    """``value`` checked against the annotation ``kind``; a :class:`YamlConfigError` names ``key``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = {}
        for option in options:
            try:
                return convert(value, option, key)
            except YamlConfigError as exc:
                errors[_type_name(option)] = (option, str(exc))
        # The option of the value's own shape (a mapping for a dataclass, a list for a list) explains best.
        fitting = [text for option, text in errors.values() if _shape(option) is _shape(value)]
        if len(fitting) == 1:
            raise YamlConfigError(fitting[0])
        raise YamlConfigError(
            next(iter(errors.values()))[1]
            if len(errors) == 1
            else f"{key}: expected one of {list(errors)}, got {value!r}"
        )
    if origin is Literal:
        if value not in args:
            raise YamlConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if value is None:
        raise YamlConfigError(f"{key}: must be set (expected {_type_name(kind)})")
    if origin is list:
        if not isinstance(value, list):
            raise YamlConfigError(f"{key}: expected a list, got {value!r}")
        return [convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise YamlConfigError(f"{key}: expected a mapping, got {value!r}")
        return {convert(k, args[0], key): convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return build(kind, value, key)
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads 5e-4, without a dot, as a string
    if kind in (int, float) and isinstance(value, bool) or not isinstance(value, kind):
        raise YamlConfigError(f"{key}: expected {_type_name(kind)}, got {value!r}")
    return value


def build(cls: type[T], data: Any, key: str = "", skip: tuple[str, ...] = ("source",)) -> T:
    """The dataclass ``cls`` from the mapping ``data``: unknown keys, missing required keys and wrong types are
    :class:`YamlConfigError` naming the dotted key (prefixed by ``key``). Fields named in ``skip`` are not read
    from the file (they are set by the loader)."""
    if not isinstance(data, dict):
        raise YamlConfigError(f"{key or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    names = [f.name for f in fields]
    prefix = f"{key}." if key else ""
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise YamlConfigError(f"{prefix}{unknown[0]}: unknown key; allowed here: {', '.join(names)}")
    values = {}
    for f in fields:
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise YamlConfigError(f"{prefix}{f.name}: required key is missing")
            continue
        values[f.name] = convert(data[f.name], hints[f.name], f"{prefix}{f.name}")
    return cls(**values)


__all__ = ["YamlConfigError", "build", "convert", "merge", "read_yaml"]
