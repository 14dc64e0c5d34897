"""A full disk while a checkpoint is written: the error names the folder, the earlier checkpoint stays complete and
the same stage run again resumes from it."""

from __future__ import annotations

import contextlib
import errno
import io
import json
from pathlib import Path

import pytest

from onellm.train import checkpoint as ckpt
from onellm.train.config import load_stage
from onellm.train.recipes import run_stage

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def test_enospc_names_the_folder_and_the_run_resumes_from_the_previous_checkpoint(
    synth_tiny, tmp_path, quick, accelerator, monkeypatch
):
    stage = load_stage(TINY / "align_image.yaml", quick(synth_tiny, tmp_path, steps=6, **{"train.save_interval": 2}))
    real = ckpt.save_training_state
    calls = []

    def disk_full_on_the_second(folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 2:
            (folder / "optimizer.pt").write_bytes(b"half")  # something was written before the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_training_state", disk_full_on_the_second)
    with pytest.raises(ckpt.CheckpointWriteError) as caught, contextlib.redirect_stderr(io.StringIO()):
        run_stage(stage, accelerator)
    message = caught.value.strerror
    checkpoints = stage.stage_dir / "checkpoints"
    assert f"could not write {checkpoints / 'step-00000004'}: No space left on device" in message
    assert f"the previous checkpoint {checkpoints / 'step-00000002'} is intact" in message
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002"]  # no temp dir, no partial step 4
    assert json.loads((checkpoints / "step-00000002" / "state.json").read_text())["step"] == 2

    monkeypatch.setattr(ckpt, "save_training_state", real)  # space freed: the same stage resumes and finishes
    with contextlib.redirect_stderr(io.StringIO()) as log:
        outputs = run_stage(stage, accelerator)
    assert "resum" in log.getvalue().lower() and "step 2" in log.getvalue()
    assert Path(outputs["checkpoint"]).is_dir() and stage.folder.done
