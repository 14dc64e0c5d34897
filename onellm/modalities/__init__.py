"""Modality contracts, registered by name.

A modality file declares, in one place, everything the rest of the stack asks about it:

- ``preprocess(source, **options)``: file path / bytes / array -> fixed-shape float tensor;
- ``build_tokenizer(encoder_width, **options)``: the trainable module mapping that tensor to
  encoder tokens ``[B, L_m, C]`` (positions included);
- ``dummy_input(**options)``: a preprocessed tensor of the right shape (profiling, vLLM);
- ``image_like``: whether the tokenizer is the frozen encoder patch embedding (then the whole
  path up to the projector is frozen and its features can be cached).

The number of placeholder tokens an input occupies in the prompt is the same for every modality
(``N`` query tokens + start and end tags) and is computed by :func:`onellm.projectors.placeholder_count`.

Adding a modality = one file in this folder that calls :func:`register_modality` (+ its test), or a module in
another installed package named by an entry point of the group ``onellm.modalities`` (:data:`ENTRY_POINT_GROUP`).
A modality file holds every fact about its modality (prompt noun, OpenAI content parts, file suffixes, extra input
keys, pre-checks, preset options); serving, evaluation, the record schema and the presets read them from here.

Every registered modality is known everywhere (schema, serving, evaluation); which ones a model is *built* with is a
choice: by default the default sets (``Modality.group``: OneLLM's eight and plugins), or any selection
:func:`resolve_modalities` understands (``"all"``, a set name such as ``"extended"``, or a list of names).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from onellm.modalities.base import DEFAULT_SETS, MODALITY_SETS, MediaError, Modality, Source
from onellm.registry import Registry

# Registered instances; a class registered again (a module re-import) keeps its instance.
_REGISTRY: Registry[Modality] = Registry(
    "modality", same=lambda old, new: type(old) is type(new), order=lambda n: (_REGISTRY[n].order, n)
)


def register_modality(cls: type[Modality]) -> type[Modality]:
    """Class decorator: instantiate and register a modality under ``cls.name``."""
    name = cls.name
    if not name or not name.isidentifier():
        raise ValueError(f"modality class {cls.__name__} needs a `name` that is an identifier, got {name!r}")
    if cls.group not in MODALITY_SETS:
        raise ValueError(f"modality class {cls.__name__}: group {cls.group!r} is not one of {MODALITY_SETS}")
    if name not in _REGISTRY or type(_REGISTRY[name]) is not cls:
        _REGISTRY.add(name, cls())  # a different class under a taken name is an error naming both
    return cls


ENTRY_POINT_GROUP = "onellm.modalities"


def _load_builtin() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def _load_plugins() -> None:
    """Modalities from other installed packages: each entry point of the group ``onellm.modalities`` names a module
    (importing it registers its modalities with :func:`register_modality`) or a :class:`Modality` subclass."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as exc:
            raise ImportError(f"onellm modality plugin {entry.name!r} ({entry.value}) failed to load: {exc}") from exc
        if isinstance(loaded, type) and issubclass(loaded, Modality):
            register_modality(loaded)


def get_modality(name: str) -> Modality:
    """The registered modality ``name``; the error lists the known ones."""
    return _REGISTRY[name]


def modality_names(group: str | None = None) -> list[str]:
    """Registered modality names in curriculum order (``Modality.order``: image first); only the set ``group``
    (one of ``MODALITY_SETS``) when given."""
    if group is not None and group not in MODALITY_SETS:
        raise KeyError(f"unknown modality set {group!r}; known: {', '.join(MODALITY_SETS)}")
    return [n for n in _REGISTRY.names() if group is None or _REGISTRY[n].group == group]


def default_modality_names() -> list[str]:
    """The modalities built unless asked otherwise (presets, ``onellm data synth``, the default curricula): the
    default sets (OneLLM's eight and every plugin's), in curriculum order."""
    return [n for n in _REGISTRY.names() if _REGISTRY[n].group in DEFAULT_SETS]


ALL = "all"
DEFAULT = "default"


def resolve_modalities(selection: str | Sequence[str] | None = None) -> list[str]:
    """Modality names from a selection as presets and commands take it: None or ``"default"`` (the default sets),
    ``"all"`` (every registered one), a set name (``"onellm"``, ``"extended"``, ``"plugin"``), or names (a list, or a
    comma-separated string; sets may be mixed in: ``"default,xray"``). Lists keep their order; sets come in
    curriculum order; duplicates are dropped. An unknown name is an error listing the known names and sets."""
    if selection is None:
        return default_modality_names()
    items = [s.strip() for s in selection.split(",")] if isinstance(selection, str) else list(selection)
    names: list[str] = []
    for item in items:
        if item == DEFAULT:
            names += default_modality_names()
        elif item == ALL:
            names += modality_names()
        elif item in MODALITY_SETS:
            names += modality_names(item)
        elif item in _REGISTRY:
            names.append(item)
        else:
            raise KeyError(
                f"unknown modality {item!r}; known: {', '.join(modality_names())} (or {ALL}, {DEFAULT}, "
                f"{', '.join(MODALITY_SETS)})"
            )
    if not names:
        raise ValueError(f"the modality selection {selection!r} names no modality")
    return list(dict.fromkeys(names))


def marker(name: str) -> str:
    """The text placeholder that marks where an input of modality ``name`` goes, e.g. ``<image>``."""
    return get_modality(name).marker


_load_builtin()
_load_plugins()

__all__ = [
    "MediaError",
    "Modality",
    "Source",
    "default_modality_names",
    "get_modality",
    "marker",
    "modality_names",
    "register_modality",
    "resolve_modalities",
]
