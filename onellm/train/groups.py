"""Named parameter groups, so a recipe can say what trains in words ("tokenizer.audio", "projector.*", "lora").

Groups of a OneLLM model (PEFT-wrapped or not):
  encoder              the shared vision transformer (frozen in every default stage)
  llm                  the language model's own weights
  lora                 LoRA adapter weights (after PEFT wrapping)
  tokenizer.<m>        modality m's tokenizer (image-like modalities have none: they use the encoder's)
  projector.experts    the K shared experts of the UPM
  projector.<m>        modality m's UPM head (projections, queries, router, tags)
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

_RULES = [
    (re.compile(r"(^|\.)lora_"), lambda m: "lora"),
    (re.compile(r"(^|\.)mm_tokenizers\.(\w+)\."), lambda m: f"tokenizer.{m.group(2)}"),
    (re.compile(r"(^|\.)projector\.experts\."), lambda m: "projector.experts"),
    (re.compile(r"(^|\.)projector\.heads\.(\w+)\."), lambda m: f"projector.{m.group(2)}"),
    (re.compile(r"(^|\.)encoder\.model\."), lambda m: "encoder"),
    (re.compile(r"(^|\.)language_model\."), lambda m: "llm"),
]


def group_of(parameter_name: str) -> str:
    """The group a parameter belongs to (first matching rule; LoRA wins over llm)."""
    for pattern, name_of in _RULES:
        found = pattern.search(parameter_name)
        if found:
            return name_of(found)
    raise ValueError(f"parameter {parameter_name!r} belongs to no known group; groups are listed in {__name__}")


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """Group name -> parameter names, in model order."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(group_of(name), []).append(name)
    return groups


def set_trainable(model: nn.Module, patterns: list[str]) -> dict[str, int]:
    """Train exactly the groups matching ``patterns`` (fnmatch, e.g. ``projector.*``); freeze the rest.

    Returns the trainable parameter count per group (what a recipe reports at start). A pattern that
    matches no group is an error, so a typo cannot silently freeze what was meant to train.
    """
    groups = parameter_groups(model)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(g, pattern) for g in groups):
            wider = f"{pattern}.*"
            hint = f"; did you mean {wider!r}?" if any(fnmatch.fnmatchcase(g, wider) for g in groups) else ""
            raise ValueError(
                f"trainable pattern {pattern!r} matches no parameter group{hint}; groups: {sorted(groups)}"
            )
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = group_of(name)
        param.requires_grad_(any(fnmatch.fnmatchcase(group, p) for p in patterns))
        if param.requires_grad:
            counts[group] = counts.get(group, 0) + param.numel()
    return counts
