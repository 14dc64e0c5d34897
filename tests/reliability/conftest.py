"""Reliability fixtures, reused from the serving and training tests rather than copied.

A sub-folder's conftest is not importable by name (tests/ holds no packages), so the two conftests are loaded from
their files and the fixtures this folder needs are re-exported here. Session fixtures defined this way are separate
definitions from the originals: a session that also runs tests/serving and tests/train builds the tiny checkpoint
(< 1 s) and the synthetic corpus (a few seconds) twice.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


serving = _load("_reliability_serving_conftest", TESTS / "serving" / "conftest.py")
training = _load("_reliability_train_conftest", TESTS / "train" / "conftest.py")

# serving: the tiny checkpoint with an input-sensitive LLM, and `kit` (free_port, start_server, stop_server,
# onellm_serve, data_url, ...); training: the 8-modality synthetic corpus, the overrides that shrink a tiny stage and
# the `python -m onellm.train` command
checkpoint = serving.checkpoint
kit = serving.kit
synth_tiny = training.synth_tiny
quick = training.quick
cli = training.cli
