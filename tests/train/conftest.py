"""Fixtures for the training tests: a small synthetic corpus (all eight modalities) built once per session."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory) -> Path:
    """``synthesize(per_modality=10)``: 8 train / 1 val / 1 test item per modality, 4 records per item."""
    from onellm.instruct_data.synth import synthesize

    out = tmp_path_factory.mktemp("synth-tiny")
    synthesize(out, per_modality=10, seed=0, workers=1)
    return out


def _quick(data_root: Path, output_dir: Path, steps: int = 4, **extra) -> dict:
    """Overrides that shrink a shipped tiny stage to a few steps (still checkpointing and validating)."""
    return {
        "data.root": str(data_root),
        "output_dir": str(output_dir),
        "train.steps": steps,
        "train.warmup_steps": 1,
        "train.batch_size": 4,
        "train.eval_interval": 0,
        "train.eval_samples": 8,
        "train.save_interval": 2,
        "train.log_interval": 1,
        **extra,
    }


@pytest.fixture(scope="session")
def quick():
    """``quick(data_root, output_dir, steps=4, **more)`` -> overrides shrinking a shipped tiny stage."""
    return _quick


@pytest.fixture()
def cli():
    """``cli(config, overrides, torchrun=0)`` -> the command line of ``python -m onellm.train`` (or torchrun)."""

    def command(config: Path, overrides: dict, nproc: int = 0) -> list[str]:
        def text(value) -> str:  # a YAML scalar: None -> null, True -> true
            return value if isinstance(value, str) else json.dumps(value)

        flags = [flag for key, value in overrides.items() for flag in ("--set", f"{key}={text(value)}")]
        launcher = (
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
        )
        return [*launcher, "-m", "onellm.train", str(config), *flags]

    return command


@pytest.fixture()
def subprocess_env() -> dict:
    """One thread per process: deterministic sums, and two processes share the 2 cores without contention."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def accelerator():
    from onellm.train.common import make_accelerator

    return make_accelerator()
