"""``serve_once`` / ``serve_questions``: answers through ``onellm serve``'s vLLM engine (what ``onellm demo`` ends with), checked
against the hf engine on the same request; bad inputs fail before any engine starts."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from media_factory import png_bytes, wav_bytes
from transformers import AutoProcessor

from onellm.serving.engines import EngineSettings, build_engine
from onellm.serving.smoke import Ask, answer_all, serve_once, serve_questions

QUESTION = "What colour is the shape?"


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "shape.png"
    path.write_bytes(png_bytes(seed=7))
    return path


@pytest.mark.slow
def test_serve_questions_answer_as_the_hf_engine_does(checkpoint, image, tmp_path, monkeypatch):
    """An image, a WAV file (sent inline as ``input_audio``) and a point cloud's ``.npy`` on one vLLM engine start.
    The tiny checkpoint's LLM is input-sensitive (conftest.input_sensitive): the same greedy text from both engines
    means each input reached the vLLM engine as it reaches the reference."""
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the hf engine leaves torch's thread count alone then
    wav, cloud = tmp_path / "tone.wav", tmp_path / "cloud.npy"
    wav.write_bytes(wav_bytes(freq=660.0))
    np.save(cloud, np.random.default_rng(3).random((400, 6)).astype(np.float32))
    asks = [Ask("image", image, QUESTION), Ask("audio", wav, "What do you hear?"), Ask("point", cloud, "Describe it.")]

    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    answers = serve_questions(checkpoint, asks, max_tokens=12, dtype="float32")
    # the engine's socket folder is gone with it, and no server started later inherits its path
    assert "VLLM_RPC_BASE_PATH" not in os.environ

    processor = AutoProcessor.from_pretrained(str(checkpoint))
    hf = build_engine("hf", EngineSettings(checkpoint=checkpoint, dtype="float32"))
    reference = asyncio.run(answer_all(hf, processor, asks, 12))
    assert all(answer.strip() for answer in answers) and answers == reference
    assert len(set(answers)) == 3  # three inputs, three answers: not one input's answer repeated


def test_serve_once_refuses_bad_inputs_before_starting_an_engine(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image .*missing\.png does not exist"):
        serve_once(checkpoint, tmp_path / "missing.png", QUESTION)
    with pytest.raises(FileNotFoundError, match=r"is not a checkpoint folder"):
        serve_once(tmp_path, tmp_path / "missing.png", QUESTION)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png: .*not a decodable image"):
        serve_once(checkpoint, notes, QUESTION)


def test_dtype_auto_keeps_a_float32_checkpoint_in_float32_where_bf16_is_emulated(checkpoint, monkeypatch):
    """``--dtype auto`` on a CPU without AVX512-BF16/AMX: vLLM would downcast to bf16, which runs at a quarter of
    fp32's throughput there; elsewhere, and for explicit dtypes, vLLM's choice stands."""
    from onellm.serving import vllm_engine
    from onellm.serving.vllm_engine import VLLMEngine, serving_dtype

    monkeypatch.setattr(vllm_engine, "fast_bf16", lambda device: False)
    assert serving_dtype("auto", "float32", cpu=True) == "float32"
    assert serving_dtype("auto", "torch.float32", cpu=True) == "float32"
    assert serving_dtype("auto", "bfloat16", cpu=True) == "auto"  # a bf16 checkpoint is not doubled in memory
    assert serving_dtype("bfloat16", "float32", cpu=True) == "bfloat16"
    assert serving_dtype("auto", "float32", cpu=False) == "auto"
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert VLLMEngine(EngineSettings(checkpoint=checkpoint)).engine_args().dtype == "float32"
    monkeypatch.setattr(vllm_engine, "fast_bf16", lambda device: device == "cpu")
    assert serving_dtype("auto", "float32", cpu=True) == "auto"
    assert VLLMEngine(EngineSettings(checkpoint=checkpoint)).engine_args().dtype == "auto"
