"""Query sources, registered by name: where the N tokens that the experts turn into the LLM's soft tokens come from.

- ``learned`` (OneLLM): N learned query tokens, the same for every input; the experts must attend from them to the
  input tokens, so only an attention expert (``transformer``) passes the input through.
- ``pooled``: the learned queries plus the input tokens average-pooled to N: the patch grid pooled to
  sqrt(N) x sqrt(N) regions when both are square, otherwise the token sequence pooled to N runs. Each query starts as
  a summary of one region of the input, so a per-token expert (``mlp``) carries the input to the LLM from the
  first step, region by region (the LLaVA connector's idea at a fixed token count).

A source maps ``(queries [1, N, H], tokens [B, S, H], grid)`` to ``[B, N, H]``; ``tokens[:, 0]`` is the encoder's
class token, ``tokens[:, 1:]`` its L = S - 1 input tokens in order (row-major patches for images). ``grid``: None, or
``((rows, cols), (r, c))`` from the modality (``Modality.query_grid``): the L tokens are a rows x cols grid, to be
pooled to r x c regions (audio: mel bands x frames, so each query hears a band over a span of time).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from onellm.registry import Registry

Grid = tuple[tuple[int, int], tuple[int, int]] | None
_SOURCES: Registry[Callable[[torch.Tensor, torch.Tensor, Grid], torch.Tensor]] = Registry("query source")


def register_queries(name: str):
    """Decorator: ``source(queries [1, N, H], tokens [B, S, H], grid) -> [B, N, H]`` under ``name``."""
    return _SOURCES.register(name)


def query_sources() -> list[str]:
    return _SOURCES.names()


def query_source(name: str) -> Callable[[torch.Tensor, torch.Tensor, Grid], torch.Tensor]:
    """The source registered as ``name``; an unknown name is a ``KeyError`` listing the registered ones."""
    return _SOURCES[name]


def build_queries(name: str, queries: torch.Tensor, tokens: torch.Tensor, grid: Grid = None) -> torch.Tensor:
    return query_source(name)(queries, tokens, grid)


@register_queries("learned")
def _learned(queries: torch.Tensor, tokens: torch.Tensor, grid: Grid = None) -> torch.Tensor:
    return queries.expand(tokens.shape[0], -1, -1)


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


@register_queries("pooled")
def _pooled(queries: torch.Tensor, tokens: torch.Tensor, grid: Grid = None) -> torch.Tensor:
    batch, num_queries, width = tokens.shape[0], queries.shape[1], tokens.shape[2]
    inputs = tokens[:, 1:] if tokens.shape[1] > 1 else tokens
    if grid is None:
        square, side = _square_side(inputs.shape[1]), _square_side(num_queries)
        grid = ((square, square), (side, side)) if square is not None and side is not None else None
    if grid is not None:
        (rows, cols), regions = grid
        if rows * cols != inputs.shape[1]:
            raise ValueError(f"pooled queries: {inputs.shape[1]} tokens do not form the {rows} x {cols} grid given")
        image = inputs.transpose(1, 2).reshape(batch, width, rows, cols)
        pooled = nn.functional.adaptive_avg_pool2d(image, regions).flatten(2).transpose(1, 2)
    else:
        pooled = nn.functional.adaptive_avg_pool1d(inputs.transpose(1, 2), num_queries).transpose(1, 2)
    return queries + pooled
