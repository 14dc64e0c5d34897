"""A tiny-preset checkpoint whose random LLM gives answers that differ between inputs (for tests that compare them)."""

from __future__ import annotations

from pathlib import Path

import torch

from onellm.presets import build_preset


def save_tiny(folder: Path, modalities: str | list[str] | None = None) -> Path:
    """The tiny preset (``modalities`` as :func:`build_preset` takes them) with its LLM's matrices re-drawn at std
    0.5, saved with its processor to ``folder``.

    The random tiny LLM ties its embeddings, so its hidden state stays close to the last prompt token's embedding
    and greedy decoding repeats that token ("\\n") forever: every prediction would strip to "". Larger random
    matrices make answers differ between inputs, so comparisons of predictions are not vacuous.
    """
    model, processor = build_preset("tiny", modalities=modalities)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.language_model.named_parameters():
            if weight.ndim == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
