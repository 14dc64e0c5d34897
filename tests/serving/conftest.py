"""Serving fixtures: a tiny checkpoint with an input-sensitive LLM, a PEFT LoRA adapter, real servers on 127.0.0.1.

Servers run as subprocesses (``python -m onellm.serving serve ...``), exactly as a user starts them; each starts
once per session (the stock vLLM server once per module: vLLM needs 25-90 s to start on 2 cores) and is stopped
by its process group id.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from media_factory import npy_bytes, png_bytes, wav_bytes

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
LORA_NAME = "tiny-lora"
BARE_LORA_NAME = "tiny-lora-bare"  # the same adapter, as if trained on the bare LLM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log: Path
    temp: Path | None = None  # the server's own temp folder, removed by stop_server

    def alive(self) -> bool:
        return self.process.poll() is None


def start_server(
    command: list[str],
    log: Path,
    port: int,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
    stock_vllm: bool = False,
) -> Server:
    """Start ``command`` in its own process group (``env`` added to the environment) and wait until ``/health``
    answers 200. ``stock_vllm``: vLLM's own server, which leaves its socket files (7 per start) and a file store in the
    temp folder when SIGINT stops it: it gets a temp folder of its own (short: a socket's path holds at most 107
    bytes), removed by :func:`stop_server`."""
    temp = Path(tempfile.mkdtemp(prefix="onellm-test-")) if stock_vllm else None
    if temp is not None:
        env = {**(env or {}), "TMPDIR": str(temp), "VLLM_RPC_BASE_PATH": str(temp)}
    handle = log.open("wb")
    # VLLM_CPU_KVCACHE_SPACE: GiB of KV cache vLLM reserves on the CPU (otherwise most of the RAM).
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        **(env or {}),
    }
    env.pop("PYTHONPATH", None)  # tests/ holds an `onellm` folder that would shadow the package
    process = subprocess.Popen(
        command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_server(Server(url, process, log, temp))
            raise RuntimeError(f"server exited with {process.returncode}; log:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Server(url, process, log, temp)
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    stop_server(Server(url, process, log, temp))
    raise RuntimeError(f"server not healthy after {timeout:.0f} s; log:\n{log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    """SIGINT the server's process group (uvicorn shuts vLLM down), then SIGKILL what is left after 30 s."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGINT)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)  # engine processes left in the group, if any
    except ProcessLookupError:
        pass
    if server.temp is not None:
        shutil.rmtree(server.temp, ignore_errors=True)


def onellm_serve(checkpoint: Path, engine: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "onellm.serving",
        "serve",
        str(checkpoint),
        "--engine",
        engine,
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--served-model-name",
        "tiny",
        *extra,
    ]


