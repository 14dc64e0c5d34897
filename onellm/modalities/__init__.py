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
"""

from __future__ import annotations

import importlib
import pkgutil

from onellm.modalities.base import MediaError, Modality, Source
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


def modality_names() -> list[str]:
    """Registered modality names in curriculum order (``Modality.order``: image first)."""
    return _REGISTRY.names()


def marker(name: str) -> str:
    """The text placeholder that marks where an input of modality ``name`` goes, e.g. ``<image>``."""
    return get_modality(name).marker


_load_builtin()
_load_plugins()

__all__ = ["MediaError", "Modality", "Source", "get_modality", "marker", "modality_names", "register_modality"]
