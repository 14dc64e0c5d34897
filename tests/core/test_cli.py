"""The `onellm` command as a shell sees it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_closed_pipe_ends_quietly():
    """`onellm eval --list-tasks | head -1`: the reader leaves early; no traceback, the SIGPIPE exit status."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # tests/ must not shadow the package
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "onellm.cli", "eval", "--list-tasks"],
            stdout=write_fd,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=env,
            timeout=300,
        )
    finally:
        os.close(write_fd)
    assert "Traceback" not in done.stderr.decode() and "BrokenPipeError" not in done.stderr.decode()
    assert done.returncode == 141


def test_list_tasks_prints_the_task_names():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "onellm.cli", "eval", "--list-tasks"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "synth_image_caption" in done.stdout
