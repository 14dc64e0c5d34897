"""Frozen-feature cache: encoder outputs of inputs whose whole path up to the UPM is frozen, keyed by content.

Image-like modalities (image, video, depth, normal) tokenise with the encoder's own frozen patch embedding, and the
encoder is frozen in every stage, so ``model.encode(m, x)`` (``[n, 1+L, C]``) never changes during a run. Computing
it once per distinct input saves the encoder forward on every later visit: for DINOv2 ViT-S/14 on a 112 px image,
~50 ms per sample per step on 2 cores (measured on the CI machine kind; BENCHMARKS.md, training steps). In the
instruct stage the other tokenizers are frozen too, and their modalities are cached the same way.

Keys: ``sha256(file bytes + extras)`` from the loader, combined with the modality's preprocessing options and a
fingerprint of the weights on the path (encoder + that modality's tokenizer), so a different encoder, a tokenizer
trained further, another image size or normalisation never hits a stale entry.
Entries live in memory and, when ``folder`` is given, one ``.pt`` file each (written atomically), so later stages
and restarts of the same run reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _hash_state(digest, module: nn.Module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())


def path_fingerprint(model: nn.Module, modality: str, encoder_digest=None) -> str:
    """A hash of every weight between a preprocessed input and the UPM: the encoder and ``modality``'s tokenizer."""
    digest = encoder_digest.copy() if encoder_digest is not None else _encoder_digest(model)
    _hash_state(digest, model.mm_tokenizers[modality])
    return digest.hexdigest()[:16]


def _encoder_digest(model: nn.Module):
    digest = hashlib.sha256()
    digest.update(f"feature_layers:{getattr(model.encoder, 'feature_layers', (-1,))}".encode())
    _hash_state(digest, model.encoder)
    return digest


def cache_options(processor: Any, model: nn.Module, modalities: list[str]) -> dict[str, dict]:
    """What besides the weights shapes a modality's cached features: the processor's preprocessing options and the
    model's own (pooling, e.g. video's ``temporal_pool``). A change to either must miss the cache."""
    return {m: {"processor": processor.options(m), "model": model.config.modality_options(m)} for m in modalities}


def cacheable_modalities(model: nn.Module, modalities: list[str]) -> list[str]:
    """Modalities whose encoder features may be cached: the encoder and the modality's tokenizer are frozen.

    Image-like modalities (image, video, depth, normal) always qualify while the encoder is frozen (their tokenizer
    is the encoder's own patch embedding); the others qualify in stages that freeze their tokenizer (instruct).
    Decided from ``requires_grad``, so a recipe that unfreezes a part disables the cache for what it feeds.
    Preprocessing is deterministic for every modality, so equal content gives equal features.
    """
    if any(p.requires_grad for p in model.encoder.parameters()):
        return []
    return [m for m in modalities if not any(p.requires_grad for p in model.mm_tokenizers[m].parameters())]


class FeatureCache:
    """``features(model, modality, values [n, ...], keys [n]) -> [n, 1+L, C]``, computing only the misses.

    ``has(modality, key)`` tells the dataset before it decodes an input whether its features are already here (in
    memory or on disk); such inputs reach :meth:`features` as ``None`` and are never decoded.
    """

    def __init__(self, model: nn.Module, modality_options: dict[str, dict], folder: str | os.PathLike | None = None):
        encoder = _encoder_digest(model)
        self.namespace = {m: path_fingerprint(model, m, encoder) for m in modality_options}
        self.options = {
            m: hashlib.sha256(json.dumps(o, sort_keys=True, default=list).encode()).hexdigest()[:8]
            for m, o in modality_options.items()
        }
        self.folder = Path(folder) if folder is not None else None
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def _key(self, modality: str, key: str) -> str:
        return f"{modality}/{self.namespace[modality]}-{self.options[modality]}-{key}"

    def has(self, modality: str, key: str) -> bool:
        """Whether the features of input ``key`` are stored (only modalities this cache was built for)."""
        if modality not in self.namespace:
            return False
        full = self._key(modality, key)
        return full in self.memory or (self.folder is not None and (self.folder / f"{full}.pt").is_file())

    def _load(self, full_key: str) -> torch.Tensor | None:
        if full_key in self.memory:
            return self.memory[full_key]
        if self.folder is not None:
            path = self.folder / f"{full_key}.pt"
            if path.is_file():
                try:
                    tensor = torch.load(path, weights_only=True)
                except Exception:  # a file from a killed writer cannot exist (atomic rename); be safe anyway
                    return None
                self.memory[full_key] = tensor
                return tensor
        return None

    def _store(self, full_key: str, tensor: torch.Tensor) -> None:
        self.memory[full_key] = tensor
        if self.folder is not None:
            path = self.folder / f"{full_key}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(tensor, tmp)
            os.replace(tmp, path)

    @torch.no_grad()
    def features(
        self, model: nn.Module, modality: str, values: torch.Tensor | list[torch.Tensor | None], keys: list[str]
    ) -> torch.Tensor:
        """Features of every input; ``values`` holds ``None`` for inputs the dataset skipped because :meth:`has`.
        Missing ones are encoded in float32 whatever autocast the caller runs under (validation and the word fit run
        under bf16 autocast), so an entry is the same whichever pass met its input first."""
        if len(keys) != len(values) or any(k is None for k in keys):
            raise ValueError(f"{modality}: need one content key per input, got {len(keys)} for {len(values)}")
        full = [self._key(modality, k) for k in keys]
        found = [self._load(k) for k in full]
        missing = [i for i, tensor in enumerate(found) if tensor is None]
        device = next(model.parameters()).device
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            undecoded = [keys[i] for i in missing if values[i] is None]
            if undecoded:  # listed by has() but unreadable now (deleted or damaged file)
                raise RuntimeError(
                    f"{modality}: cached features of input(s) {undecoded} vanished from {self.folder} during the run"
                )
            batch = values[missing] if isinstance(values, torch.Tensor) else torch.stack([values[i] for i in missing])
            with torch.autocast(device.type, enabled=False):
                computed = model.encode(modality, batch.to(device))
            for i, tensor in zip(missing, computed, strict=True):
                tensor = tensor.detach().clone()
                self._store(full[i], tensor)
                found[i] = tensor
        return torch.stack([tensor.to(device) for tensor in found])


__all__ = ["FeatureCache", "cacheable_modalities", "path_fingerprint"]
