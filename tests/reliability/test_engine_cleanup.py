"""Ctrl-C on ``onellm serve --engine vllm`` leaves nothing behind in the temp folder.

vLLM binds its inter-process ZMQ sockets as files under ``VLLM_RPC_BASE_PATH`` (by default the temp folder) and an
interrupted engine-core process leaves them there: before the server gave vLLM a folder of its own, each start and
Ctrl-C added socket files to /tmp, hundreds after one run of this suite. A terminal's Ctrl-C sends SIGINT to the
whole process group, which is what ``stop_server`` does.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from onellm.serving import vllm_engine

pytestmark = pytest.mark.slow


def sockets(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode))


def test_ctrl_c_leaves_no_vllm_socket_files(checkpoint, kit, tmp_path, monkeypatch, request):
    pytest.importorskip("vllm")
    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    # a short temp folder: pytest's tmp_path leaves no room for a socket's path (at most 107 bytes)
    temp = Path(tempfile.mkdtemp(prefix="onellm-test-"))
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    port = kit.free_port()
    command = kit.onellm_serve(checkpoint, "vllm", port)
    server = kit.start_server(command, tmp_path / "server.log", port, env={"TMPDIR": str(temp)})
    try:
        running = sockets(temp)
        # the sockets live in the server's own folder inside the temp folder while it runs
        assert running and all(name.startswith(vllm_engine.RPC_PREFIX) for name in running), running
    finally:
        kit.stop_server(server)
    assert server.process.returncode == 0, server.log.read_text()[-3000:]
    assert sockets(temp) == [], f"left behind in the temp folder: {sockets(temp)}"
    assert not list(temp.glob(f"{vllm_engine.RPC_PREFIX}*"))


def test_a_temp_folder_too_long_for_socket_paths_keeps_vllms_default(tmp_path, monkeypatch):
    """No folder of our own when its sockets' paths would not fit: vLLM's default stands (a folder of ours would
    have made a server that works without it fail to start)."""
    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    monkeypatch.setattr(vllm_engine, "_rpc_folder", None)
    long_temp = tmp_path / ("x" * 60)  # 60 + the folder's 20 + the uuid's 37 > 107
    long_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_temp))
    assert vllm_engine.private_rpc_folder() is None
    assert "VLLM_RPC_BASE_PATH" not in os.environ and list(long_temp.iterdir()) == []

    short_temp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(short_temp))
        folder = vllm_engine.private_rpc_folder()
        assert folder is not None and Path(folder).parent == short_temp and Path(folder).is_dir()
        assert vllm_engine.private_rpc_folder() == folder  # one folder per process
    finally:
        # not monkeypatch.delenv: it would record the value set here and put it back at teardown, leaving every later
        # server of this pytest process a path to the removed folder
        os.environ.pop("VLLM_RPC_BASE_PATH", None)
        shutil.rmtree(short_temp, ignore_errors=True)
