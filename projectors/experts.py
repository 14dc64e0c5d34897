"""Expert blocks, registered by name. An expert is a stack of ``depth`` blocks mapping ``[B, S, H] -> [B, S, H]``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from onellm.registry import Registry

_EXPERTS: Registry[Callable[..., nn.Module]] = Registry("expert kind")


def register_expert(name: str):
    """Decorator: ``builder(width, depth, num_heads, mlp_ratio) -> nn.Module`` under ``name``."""
    return _EXPERTS.register(name)


def build_expert(kind: str, width: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.Module:
    return _EXPERTS[kind](width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)


class Block(nn.Module):
    """Bidirectional pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x)). ``[B, S, H] -> [B, S, H]``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"projector width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v)  # no mask: every token sees every token
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


@register_expert("transformer")
def transformer_expert(width: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.Module:
    return nn.Sequential(*[Block(width, num_heads, mlp_ratio) for _ in range(depth)])


class ResidualMLP(nn.Module):
    """``x + Linear(GELU(Linear(x)))``, token by token (no attention, no normalisation)."""

    def __init__(self, width: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


@register_expert("mlp")
def mlp_expert(width: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.Module:
    """Per-token residual MLPs: each query position is mapped on its own, so the input must already be in the
    queries (query source ``pooled``). ``num_heads`` is unused."""
    return nn.Sequential(*[ResidualMLP(width, mlp_ratio) for _ in range(depth)])
