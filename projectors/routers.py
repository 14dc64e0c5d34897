"""Routers, registered by mode. A router turns a modality's features into mixture weights over K experts.

- ``pooled`` (default): weights from the mean of the (in-projected) encoder tokens -> ``[B, 1, K]``; input-dependent.
- ``query``: weights from each query token -> ``[1, N, K]``; depends only on the learned queries, so it is
  input-independent. This is how the official OneLLM code behaves (its router reads every position, and the
  outputs kept are those at the query positions); needed to reproduce released weights.
Weights are a softmax over experts, so they sum to 1: K identical experts reproduce one expert exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from onellm.registry import Registry

_ROUTERS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("router mode")


def register_router(mode: str):
    """Decorator: ``select(features [B, S, H], queries [1, N, H]) -> router input [B|1, 1|N, H]``."""
    return _ROUTERS.register(mode)


@register_router("pooled")
def _pooled(features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    return features.mean(dim=1, keepdim=True)


@register_router("query")
def _query(features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    return queries


def router_modes() -> list[str]:
    return _ROUTERS.names()


class Router(nn.Module):
    """MLP (H -> H -> K) + softmax. The last layer starts at zero so a new router mixes experts uniformly."""

    def __init__(self, width: int, num_experts: int, mode: str):
        super().__init__()
        _ROUTERS[mode]  # an unknown mode is a KeyError listing the known ones
        self.mode = mode
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, num_experts))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Mixture weights ``[B, 1, K]`` (pooled) or ``[1, N, K]`` (query)."""
        return self.mlp(_ROUTERS[self.mode](features, queries)).softmax(dim=-1)
