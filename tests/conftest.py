"""Shared fixtures: the tiny model (built once per session) and small media files written by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from media_factory import SAMPLE_FILES


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A folder holding one valid input file per modality (see SAMPLE_FILES)."""
    folder = tmp_path_factory.mktemp("media")
    for name, make in SAMPLE_FILES.values():
        (folder / name).write_bytes(make())
    return folder


@pytest.fixture(scope="session")
def media_paths(media_dir) -> dict[str, Path]:
    return {modality: media_dir / name for modality, (name, _) in SAMPLE_FILES.items()}


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the tiny preset, OneLLM's eight modalities (its default), random weights (seed 0)."""
    from onellm.presets import build_preset

    return build_preset("tiny")


@pytest.fixture(scope="session")
def tiny_all():
    """(model, processor) of the tiny preset built with all fourteen modalities (``modalities="all"``), seed 0."""
    from onellm.presets import build_preset

    return build_preset("tiny", modalities="all")
