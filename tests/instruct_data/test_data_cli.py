"""`onellm data synth` -> `onellm data validate` accepts it all; corrupted files are listed by name, exit 1."""

from __future__ import annotations

import numpy as np
import pytest

from onellm.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(out), "--per-modality", "3", "--seed", "0", "--workers", "1"]) == 0
    return out


def manifests(folder):
    return [str(folder / f"{split}.jsonl") for split in ("train", "val", "test")]


def test_synthetic_corpus_validates_with_zero_rejections(corpus, capsys):
    assert main(["data", "validate", *manifests(corpus), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "rejected 0" in out and "rejected 1" not in out


def test_corrupted_files_are_listed_and_exit_1(corpus, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    broken = {
        "media/image/000000.png": b"not a png",
        "media/audio/000001.wav": (bad / "media/audio/000001.wav").read_bytes()[:300],
    }
    for relative, data in broken.items():
        (bad / relative).write_bytes(data)
    np.save(bad / "media/imu/000002.npy", np.full((200, 6), np.nan, np.float32))
    broken["media/imu/000002.npy"] = b""
    assert main(["data", "validate", *manifests(bad), "--preset", "tiny"]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    named = {part for line in lines for part in line.split(" | ") if part.startswith("media/")}
    assert {name.split(":")[0] for name in named} == set(broken)  # exactly the corrupted files, nothing else
    text = "\n".join(lines)
    assert "not a decodable image" in text and "truncated WAV" in text and "NaN" in text


def test_stats_counts_modalities(corpus, capsys):
    assert main(["data", "stats", str(corpus / "train.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "by modality:" in out and "image" in out and "fmri" in out
    assert "p90" in out and "answer vocabulary:" in out