# --- model and adapter ----------------------------------------------------------------------------
def input_sensitive(model: torch.nn.Module, seed: int) -> None:
    """Redraw the LLM's matrices at std 0.3 (seeded). At the presets' std (0.02) a random 2-layer LLM emits the
    same token whatever the input, so an engine that dropped an input would still "match"; at 0.3 greedy
    continuations depend on the input, token by token."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.language_model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def encoder_configs() -> dict[str, object]:
    """One tiny vision config per registered encoder family (``onellm.encoder``), by ``model_type``: each family's
    own layout (CLIP's pre-norm and class token, SigLIP's attention-pooling head, DINOv2's LayerScale and mask
    token) at width 64, 2 layers, 32 px images in 8 px patches."""
    from transformers import CLIPVisionConfig, Dinov2Config, SiglipVisionConfig

    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    return {
        "clip_vision_model": CLIPVisionConfig(intermediate_size=128, **shape),
        "siglip_vision_model": SiglipVisionConfig(intermediate_size=128, **shape),
        "dinov2": Dinov2Config(mlp_ratio=2, **shape),
    }


def family_model(vision_config, modalities: tuple[str, ...] = ("image", "audio"), tie_embeddings: bool = True):
    """(model, processor): the tiny preset's Llama (input-sensitive, see :func:`input_sensitive`) on the encoder
    ``vision_config`` describes, with a 3-expert UPM. ``tie_embeddings=False`` gives the LLM its own LM head, as
    LLaMA-2 (the 7b preset) has; SmolLM2 (small) ties it like the tiny preset."""
    from transformers import LlamaConfig

    from onellm.presets import assemble, family_modalities, tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=576, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=tie_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    projector = {"num_experts": 3, "depth": 1, "num_queries": 4, "num_heads": 2, "router": "pooled"}
    model, processor = assemble(text, vision_config, tokenizer, projector, family_modalities("tiny", list(modalities)))
    input_sensitive(model, seed=1)
    return model, processor


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny preset with its LLM's matrices redrawn at std 0.3 (seeded), with two word slots and region words.

    At the preset's std (0.02) a random 2-layer LLM emits the same token whatever the input, so an engine that
    dropped the image would still "match". At 0.3 greedy continuations depend on the input, token by token.
    """
    from onellm.presets import build_preset

    # vLLM must mix its own word embeddings as HF does, into both tags (two word slots) and into every soft token
    model, processor = build_preset("tiny", end_tag="lexical", region_words="add", start_tag="lexical")
    input_sensitive(model, seed=1)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lora_adapter(checkpoint, tmp_path_factory) -> Path:
    """A PEFT LoRA adapter on the LLM's attention (q, v), trained-looking: both factors random, not zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import onellm  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False
    )
    torch.manual_seed(3)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(4.0)  # large enough to change greedy outputs of the tiny LLM
    folder = tmp_path_factory.mktemp("lora") / LORA_NAME
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bare_lora_adapter(lora_adapter, tmp_path_factory) -> Path:
    """``lora_adapter`` in the layout of an adapter trained on the bare LLM: weight names without
    ``language_model.``, target modules by plain name. Served, it must act exactly like ``lora_adapter``."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("lora") / BARE_LORA_NAME
    folder.mkdir()
    weights = load_file(lora_adapter / "adapter_model.safetensors")
    prefix, bare = "base_model.model.language_model.", "base_model.model."
    assert all(key.startswith(prefix) for key in weights)
    save_file(
        {bare + key[len(prefix) :]: value for key, value in weights.items()}, folder / "adapter_model.safetensors"
    )
    config = json.loads((lora_adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "v_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint the training recipes write from the REAL small preset (SmolLM2-135M-Instruct + DINOv2
    ViT-S/14): ``configs/small/align_image.yaml`` (one image expert), 2 steps of 2 samples on a synthetic image
    corpus -> ``<out>/align_image/final``. About a minute on 2 cores."""
    return train_small_checkpoint(tmp_path_factory, {})


@pytest.fixture(scope="session")
def small_two_slot_checkpoint(tmp_path_factory) -> Path:
    """:func:`small_checkpoint` with two word slots (preset argument ``extra_slots: 0``): N + 2 positions per input."""
    return train_small_checkpoint(tmp_path_factory, {"init_from.preset_args.extra_slots": 0})


def train_small_checkpoint(tmp_path_factory, extra: dict) -> Path:
    import contextlib
    import io

    from onellm.instruct_data.synth import synthesize
    from onellm.train.common import make_accelerator
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    data, out = tmp_path_factory.mktemp("small-corpus"), tmp_path_factory.mktemp("small-run")
    synthesize(data, per_modality=6, seed=0, modalities=["image"], workers=1)
    overrides = {
        "data.root": str(data),
        "output_dir": str(out),
        "train.steps": 2,
        "train.warmup_steps": 1,
        "train.batch_size": 2,
        "train.eval_interval": 0,
        "train.eval_samples": 2,
        "train.save_interval": 2,
        "train.log_interval": 1,
        **extra,
    }
    stage = load_stage(REPO / "configs" / "small" / "align_image.yaml", overrides)
    with contextlib.redirect_stderr(io.StringIO()):
        outputs = run_stage(stage, make_accelerator())
    return Path(outputs["checkpoint"])


# --- media --------------------------------------------------------------------------------------
def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bomb_png(side: int = 5000) -> bytes:
    """A valid all-black PNG of ``side`` x ``side`` 8-bit grey pixels: 25 MP (above the server's 16 MP limit,
    below Pillow's own bomb guard) in about 25 KB of zlib, written chunk by chunk without Pillow."""
    raw = (b"\x00" * (side + 1)) * side  # each row: filter byte 0 + side zero pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def media() -> dict[str, bytes]:
    return {
        "png": png_bytes(seed=0),
        "png2": png_bytes(seed=1),
        "wav": wav_bytes(),
        "point": npy_bytes(np.random.default_rng(0).random((500, 6)).astype(np.float32)),
        "imu": npy_bytes(np.random.default_rng(1).normal(size=(300, 6)).astype(np.float32)),
        "fmri": npy_bytes(np.random.default_rng(2).normal(size=2048).astype(np.float32)),
    }


def image_part(png: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(png, "image/png")}}


def audio_part(wav: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}}


