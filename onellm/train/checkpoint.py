"""Atomic, resumable checkpoints of one stage.

Layout under ``<output_dir>/<stage>/``::

    checkpoints/step-00000040/     resumable state, written as .tmp-step-00000040/ then renamed
        trainable.safetensors      every parameter with requires_grad (UPM, tokenizers, LoRA), by model name, and
                                   the persistent buffers of modules that train (the UPM's feature statistics)
        optimizer.pt  scheduler.pt
        rng-rank<r>.pt             python / numpy / torch generator states of each process
        state.json                 step, samples seen, loss history, config (written last)
    final/                         the stage's full checkpoint (save_pretrained + processor), renamed into place
    DONE                           written after final/ (and, for instruct, adapter/ and merged/) exist

Frozen weights are not in the resumable checkpoints: a restart rebuilds the model exactly as the stage started it
(``init_from`` + seeded surgery), then loads ``trainable.safetensors``. That keeps a checkpoint of the small preset
at a few MB instead of ~650 MB. A directory either has its final name and is complete, or is a temp dir that a
restart deletes: a SIGKILL at any moment cannot leave a half-written checkpoint under a real name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_dir(target: Path) -> Path:
    """A fresh temp dir beside ``target`` (same filesystem, so the final rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(tmp: Path, target: Path) -> Path:
    """fsync every file of ``tmp``, then rename it to ``target`` (replacing an existing ``target``)."""
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    old = target.parent / f".old-{target.name}"
    if old.exists():  # left by a writer killed between the two renames below
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_dir(target.parent)
    return target


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a quota, a read-only folder): names the folder, the cause and what
    is still intact. The half-written temp dir is gone; nothing under a real name changed."""


def write_failed(target: Path, exc: OSError, intact: Path | None) -> CheckpointWriteError:
    kept = f"the previous checkpoint {intact} is intact" if intact is not None else "no earlier checkpoint was kept"
    return CheckpointWriteError(
        exc.errno,
        f"could not write {target}: {exc.strerror or exc}; {kept}. Free space and run the same command again to resume",
    )


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` then rename ``tmp_dir`` to ``target``; a failure removes the temp dir (an OSError
    becomes a :class:`CheckpointWriteError` naming ``target``)."""
    tmp = temp_dir(target)
    try:
        write(tmp)
        return commit(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, CheckpointWriteError):
            raise
        raise write_failed(target, exc, target if target.exists() else None) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_partial(folder: Path) -> list[Path]:
    """Delete temp dirs left by a killed writer (``.tmp-*`` / ``.old-*``); returns what was removed."""
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete resumable checkpoints ``(step, path)``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and (entry / "state.json").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints."""
    doomed = [path for _, path in list_checkpoints(folder)[:-keep]] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# --- what goes into a checkpoint ------------------------------------------------------------------------------------


def _training_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters + the persistent buffers that sit beside them (statistics a module updates while
    training, e.g. ``FeatureStandardizer``'s running mean): a buffer counts when the module one level above its
    owner holds a trainable parameter."""
    tensors = {name: p for name, p in model.named_parameters() if p.requires_grad}
    training = {name.rsplit(".", i)[0] for name in tensors for i in range(1, name.count(".") + 1)}
    persistent = model.state_dict(keep_vars=True)  # buffers registered persistent=False are not in it
    for name, buffer in model.named_buffers():
        owner = name.rsplit(".", 1)[0]
        if name in persistent and "." in owner and owner.rsplit(".", 1)[0] in training:
            tensors[name] = buffer
    return tensors


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().contiguous().clone() for name, t in _training_tensors(model).items()}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the matching trainable parameters (and their modules' statistics); all must be present."""
    params = _training_tensors(model)
    expected = set(params)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model's trainable parameters: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (did the stage config change since the checkpoint was written?)"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_rng(folder: Path, rank: int) -> None:
    torch.save(rng_state(), folder / f"rng-rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-rank{rank}.pt"
    if path.is_file():  # a checkpoint written with fewer processes has no state for this rank: keep the seed's
        set_rng_state(torch.load(path, weights_only=False))


def save_training_state(folder: Path, model: nn.Module, optimizer, scheduler, state: dict[str, Any]) -> None:
    """Write everything except the RNG files (each process writes its own) into ``folder``; state.json last."""
    save_file(trainable_state(model), str(folder / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    (folder / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")


def load_training_state(folder: Path, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    return json.loads((folder / "state.json").read_text(encoding="utf-8"))


__all__ = [
    "commit",
    "list_checkpoints",
    "load_rng",
    "load_trainable_state",
    "load_training_state",
    "prune",
    "remove_partial",
    "save_rng",
    "save_training_state",
    "step_dir_name",
    "temp_dir",
    "trainable_state",
    "write_atomically",
    "CheckpointWriteError",
]
