"""One import namespace over the mandated folders, and a wheel that carries every package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {
    "onellm": "onellm",
    "onellm.projectors": "projectors",
    "onellm.instruct_data": "instruct_data",
    "onellm.serving": "serving",
    "onellm.eval": "eval",
}


def test_mapped_folders_import_under_onellm():
    import importlib

    for package, folder in MAPPING.items():
        module = importlib.import_module(package)
        assert Path(module.__file__).resolve().parent == ROOT / folder


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == MAPPING
    found = set()
    for package, folder in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    missing = sorted(found - set(config["packages"]))
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_cli_lists_its_commands():
    out = subprocess.run([sys.executable, "-m", "onellm.cli", "--help"], capture_output=True, text=True, check=True)
    assert "build" in out.stdout


def test_cli_build_saves_a_loadable_checkpoint(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "onellm.cli", "build", "tiny", "--out", str(tmp_path / "ckpt")],
        check=True,
        capture_output=True,
    )
    from transformers import AutoModelForCausalLM

    import onellm  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert model.config.model_type == "onellm"
