"""A modality from another installed package (the entry point group ``onellm.modalities``) works with no edit in
onellm (issue 12): ``tests/plugins`` holds a package ``onellm_thermal`` and its ``.dist-info`` with the entry point;
a subprocess with that folder on its path sees the modality in the registry, the record schema, the presets, the
server's content parts and the chat page, and a tiny model takes a thermal input through HF generate.
``test_modality_plugin_stack.py`` takes the same plugin through the commands: data validate, train, serve (hf and
vllm), eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"

SCRIPT = r"""
import json, sys
import numpy as np, torch
from pathlib import Path
from onellm.modalities import modality_names, get_modality
from onellm.instruct_data.schema import media_noun, record_problems
from onellm.presets import build_preset, preset_modality_options, seven_b_config
from onellm.serving.chat import part_types
from onellm.serving.ui import detect_modality
from onellm.eval.backends.openai_api import content_part
from onellm.eval.backends.base import MediaItem

folder = Path(sys.argv[1])
np.save(folder / "kettle.npy", np.linspace(20, 100, 40 * 30, dtype=np.float32).reshape(40, 30))
record = {"id": "t1", "inputs": [{"modality": "thermal", "path": "kettle.npy"}], "task": "caption",
          "conversation": [{"role": "user", "content": "<thermal>\nWhat is hot?"},
                           {"role": "assistant", "content": "the kettle"}]}
problems = record_problems(record)
model, processor = build_preset("tiny", seed=0)
values = processor.preprocess("thermal", folder / "kettle.npy").unsqueeze(0)
prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "thermal"}, {"type": "text", "text": "Hot?"}]}])
batch = processor(text=prompt, thermal=[folder / "kettle.npy"])
out = model.generate(**batch, max_new_tokens=3, do_sample=False)
part = content_part(MediaItem("thermal", np.load(folder / "kettle.npy"), {}))
print(json.dumps({
    "names": modality_names(), "noun": media_noun("thermal"), "problems": problems,
    "preset": preset_modality_options("tiny")["thermal"]["image_size"],
    "part": part_types().get("input_thermal"), "sent_as": part["type"],
    "detected": detect_modality(folder / "kettle.npy", modality_names()),
    "shape": list(values.shape), "generated": out.shape[1] - batch["input_ids"].shape[1],
    "in_model": "thermal" in model.config.modalities,
    "default_set": get_modality("thermal").default_set, "seven_b": seven_b_config().modalities,
}))
"""


def test_an_installed_modality_plugin_needs_no_edit_in_onellm(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["names"][-1] == "thermal" and seen["in_model"]
    assert seen["noun"] == "thermal image" and seen["problems"] == []
    assert seen["preset"] == 32  # the tiny family's image size, inherited by the plugin's image-like class
    assert seen["part"] == "thermal" and seen["sent_as"] == "input_thermal"
    assert seen["shape"] == [1, 3, 32, 32] and seen["generated"] == 3
    # A plugin is built by default (its group: "plugin"), but the official 7b layout stays OneLLM's eight.
    assert seen["default_set"] and seen["seven_b"] == seen["names"][:8]


def test_without_the_plugin_the_registry_is_the_builtin_one():
    from onellm.modalities import modality_names

    assert "thermal" not in modality_names()
