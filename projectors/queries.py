"""Query sources, registered by name: where the N tokens that the experts turn into the LLM's soft tokens come from.

- ``learned`` (OneLLM): N learned query tokens, the same for every input; the experts must attend from them to the
  input tokens, so only an attention expert (``transformer``) passes the input through.
- ``pooled``: the learned queries plus the input tokens average-pooled to N: the patch grid pooled to
  sqrt(N) x sqrt(N) regions when both are square, otherwise the token sequence pooled to N runs. Each query starts as
  a summary of one region of the input, so a per-token expert (``mlp``) carries the input to the LLM from the
  first step, region by region (the LLaVA connector's idea at a fixed token count).

A source maps ``(queries [1, N, H], tokens [B, S, H])`` to ``[B, N, H]``; ``tokens[:, 0]`` is the encoder's class
token, ``tokens[:, 1:]`` its L = S - 1 input tokens in order (row-major patches for images).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from onellm.registry import Registry

_SOURCES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("query source")


def register_queries(name: str):
    """Decorator: ``source(queries [1, N, H], tokens [B, S, H]) -> [B, N, H]`` under ``name``."""
    return _SOURCES.register(name)


def query_sources() -> list[str]:
    return _SOURCES.names()


def query_source(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The source registered as ``name``; an unknown name is a ``KeyError`` listing the registered ones."""
    return _SOURCES[name]


def build_queries(name: str, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return query_source(name)(queries, tokens)


@register_queries("learned")
def _learned(queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return queries.expand(tokens.shape[0], -1, -1)


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


@register_queries("pooled")
def _pooled(queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    batch, num_queries, width = tokens.shape[0], queries.shape[1], tokens.shape[2]
    inputs = tokens[:, 1:] if tokens.shape[1] > 1 else tokens
    grid, side = _square_side(inputs.shape[1]), _square_side(num_queries)
    if grid is not None and side is not None:
        image = inputs.transpose(1, 2).reshape(batch, width, grid, grid)
        pooled = nn.functional.adaptive_avg_pool2d(image, side).flatten(2).transpose(1, 2)
    else:
        pooled = nn.functional.adaptive_avg_pool1d(inputs.transpose(1, 2), num_queries).transpose(1, 2)
    return queries + pooled
