"""Checkpoint weight names -> module names, through the conversions transformers itself applies when it loads.

transformers keeps the names checkpoints were published with and maps them at load time: ``save_pretrained``
writes a DINOv2's attention as ``attention.attention.query``, the 5.x module is ``attention.q_proj``, and
``from_pretrained`` renames through ``transformers.conversion_mapping`` (plain renames, prefix changes such as
CLIP's old ``vision_model.``, and converters that reshape, e.g. a fused SwiGLU ``weights_in`` split in two).
vLLM's loader maps nothing. The onellm vLLM model runs transformers' own modules for the encoder, so the weights
of those modules go through the very conversions transformers attaches to them (looked up by transformers, per
sub-model, so the next release's renames come with it); the LLM is vLLM's own implementation, whose loader reads
checkpoint names as they are on disk, so its weights pass unchanged.

    checkpoint (name, tensor) ... -> (checkpoint name, module name, tensor) ...   converter outputs come last

A checkpoint name that matches no module after the conversions raises :class:`CheckpointKeyError` naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, WeightTransform, rename_source_key


class CheckpointKeyError(ValueError):
    """A checkpoint weight that cannot be placed in the model; ``key`` is its name in the checkpoint."""

    def __init__(self, key: str, message: str):
        super().__init__(f"checkpoint key {key!r}: {message}")
        self.key = key


@dataclass
class _Scoped:
    """One transformers conversion and the sub-model it belongs to (its config feeds converter operations)."""

    transform: WeightTransform
    owner: PreTrainedModel | None  # None for transformers' unscoped "legacy" renames


def transformers_submodels(model: nn.Module, passthrough: str) -> dict[str, PreTrainedModel]:
    """The outermost transformers models strictly inside ``model`` and outside ``passthrough`` (a child's name),
    by path: in onellm, ``{"encoder.model": <Dinov2Model>}``."""
    found: dict[str, PreTrainedModel] = {}
    for path, module in model.named_modules():
        if not path or path == passthrough or path.startswith(passthrough + "."):
            continue
        if isinstance(module, PreTrainedModel) and not any(path.startswith(p + ".") for p in found):
            found[path] = module
    return found


class CheckpointNames:
    """Maps checkpoint names to ``model``'s module names as transformers' ``from_pretrained`` would.

    Args:
        model: the module tree the weights are loaded into (the vLLM model, or the HF model in tests).
        passthrough: the child whose weights keep their checkpoint names (vLLM's LLM: ``language_model``).
    """

    def __init__(self, model: nn.Module, passthrough: str = "language_model"):
        self.passthrough = passthrough + "."
        self.submodels = transformers_submodels(model, passthrough)
        scoped: list[_Scoped] = []
        for path, submodel in self.submodels.items():
            # The sub-model's own list, as transformers builds it for a model loaded on its own; its nested
            # sub-models come scoped relative to it, so prefix them with where it sits here.
            for transform in get_model_conversion_mapping(submodel, add_legacy=False):
                inner = transform.scope_prefix
                transform.scope_prefix = path if not inner else f"{path}.{inner}"
                transform.base_model_prefix = ""
                scoped.append(_Scoped(transform, submodel))
        # transformers adds its "legacy" renames (LayerNorm.gamma -> .weight, ...) unscoped, for every model.
        scoped += [_Scoped(t, None) for t in get_checkpoint_conversion_mapping("legacy") or []]
        self.renamings = [s.transform for s in scoped if isinstance(s.transform, WeightRenaming)]
        self.converters = [s.transform for s in scoped if isinstance(s.transform, WeightConverter)]
        # rename_source_key reports the converter by its source pattern (as in transformers' own loader)
        self._by_pattern = {
            source: s
            for s in scoped
            if isinstance(s.transform, WeightConverter)
            for source in s.transform.source_patterns
        }
        # module name -> the dtype the model holds it in (vLLM builds these modules in its serving dtype)
        self.targets = {
            f"{name}.{key}": tensor.dtype
            for name, child in model.named_children()
            if name + "." != self.passthrough
            for key, tensor in child.state_dict().items()
        }

    def module_name(self, key: str) -> tuple[str, str | None]:
        """``key`` -> (module name, the converter source pattern that matched or None); raises when unplaceable."""
        if key.startswith(self.passthrough):
            return key, None
        renamed, pattern = rename_source_key(key, self.renamings, self.converters)
        if renamed not in self.targets and key in self.targets:  # transformers' own fallback: the name was right
            return key, None
        if renamed not in self.targets:
            via = f" (transformers' conversions for {self._families()} map it to {renamed!r})" if renamed != key else ""
            raise CheckpointKeyError(
                key,
                f"no parameter or buffer of the model has this name{via}; the checkpoint's weights do not match "
                f"its config.json, or it was written by a transformers release whose names this one cannot map",
            )
        return renamed, pattern

    def convert(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, str, torch.Tensor]]:
        """Checkpoint ``(name, tensor)`` pairs -> ``(checkpoint name, module name, tensor)``.

        Renamed weights stream through; weights of a converter are collected and converted at the end (one source
        may feed several modules, several sources one module). A converter's outputs carry the name of its first
        checkpoint source. Floating tensors come in the dtype of the model's tensor they load into (a float32
        checkpoint served in bfloat16 is rounded here, as the parameter's copy would round it, so vLLM's loader
        does not warn once per weight); the passthrough's weights come as stored.
        """
        pending: dict[str, tuple[WeightConverter, PreTrainedModel, str]] = {}
        for key, tensor in weights:
            name, pattern = self.module_name(key)
            if pattern is None:
                yield key, name, self._in_model_dtype(name, tensor)
                continue
            if name not in pending:
                scoped = self._by_pattern[pattern]
                pending[name] = (deepcopy(scoped.transform), scoped.owner, key)
            pending[name][0].add_tensor(name, key, pattern, tensor)
        for first_name, (converter, owner, key) in pending.items():
            try:
                outputs = converter.convert(first_name, model=owner, config=getattr(owner, "config", None))
            except Exception as exc:
                raise CheckpointKeyError(key, f"transformers' {converter} failed on it: {exc}") from exc
            for name, value in outputs.items():
                if name not in self.targets:
                    raise CheckpointKeyError(key, f"converted to {name!r}, which the model does not have")
                yield key, name, self._in_model_dtype(name, value[0] if isinstance(value, list) else value)

    def _in_model_dtype(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self.targets.get(name)
        if dtype is None or dtype == tensor.dtype or not (tensor.is_floating_point() and dtype.is_floating_point):
            return tensor
        return tensor.to(dtype)

    def _families(self) -> str:
        return ", ".join(f"{path} ({type(m).__name__})" for path, m in self.submodels.items()) or "no sub-model"


__all__ = ["CheckpointKeyError", "CheckpointNames", "transformers_submodels"]
