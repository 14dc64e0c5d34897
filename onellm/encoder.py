"""The universal encoder: one frozen HF vision transformer that every modality's tokens run through.

Flow for a batch of modality tokens ``[B, L, C]`` (positions already added by the tokenizer):
prepend the class token (+ its position), pre-norm, all blocks, post-norm over ALL tokens -> ``[B, 1+L, C]``.
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


@dataclass
class EncoderParts:
    """Where a vision model keeps each piece the wrapper needs."""

    patch_embed: nn.Conv2d
    class_token: torch.Tensor | None  # [C] / [1, 1, C]; None when the family has none (SigLIP)
    positions: torch.Tensor  # [(1 if class token) + grid*grid, C] (any leading singleton dims)
    pre_norm: nn.Module
    blocks: Callable[[torch.Tensor], torch.Tensor]
    post_norm: nn.Module


_ADAPTERS: dict[str, Callable[[nn.Module], EncoderParts]] = {}


def register_encoder(model_type: str):
    """Decorator: ``fn(vision_model) -> EncoderParts`` for HF configs with this ``model_type``."""

    def wrap(fn: Callable[[nn.Module], EncoderParts]) -> Callable[[nn.Module], EncoderParts]:
        _ADAPTERS[model_type] = fn
        return fn

    return wrap


@register_encoder("clip_vision_model")
def _clip(model: nn.Module) -> EncoderParts:
    emb = model.embeddings
    return EncoderParts(
        emb.patch_embedding, emb.class_embedding, emb.position_embedding.weight, model.pre_layrnorm,
        lambda x: model.encoder(inputs_embeds=x).last_hidden_state, model.post_layernorm,
    )


@register_encoder("siglip_vision_model")
def _siglip(model: nn.Module) -> EncoderParts:
    emb = model.embeddings
    return EncoderParts(
        emb.patch_embedding, None, emb.position_embedding.weight, nn.Identity(),
        lambda x: model.encoder(inputs_embeds=x).last_hidden_state, model.post_layernorm,
    )


@register_encoder("dinov2")
def _dinov2(model: nn.Module) -> EncoderParts:
    emb = model.embeddings
    return EncoderParts(
        emb.patch_embeddings.projection, emb.cls_token, emb.position_embeddings, nn.Identity(),
        lambda x: model.encoder(x).last_hidden_state, model.layernorm,
    )


def supported_encoders() -> list[str]:
    return sorted(_ADAPTERS)


class UniversalEncoder(nn.Module):
    """Wraps a CLIPVisionModel, SiglipVisionModel or Dinov2Model so it accepts token embeddings."""

    def __init__(self, vision_model: nn.Module):
        super().__init__()
        model_type = vision_model.config.model_type
        if model_type not in _ADAPTERS:
            raise ValueError(f"encoder model_type {model_type!r} is not supported; supported: {supported_encoders()}")
        self.model = vision_model
        self._model_type = model_type

    @property
    def parts(self) -> EncoderParts:
        return _ADAPTERS[self._model_type](self.model)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def patch_size(self) -> int:
        return self.model.config.patch_size

    def _grid_positions(self, grid: int) -> torch.Tensor:
        """Patch position table for a ``grid`` x ``grid`` patch grid: ``[grid*grid, C]``."""
        parts = self.parts
        table = parts.positions.reshape(-1, self.width)
        if parts.class_token is not None:
            table = table[1:]
        trained = math.isqrt(table.shape[0])
        if trained == grid:
            return table
        square = table.reshape(1, trained, trained, -1).permute(0, 3, 1, 2).float()
        resized = nn.functional.interpolate(square, size=(grid, grid), mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` (H = W, a multiple of the patch size) -> patch tokens with positions ``[B, L, C]``."""
        parts = self.parts
        if pixels.shape[-1] != pixels.shape[-2] or pixels.shape[-1] % self.patch_size:
            raise ValueError(
                f"image-like input must be square with a side that is a multiple of the encoder patch size "
                f"{self.patch_size}; got {tuple(pixels.shape[-2:])}"
            )
        tokens = parts.patch_embed(pixels.to(parts.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        return tokens + self._grid_positions(pixels.shape[-1] // self.patch_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` modality tokens -> ``[B, 1+L, C]`` (``[B, L, C]`` for families without a class token)."""
        parts = self.parts
        tokens = tokens.to(parts.patch_embed.weight.dtype)
        if parts.class_token is not None:
            cls = parts.class_token.reshape(1, 1, -1) + parts.positions.reshape(-1, self.width)[:1]
            tokens = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return parts.post_norm(parts.blocks(parts.pre_norm(tokens)))
