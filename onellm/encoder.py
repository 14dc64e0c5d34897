"""The universal encoder: one frozen HF vision transformer that every modality's tokens run through.

Flow for a batch of modality tokens ``[B, L, C]`` (positions already added by the tokenizer):
prepend the class token (+ its position), pre-norm, all blocks, post-norm over ALL tokens -> ``[B, 1+L, C]``.
With ``feature_layers`` other than ``(-1,)`` the output concatenates, along channels, the post-normed hidden states
of those blocks (``-1`` the last, ``-2`` the one before, ``k >= 1`` block k, ``0`` the tokens entering block 1)
-> ``[B, 1+L, C * len(feature_layers)]``: a vision transformer's earlier blocks keep what its last ones were trained
to discard (at an object's own patches a linear probe reads its colour from DINOv2's last block at 0.79, from
blocks 2-7 at 0.91-0.96; LLaVA reads CLIP's second-to-last block). Layer 0 is a linear function of the input patch
(patch embedding + position); after the final norm a probe reads an object's colour from it at 0.46
(``bench/region_probe.py``, BENCHMARKS.md).
Image-like modalities also borrow the model's patch embedding and position table (:meth:`embed_image`),
interpolated bicubically when the patch grid differs from the one it was trained on.

Supported families register an adapter under their ``config.model_type``; adding one = one small class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from onellm.registry import Registry


@dataclass
class EncoderParts:
    """Where a vision model keeps each piece the wrapper needs."""

    patch_embed: nn.Conv2d
    class_token: torch.Tensor | None  # [C] / [1, 1, C]; None when the family has none (SigLIP)
    positions: torch.Tensor  # [(1 if class token) + grid*grid, C] (any leading singleton dims)
    pre_norm: nn.Module
    blocks: nn.ModuleList  # each maps [B, S, C] -> [B, S, C]
    post_norm: nn.Module


_ADAPTERS: Registry[Callable[[nn.Module], EncoderParts]] = Registry("encoder model_type")


def register_encoder(model_type: str):
    """Decorator: ``fn(vision_model) -> EncoderParts`` for HF configs with this ``model_type``."""
    return _ADAPTERS.register(model_type)


@register_encoder("clip_vision_model")
def _clip(model: nn.Module) -> EncoderParts:
    emb = model.embeddings
    return EncoderParts(
        emb.patch_embedding,
        emb.class_embedding,
        emb.position_embedding.weight,
        model.pre_layrnorm,
        model.encoder.layers,
        model.post_layernorm,
    )


@register_encoder("siglip_vision_model")
def _siglip(model: nn.Module) -> EncoderParts:
    emb = model.embeddings
    return EncoderParts(
        emb.patch_embedding,
        None,
        emb.position_embedding.weight,
        nn.Identity(),
        model.encoder.layers,
        model.post_layernorm,
    )


@register_encoder("dinov2")
def _dinov2(model: nn.Module) -> EncoderParts:
    emb = model.embeddings
    return EncoderParts(
        emb.patch_embeddings.projection,
        emb.cls_token,
        emb.position_embeddings,
        nn.Identity(),
        model.encoder.layer,
        model.layernorm,
    )


def supported_encoders() -> list[str]:
    return _ADAPTERS.names()


class UniversalEncoder(nn.Module):
    """Wraps a CLIPVisionModel, SiglipVisionModel or Dinov2Model so it accepts token embeddings."""

    def __init__(self, vision_model: nn.Module, feature_layers: tuple[int, ...] | list[int] = (-1,)):
        super().__init__()
        model_type = vision_model.config.model_type
        if model_type not in _ADAPTERS:
            raise ValueError(f"encoder model_type {model_type!r} is not supported; supported: {supported_encoders()}")
        depth = vision_model.config.num_hidden_layers
        if not feature_layers or any(not -depth <= k <= depth for k in feature_layers):
            raise ValueError(
                f"vision_feature_layers {list(feature_layers)}: each must be a block index in 1..{depth}, "
                f"-{depth}..-1, or 0 for the tokens entering the first block (the encoder has {depth} blocks)"
            )
        self.model = vision_model
        self._model_type = model_type
        self.feature_layers = tuple(int(k) for k in feature_layers)

    @property
    def parts(self) -> EncoderParts:
        return _ADAPTERS[self._model_type](self.model)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def out_width(self) -> int:
        """Channels of :meth:`forward`'s output: the width times the number of feature layers."""
        return self.width * len(self.feature_layers)

    @property
    def patch_size(self) -> int:
        return self.model.config.patch_size

    def grid_positions(self, rows: int, cols: int | None = None) -> torch.Tensor:
        """Patch position table for a ``rows`` x ``cols`` patch grid (square when ``cols`` is None), the trained
        table resized bicubically when the grid differs: ``[rows*cols, C]``, row-major."""
        cols = rows if cols is None else cols
        parts = self.parts
        table = parts.positions.reshape(-1, self.width)
        if parts.class_token is not None:
            table = table[1:]
        trained = math.isqrt(table.shape[0])
        if trained == rows == cols:
            return table
        square = table.reshape(1, trained, trained, -1).permute(0, 3, 1, 2).float()
        resized = nn.functional.interpolate(square, size=(rows, cols), mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(table.dtype)

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` (H = W, a multiple of the patch size) -> patch tokens with positions ``[B, L, C]``."""
        parts = self.parts
        if pixels.shape[-1] != pixels.shape[-2] or pixels.shape[-1] % self.patch_size:
            raise ValueError(
                f"image-like input must be square with a side that is a multiple of the encoder patch size "
                f"{self.patch_size}; got {tuple(pixels.shape[-2:])}"
            )
        tokens = parts.patch_embed(pixels.to(parts.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        return tokens + self.grid_positions(pixels.shape[-1] // self.patch_size)

    def forward(self, tokens: torch.Tensor, class_position: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, C]`` modality tokens -> ``[B, 1+L, C']`` (``[B, L, C']`` for families without a class token),
        ``C' = C * len(feature_layers)``.

        ``class_position`` (``[C]``): the position added to the class token instead of the encoder's own first row,
        for tokenizers with a position table that covers the class token too (OneLLM's audio, point, IMU, fMRI)."""
        parts = self.parts
        tokens = tokens.to(parts.patch_embed.weight.dtype)
        if parts.class_token is not None:
            position = parts.positions.reshape(-1, self.width)[:1] if class_position is None else class_position
            cls = parts.class_token.reshape(1, 1, -1) + position.reshape(1, 1, -1).to(tokens.dtype)
            tokens = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        depth = len(parts.blocks)
        wanted = [k if k >= 0 else depth + 1 + k for k in self.feature_layers]  # 1-based block numbers; 0: input
        hidden = parts.pre_norm(tokens)
        outputs = {0: hidden}
        for number, block in enumerate(parts.blocks[: max(wanted)], start=1):  # later blocks are not needed
            hidden = block(hidden, None)
            outputs[number] = hidden
        return torch.cat([parts.post_norm(outputs[k]) for k in wanted], dim=-1)
