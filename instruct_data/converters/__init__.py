"""Converters from public dataset formats to the onellm record schema, one file per format, registered by name.

Every converter is a function ``convert(<source paths>..., out_manifest, *, media_prefix="", <options>)`` returning
a :class:`ConvertReport` (records kept, and every rejected entry with where it was and why). The CLI builds its
arguments from the signature: parameters before ``out_manifest`` are positional source paths, keyword-only
parameters become ``--options``.

Adding a format = one file here that decorates its ``convert`` with ``@register_converter("name")``.
"""

from __future__ import annotations

import importlib
import pkgutil

from onellm.instruct_data.converters.base import (
    ConverterFn,
    ConvertReport,
    converter_names,
    get_converter,
    register_converter,
)


def _load_builtin() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_load_builtin()

__all__ = ["ConvertReport", "ConverterFn", "converter_names", "get_converter", "register_converter"]
