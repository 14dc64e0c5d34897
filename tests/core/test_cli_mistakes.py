"""A newcomer's mistakes get one line that names the thing and the fix, exit status 2, and no traceback.

Each case runs the real `onellm` command in a subprocess from an empty working folder (as a new user would after
`pip install`), so relative defaults such as ``data/synth-tiny`` point at nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from onellm.instruct_data.synth import synthesize

    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, per_modality=10, seed=0, modalities=["image"], workers=1)
    return out


@pytest.fixture(scope="module")
def fake_checkpoint(tmp_path_factory) -> Path:
    """Passes the folder check (a config.json); the port check comes before anything reads it."""
    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "config.json").write_text(json.dumps({"model_type": "onellm"}))
    return folder


@pytest.fixture()
def busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        yield held.getsockname()[1]


def onellm(cwd: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "onellm.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> None:
    err = "\n".join(line for line in done.stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_train_before_the_corpus_exists_names_the_folder_and_the_synth_command(tmp_path):
    done = onellm(tmp_path, "train", str(CONFIGS / "tiny" / "curriculum.yaml"))
    assert_one_line(done, "data.root 'data/synth-tiny'", "no folder", "onellm data synth --out data/synth-tiny")


def test_train_with_an_empty_data_folder_names_the_missing_manifest(tmp_path):
    (tmp_path / "data" / "synth-tiny").mkdir(parents=True)
    done = onellm(tmp_path, "train", str(CONFIGS / "tiny" / "align_image.yaml"))
    assert_one_line(done, "no train.jsonl in it", "--set data.root=DIR")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.stepz=3", "train.stepz: unknown key; allowed here: steps"),
        ("train.steps=abc", "train.steps: expected int"),
    ],
)
def test_train_with_a_bad_key_or_value_names_it(tmp_path, corpus, override, expected):
    done = onellm(tmp_path, "train", str(CONFIGS / "tiny" / "align_image.yaml"), "--set", override)
    assert_one_line(done, "align_image.yaml", expected)


def test_train_from_a_model_without_the_stages_modalities_names_them(tmp_path):
    """align_extended started from a checkpoint of OneLLM's eight: the six it lacks are named, with the build fix."""
    from onellm.instruct_data.synth import synthesize

    synthesize(tmp_path / "data", per_modality=10, seed=0, modalities=["xray", "image"], workers=1)
    assert onellm(tmp_path, "build", "tiny", "--out", "eight").returncode == 0
    stage = CONFIGS / "tiny" / "align_extended.yaml"
    sets = ["init_from.path=eight", "init_from.stage=null", "data.root=data", "output_dir=runs"]
    sets += ["data.sources=[{modalities: [xray], tasks: [caption]}]", "data.replay.modalities=[image]"]
    done = onellm(tmp_path, "train", str(stage), *[arg for kv in sets for arg in ("--set", kv)])
    assert_one_line(done, "init_from: eight has no xray (it has audio,", "onellm build PRESET --modalities all")


def test_eval_without_the_corpus_names_the_file_and_the_synth_command(tmp_path):
    done = onellm(tmp_path, "eval", "--model", str(tmp_path), "--tasks", "synth_image_caption", "--output", "o")
    assert_one_line(done, "missing file", "test.jsonl", "onellm data synth --out")


def test_eval_of_an_unknown_task_lists_the_known_ones(tmp_path):
    done = onellm(tmp_path, "eval", "--model", str(tmp_path), "--tasks", "no_such_task", "--output", "o")
    assert_one_line(done, "unknown task 'no_such_task'", "synth_image_caption")


def eval_caption_task(cwd: Path, model: str, corpus: Path, **kwargs) -> subprocess.CompletedProcess:
    args = ("--model", model, "--tasks", "synth_image_caption", "--output", "o", "--data-dir", f"synth={corpus}")
    return onellm(cwd, "eval", *args, **kwargs)


def test_eval_of_a_missing_checkpoint_names_it(tmp_path, corpus):
    done = eval_caption_task(tmp_path, "missing", corpus)
    assert_one_line(done, "'missing' is not a checkpoint folder", "save_pretrained")


def test_eval_without_java_says_what_needs_it_and_how_to_install_it(tmp_path, corpus, fake_checkpoint):
    # PATH without java; the interpreter runs by its absolute path
    done = eval_caption_task(tmp_path, str(fake_checkpoint), corpus, path=str(tmp_path / "no-bin"))
    assert_one_line(done, "needs Java", "java", "apt-get install default-jre-headless")


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_serving_a_missing_checkpoint_names_it(tmp_path, command):
    done = onellm(tmp_path, command, "runs/demo/train/instruct/merged")
    assert_one_line(done, f"onellm {command}:", "is not a checkpoint folder (no config.json)", "onellm train")


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_a_port_in_use_is_reported_before_the_engine_starts(tmp_path, fake_checkpoint, busy_port, command):
    done = onellm(tmp_path, command, str(fake_checkpoint), "--host", "127.0.0.1", "--port", str(busy_port))
    assert_one_line(done, f"cannot listen on 127.0.0.1:{busy_port}", "--port N")


def test_diagnose_without_a_corpus_names_the_manifest(tmp_path):
    done = onellm(tmp_path, "diagnose", str(tmp_path), "--data", "nowhere")
    assert_one_line(done, "nowhere/train.jsonl: manifest not found", "onellm data synth --out")


def test_an_unknown_preset_lists_the_known_ones(tmp_path):
    done = onellm(tmp_path, "build", "huge", "--out", "x")
    assert "Traceback" not in done.stderr and done.returncode == 2
    assert "invalid choice: 'huge'" in done.stderr and "'tiny'" in done.stderr


def test_build_opts_into_more_modalities_and_names_an_unknown_one(tmp_path):
    done = onellm(tmp_path, "build", "tiny", "--out", "ckpt", "--modalities", "all")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert len(config["modality_configs"]) == 14 and "graph" in config["modality_token_ids"]
    done = onellm(tmp_path, "build", "tiny", "--out", "x", "--modalities", "image,smell")
    assert_one_line(done, "unknown modality 'smell'; known: image, video", "(or all, default, onellm, extended")
    done = onellm(
        tmp_path, "build", "7b", "--out", "x", "--llm-path", "a", "--encoder-path", "b", "--modalities", "all"
    )
    assert_one_line(done, "the 7b preset is the official layout: OneLLM's eight modalities")


def test_build_7b_without_local_checkpoints_names_the_flags(tmp_path):
    done = onellm(tmp_path, "build", "7b", "--out", "x")
    assert_one_line(done, "7b preset", "--llm-path and --encoder-path")
    done = onellm(tmp_path, "build", "7b", "--out", "x", "--llm-path", "nope", "--encoder-path", "nope")
    assert_one_line(done, "llm_path 'nope' is not a folder with a HF checkpoint")