def user(*parts: dict, text: str = "Describe it.") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """This module's constants and helpers for the test modules (pytest cannot import a sub-folder's conftest):
    ``kit.API_KEY``, ``kit.LORA_NAME``, ``kit.start_server(...)``, ``kit.stop_server(...)``, ``kit.free_port()``."""
    return SimpleNamespace(**{k: v for k, v in globals().items() if not k.startswith("_")})


@pytest.fixture(scope="session")
def parts():
    """Message builders: ``parts.image(png)``, ``parts.audio(wav)``, ``parts.user(*parts, text=...)``, ..."""

    class Parts:
        image = staticmethod(image_part)
        audio = staticmethod(audio_part)
        user = staticmethod(user)
        data_url = staticmethod(data_url)
        b64 = staticmethod(b64)
        bomb_png = staticmethod(bomb_png)

    return Parts


@pytest.fixture(scope="session")
def media_folder(media, tmp_path_factory) -> Path:
    """The folder the servers may read file: URLs from."""
    folder = tmp_path_factory.mktemp("served_media")
    (folder / "cat.png").write_bytes(media["png"])
    return folder


def _serve(engine: str, checkpoint: Path, adapters: list[Path], media_folder: Path, tmp_path_factory) -> Server:
    """``onellm serve`` with the adapter, an API key, fetching allowlisted for loopback/metadata hosts (so the
    private-address rule is what refuses them), a media folder for file: URLs and small limits."""
    port = free_port()
    command = onellm_serve(
        checkpoint,
        engine,
        port,
        "--lora",
        f"{LORA_NAME}={adapters[0]}",
        "--lora",
        f"{BARE_LORA_NAME}={adapters[1]}",
        "--api-key",
        API_KEY,
        "--allowed-media-domains",
        "127.0.0.1",
        "localhost",
        "169.254.169.254",
        "--allowed-local-media-path",
        str(media_folder),
        "--max-body-mb",
        "2",
        "--max-queue",
        "3",
        "--max-inputs-per-request",
        "4",
    )
    log = tmp_path_factory.mktemp("logs") / f"{engine}_server.log"
    return start_server(command, log, port, timeout=300 if engine == "vllm" else 180)


@pytest.fixture(scope="session")
def hf_server(checkpoint, lora_adapter, bare_lora_adapter, media_folder, tmp_path_factory) -> Iterator[Server]:
    server = _serve("hf", checkpoint, [lora_adapter, bare_lora_adapter], media_folder, tmp_path_factory)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def vllm_server(checkpoint, lora_adapter, bare_lora_adapter, media_folder, tmp_path_factory) -> Iterator[Server]:
    pytest.importorskip("vllm")
    server = _serve("vllm", checkpoint, [lora_adapter, bare_lora_adapter], media_folder, tmp_path_factory)
    yield server
    stop_server(server)
