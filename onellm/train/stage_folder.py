"""One stage's output folder, ``<output_dir>/<stage>/``: the only code that reads or writes its bookkeeping files.

    DONE           JSON: stage name, outputs (checkpoint / adapter / merged paths, relative to the stage folder
                   when inside it, so a moved run or another working directory still finds them), finished time,
                   steps, losses, seconds; written last (atomically), so its presence means every output exists
    history.json   the loss curve: steps, (step, loss) pairs, (step, val loss) pairs

Training writes them through :meth:`StageFolder.mark_done` and :meth:`StageFolder.write_history`; the curriculum,
the demo and the reports read them through :meth:`StageFolder.record`, :attr:`StageFolder.checkpoint` and
:meth:`StageFolder.history`. Checkpoints under ``checkpoints/`` and ``final/`` belong to :mod:`onellm.train.checkpoint`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DONE = "DONE"
HISTORY = "history.json"


@dataclass(frozen=True)
class History:
    """A stage's loss curve as :meth:`StageFolder.write_history` stored it."""

    steps: int
    losses: list[tuple[int, float]]
    val: list[tuple[int, float]]


class StageFolder:
    def __init__(self, path: str | os.PathLike, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.name

    def __repr__(self) -> str:
        return f"StageFolder({str(self.path)!r})"

    # --- the done marker -----------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return (self.path / DONE).is_file()

    def mark_done(self, outputs: dict[str, str], extra: dict[str, Any] | None = None) -> None:
        """Write DONE (outputs + ``extra``, e.g. steps and losses). Written to a temp file and renamed: a kill
        mid-write must not leave a truncated DONE that every later run trips over."""
        stored = {key: self._relative(value) for key, value in outputs.items()}
        info = {"stage": self.name, "outputs": stored, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}
        tmp = self.path / f".{DONE}.tmp"
        tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / DONE)

    def record(self) -> dict[str, Any] | None:
        """What DONE holds, or None while the stage has not finished."""
        if not self.done:
            return None
        return json.loads((self.path / DONE).read_text(encoding="utf-8"))

    def _finished(self) -> dict[str, Any]:
        info = self.record()
        if info is None:
            raise FileNotFoundError(f"stage {self.name!r} has not finished: {self.path / DONE} is missing")
        return info

    @property
    def outputs(self) -> dict[str, str]:
        """The recorded outputs as paths usable from the current working directory."""
        return {key: str(self._resolve(value)) for key, value in self._finished()["outputs"].items()}

    def _relative(self, value: str) -> str:
        path = Path(value)
        try:
            return path.resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:  # outside the stage folder: kept as given
            return str(value)

    def _resolve(self, value: str) -> Path:
        path = Path(value)
        if path.is_absolute():
            return path
        # Folder-relative first; DONE files written before that hold paths relative to the run's working directory
        # (e.g. runs/demo/train/align_image/final): valid there, else the folder's child of that name.
        for candidate in (self.path / path, path, self.path / path.name):
            if candidate.exists():
                return candidate
        return path

    @property
    def checkpoint(self) -> Path:
        """The stage's model for inference: the merged LLM + LoRA when the stage wrote one, else its checkpoint."""
        outputs = self.outputs
        return Path(outputs.get("merged") or outputs["checkpoint"])

    # --- the loss curve ------------------------------------------------------------------------------------------
    def write_history(self, steps: int, losses: list, val: list) -> None:
        (self.path / HISTORY).write_text(json.dumps({"steps": steps, "losses": losses, "val": val}) + "\n", "utf-8")

    def history(self) -> History | None:
        path = self.path / HISTORY
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return History(data["steps"], [tuple(x) for x in data["losses"]], [tuple(x) for x in data["val"]])


__all__ = ["DONE", "HISTORY", "History", "StageFolder"]
