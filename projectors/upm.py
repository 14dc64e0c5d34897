"""The Universal Projection Module (UPM): a mixture of projection experts with a router per modality.

Per input of modality m, with encoder features ``[B, S, C]`` (S = 1 + L_m):

    x       = LayerNorm(Linear_in[m](features))                  [B, S, H]
    seq     = [queries[m] ; x]                                   [B, N+S, H]   N learned query tokens
    e_k     = expert_k(seq)[:, :N]                               [B, N, H]     K experts, shared by all modalities
    w       = router[m](x, queries[m])                           [B|1, 1|N, K]
    mixed   = sum_k w_k * e_k                                    [B, N, H]
    out     = [start[m] ; LayerNorm(Linear_out[m](mixed)) ; end[m]]   [B, N+2, D]   D = LLM width

Stage-1 alignment trains a one-expert, image-only UPM ("the image projector");
:func:`expand_experts` then copies it into K experts and into every modality.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from onellm.projectors.experts import build_expert
from onellm.projectors.routers import Router


def placeholder_count(num_queries: int) -> int:
    """Embeddings one modality input contributes to the LLM sequence: N queries + start tag + end tag.

    This is THE counting function: the processor, the data collator, the model and the vLLM plugin all call it.
    """
    return num_queries + 2


class ModalityHead(nn.Module):
    """The per-modality parts of the UPM: in/out projections, queries, router, start/end tags."""

    def __init__(self, in_width: int, width: int, out_width: int, num_queries: int, num_experts: int, router: str):
        super().__init__()
        self.proj_in = nn.Sequential(nn.Linear(in_width, width), nn.LayerNorm(width))
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.router = Router(width, num_experts, router)
        self.proj_out = nn.Sequential(nn.Linear(width, out_width), nn.LayerNorm(out_width))
        self.start_tag = nn.Parameter(torch.randn(1, 1, out_width) * 0.02)
        self.end_tag = nn.Parameter(torch.randn(1, 1, out_width) * 0.02)


class UniversalProjectionModule(nn.Module):
    """K shared experts + one :class:`ModalityHead` per modality. ``[B, S, C] -> [B, N+2, D]``."""

    def __init__(
        self,
        modalities: list[str],
        in_width: int,
        out_width: int,
        width: int | None = None,
        num_experts: int = 3,
        depth: int = 8,
        num_queries: int = 30,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        router: str = "pooled",
        expert: str = "transformer",
    ):
        super().__init__()
        width = width or in_width
        self.num_queries = num_queries
        self.experts = nn.ModuleList(
            [build_expert(expert, width, depth, num_heads, mlp_ratio) for _ in range(num_experts)]
        )
        self.heads = nn.ModuleDict(
            {m: ModalityHead(in_width, width, out_width, num_queries, num_experts, router) for m in modalities}
        )

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def num_tokens(self) -> int:
        return placeholder_count(self.num_queries)

    def routing_weights(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Mixture weights ``[B|1, 1|N, K]`` for ``features`` ``[B, S, C]``."""
        head = self.head(modality)
        return head.router(head.proj_in(features), head.queries)

    def head(self, modality: str) -> ModalityHead:
        if modality not in self.heads:
            raise KeyError(f"the projector has no head for modality {modality!r}; it has: {list(self.heads)}")
        return self.heads[modality]

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        head = self.head(modality)
        x = head.proj_in(features)
        queries = head.queries.expand(x.shape[0], -1, -1)
        seq = torch.cat([queries, x], dim=1)
        weights = head.router(x, head.queries)  # [B|1, 1|N, K]
        mixed = sum(weights[..., k : k + 1] * expert(seq)[:, : self.num_queries] for k, expert in enumerate(self.experts))
        out = head.proj_out(mixed)
        batch = out.shape[0]
        return torch.cat([head.start_tag.expand(batch, -1, -1), out, head.end_tag.expand(batch, -1, -1)], dim=1)


def expand_experts(projector: UniversalProjectionModule, num_experts: int, modalities: list[str]) -> UniversalProjectionModule:
    """Build a K-expert, all-modality UPM from a trained one-expert projector (OneLLM's stage-1 -> stage-2 step).

    Every expert is a copy of the trained expert; every new modality head starts as a copy of the first
    trained head (the image head). Routers start uniform. With K identical experts the output equals the
    source projector's output for any routing weights, since the weights sum to one.
    """
    if projector.num_experts != 1:
        raise ValueError(f"expand_experts expects a one-expert projector, got {projector.num_experts} experts")
    source_name, source_head = next(iter(projector.heads.items()))
    upm = copy.deepcopy(projector)
    upm.experts = nn.ModuleList([copy.deepcopy(projector.experts[0]) for _ in range(num_experts)])
    heads = {}
    for m in modalities:
        head = copy.deepcopy(projector.heads[m] if m in projector.heads else source_head)
        width = head.queries.shape[-1]
        head.router = Router(width, num_experts, head.router.mode)
        heads[m] = head
    upm.heads = nn.ModuleDict(heads)
    return upm
