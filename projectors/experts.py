"""Expert blocks, registered by name. An expert is a stack of ``depth`` blocks mapping ``[B, S, H] -> [B, S, H]``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from onellm.registry import Registry

_EXPERTS: Registry[Callable[..., nn.Module]] = Registry("expert kind")


def register_expert(name: str):
    """Decorator: ``builder(width, depth, num_heads, hidden) -> nn.Module`` under ``name`` (``hidden``: the
    feed-forward width)."""
    return _EXPERTS.register(name)


def build_expert(
    kind: str, width: int, depth: int, num_heads: int, mlp_ratio: float, hidden: int | None = None
) -> nn.Module:
    """``hidden`` (the feed-forward width) defaults to ``width * mlp_ratio``; checkpoints converted from other code
    give it explicitly (OneLLM's LLaMA blocks round it to a multiple of 256)."""
    return _EXPERTS[kind](width=width, depth=depth, num_heads=num_heads, hidden=hidden or int(width * mlp_ratio))


def _check_heads(width: int, num_heads: int) -> None:
    if width % num_heads:
        raise ValueError(f"projector width {width} is not divisible by num_heads {num_heads}")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Bidirectional multi-head attention (no mask, no positions) of projected ``q, k, v`` ``[B, S, H]`` ->
    ``[B, S, H]``, before the output projection."""
    batch, length, width = q.shape
    q, k, v = (t.reshape(batch, length, num_heads, -1).transpose(1, 2) for t in (q, k, v))
    attended = nn.functional.scaled_dot_product_attention(q, k, v)  # every token sees every token
    return attended.transpose(1, 2).reshape(batch, length, width)


class Block(nn.Module):
    """Bidirectional pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x)). ``[B, S, H] -> [B, S, H]``."""

    def __init__(self, width: int, num_heads: int, hidden: int):
        super().__init__()
        _check_heads(width, num_heads)
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.out(_attend(*self.qkv(self.norm1(x)).chunk(3, dim=-1), self.num_heads))
        return x + self.mlp(self.norm2(x))


@register_expert("transformer")
def transformer_expert(width: int, depth: int, num_heads: int, hidden: int) -> nn.Module:
    return nn.Sequential(*[Block(width, num_heads, hidden) for _ in range(depth)])


class LlamaBlock(nn.Module):
    """A LLaMA block without rotary positions, attending both ways (OneLLM's expert layers):
    x + Wo·Attn(RMSNorm(x)); x + W2(SiLU(W1 y) * W3 y) with y = RMSNorm(x). No biases; RMSNorm eps 1e-5."""

    def __init__(self, width: int, num_heads: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        _check_heads(width, num_heads)
        self.num_heads = num_heads
        self.attention_norm = nn.RMSNorm(width, eps=eps)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=False) for _ in range(4))
        self.ffn_norm = nn.RMSNorm(width, eps=eps)
        self.gate = nn.Linear(width, hidden, bias=False)  # W1
        self.up = nn.Linear(width, hidden, bias=False)  # W3
        self.down = nn.Linear(hidden, width, bias=False)  # W2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention_norm(x)
        x = x + self.o(_attend(self.q(y), self.k(y), self.v(y), self.num_heads))
        y = self.ffn_norm(x)
        return x + self.down(nn.functional.silu(self.gate(y)) * self.up(y))


@register_expert("llama")
def llama_expert(width: int, depth: int, num_heads: int, hidden: int) -> nn.Module:
    """OneLLM's expert: ``depth`` :class:`LlamaBlock` s (what released OneLLM weights hold)."""
    return nn.Sequential(*[LlamaBlock(width, num_heads, hidden) for _ in range(depth)])


class ResidualMLP(nn.Module):
    """``x + Linear(GELU(Linear(x)))``, token by token (no attention, no normalisation)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


@register_expert("mlp")
def mlp_expert(width: int, depth: int, num_heads: int, hidden: int) -> nn.Module:
    """Per-token residual MLPs: each query position is mapped on its own, so the input must already be in the
    queries (query source ``pooled``). ``num_heads`` is unused."""
    return nn.Sequential(*[ResidualMLP(width, hidden) for _ in range(depth)])
