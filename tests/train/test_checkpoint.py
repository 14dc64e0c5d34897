"""Atomic checkpoints: a crash mid-write never leaves a checkpoint under a real name; pruning; trainable state."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from onellm.train import checkpoint as ckpt


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp(tmp_path):
    target = tmp_path / "final"
    ckpt.write_atomically(target, lambda d: (d / "weights.txt").write_text("v1"))

    def crash(folder):
        (folder / "weights.txt").write_text("v2 half written")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        ckpt.write_atomically(target, crash)
    assert (target / "weights.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    ckpt.write_atomically(target, lambda d: (d / "weights.txt").write_text("v3"))
    assert (target / "weights.txt").read_text() == "v3"


def test_only_complete_checkpoints_count_and_partial_ones_are_removed(tmp_path):
    for step in (2, 4, 6):
        ckpt.write_atomically(tmp_path / ckpt.step_dir_name(step), lambda d: (d / "state.json").write_text("{}"))
    (tmp_path / ".tmp-step-00000008").mkdir()  # a writer killed before its rename
    (tmp_path / "step-00000010").mkdir()  # a directory without state.json is not a checkpoint
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 6]
    assert [p.name for p in ckpt.remove_partial(tmp_path)] == [".tmp-step-00000008"]
    removed = ckpt.prune(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-00000002"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 6]


def test_training_state_round_trip_restores_weights_optimizer_schedule_and_rng(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # frozen: not part of the checkpoint
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    ckpt.save_training_state(tmp_path, model, optimizer, scheduler, {"step": 1})
    ckpt.save_rng(tmp_path, rank=0)
    expected_draw = torch.rand(3)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        model[1].weight.zero_()
    fresh_opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, 1, gamma=0.5)
    torch.rand(7)
    state = ckpt.load_training_state(tmp_path, model, fresh_opt, fresh_sched)
    ckpt.load_rng(tmp_path, rank=0)
    assert state == {"step": 1}
    assert torch.equal(model[1].weight, saved["1.weight"])
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert fresh_opt.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(3), expected_draw)
    assert set(json.loads((tmp_path / "state.json").read_text())) == {"step"}
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "trainable.safetensors"))) == {"1.weight", "1.bias"}


def test_a_checkpoint_from_another_configuration_is_refused():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="missing \\['bias'\\]"):
        ckpt.load_trainable_state(model, {"weight": torch.zeros(2, 2)})


def test_a_run_resumes_with_compile_toggled_but_not_with_other_steps():
    from onellm.train.loop import _changed_keys

    old = {"train": {"steps": 300, "log_interval": 5}}  # written before train.compile existed
    assert _changed_keys(old, {"train": {"steps": 300, "log_interval": 5, "compile": True}}) == []
    assert _changed_keys(old, {"train": {"steps": 450, "log_interval": 10, "compile": True}}) == ["train.steps"]


def test_done_marker_is_replaced_atomically(tmp_path, monkeypatch):
    """A crash while DONE is written leaves no DONE (the stage reruns), never a truncated one."""
    from types import SimpleNamespace

    from onellm.train import common, stage_folder

    stage = SimpleNamespace(name="s", stage_dir=tmp_path)
    calls = []

    def crash(src, dst):
        calls.append((src, dst))
        raise KeyboardInterrupt  # killed between writing the temp file and the rename

    monkeypatch.setattr(stage_folder.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        common.mark_done(stage, {"checkpoint": "x"})
    assert not common.is_done(stage) and calls[0][1] == tmp_path / common.DONE
    monkeypatch.undo()
    common.mark_done(stage, {"checkpoint": "x"}, {"steps": 3})
    info = json.loads((tmp_path / common.DONE).read_text(encoding="utf-8"))
    assert common.is_done(stage) and info["outputs"] == {"checkpoint": "x"} and info["steps"] == 3


def test_a_writer_killed_between_the_two_renames_leaves_nothing_behind_next_time(tmp_path):
    """Killed after ``final`` -> ``.old-final`` and before ``.tmp-final`` -> ``final``: the next commit of ``final``
    (the target is missing then) removes the stale ``.old-final`` too."""
    stale = tmp_path / ".old-final"
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"previous")
    tmp = ckpt.temp_dir(tmp_path / "final")
    (tmp / "weights.bin").write_bytes(b"new")
    ckpt.commit(tmp, tmp_path / "final")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert (tmp_path / "final" / "weights.bin").read_bytes() == b"new"


def test_stage_folder_owns_done_and_history(tmp_path):
    from pathlib import Path

    from onellm.train.stage_folder import StageFolder

    folder = StageFolder(tmp_path / "instruct")
    folder.path.mkdir()
    assert not folder.done and folder.record() is None and folder.history() is None
    with pytest.raises(FileNotFoundError, match=r"stage 'instruct' has not finished: .*instruct/DONE is missing"):
        _ = folder.checkpoint
    folder.write_history(3, [(1, 2.5), (3, 1.5)], [(3, 1.7)])
    folder.mark_done({"checkpoint": "c", "merged": "m"}, {"steps": 3})
    assert folder.done and folder.record()["steps"] == 3 and folder.record()["stage"] == "instruct"
    assert folder.checkpoint == Path("m")  # the merged model when the stage wrote one
    assert StageFolder(folder.path, "x").outputs == {"checkpoint": "c", "merged": "m"}
    history = folder.history()
    assert (history.steps, history.losses, history.val) == (3, [(1, 2.5), (3, 1.5)], [(3, 1.7)])


def test_stage_folder_outputs_survive_another_working_directory(tmp_path, monkeypatch):
    # A run trained from one folder and resumed (or evaluated) from another -- `onellm demo --out runs/x` then
    # `--out /abs/runs/x` -- must find its stages' checkpoints: DONE stores them relative to the stage folder.
    import json

    from onellm.train.stage_folder import StageFolder

    monkeypatch.chdir(tmp_path)
    stage = tmp_path / "runs" / "x" / "train" / "align"
    (stage / "final").mkdir(parents=True)
    StageFolder("runs/x/train/align").mark_done({"checkpoint": "runs/x/train/align/final"})
    assert json.loads((stage / "DONE").read_text())["outputs"] == {"checkpoint": "final"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert StageFolder(stage).checkpoint == stage / "final"
    # DONE files written before hold the path relative to the old working directory: still resolved
    (stage / "DONE").write_text(json.dumps({"stage": "align", "outputs": {"checkpoint": "runs/x/train/align/final"}}))
    assert StageFolder(stage).checkpoint == stage / "final"
    # outputs outside the folder stay as given
    StageFolder(stage).mark_done({"checkpoint": str(tmp_path / "other")})
    assert StageFolder(stage).checkpoint == tmp_path / "other"
