"""Routers, registered by mode. A router turns a modality's features into mixture weights over K experts.

- ``pooled`` (default): weights from the mean of the (in-projected) encoder tokens -> ``[B, 1, K]``; input-dependent.
- ``query``: weights from each query token -> ``[1, N, K]``; depends only on the learned queries, so it is
  input-independent. This is how the official OneLLM code behaves (its router reads every position, and the
  outputs kept are those at the query positions); needed to reproduce released weights.
Weights sum to 1 over the experts, so K identical experts reproduce one expert exactly. How the router's logits
become weights is a second registered choice (``router_norm``): ``softmax`` (default) or ``sigmoid`` (each logit
through a sigmoid, divided by their sum: the official OneLLM code).
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


_NORMS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("router_norm")


def register_router_norm(name: str):
    """Decorator: ``normalise(logits [..., K]) -> weights [..., K]`` (summing to 1) under ``name``."""
    return _NORMS.register(name)


@register_router_norm("softmax")
def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


@register_router_norm("sigmoid")
def _sigmoid(logits: torch.Tensor) -> torch.Tensor:
    gates = logits.sigmoid()
    return gates / gates.sum(dim=-1, keepdim=True)


def router_norms() -> list[str]:
    return _NORMS.names()


class Router(nn.Module):
    """MLP (H -> hidden -> K) + ``norm``. The last layer starts at zero so a new router mixes experts uniformly.

    ``hidden`` defaults to H (OneLLM's routers use 4H; converted checkpoints give it)."""

    def __init__(self, width: int, num_experts: int, mode: str, norm: str = "softmax", hidden: int | None = None):
        super().__init__()
        _ROUTERS[mode], _NORMS[norm]  # an unknown name is a KeyError listing the known ones
        self.mode, self.norm = mode, norm
        hidden = hidden or width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_experts))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Mixture weights ``[B, 1, K]`` (pooled) or ``[1, N, K]`` (query)."""
        return _NORMS[self.norm](self.mlp(_ROUTERS[self.mode](features, queries)))
