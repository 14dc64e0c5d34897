"""The official OneLLM parity fixture (issue 13) for tests: where it is, and its conversion with a stand-in tokenizer.

The folder comes from ``ONELLM_OFFICIAL_FIXTURE`` (default ``../shared/fixtures/onellm_official`` beside the
repository); :data:`AVAILABLE` is False when it is absent (the tests that need it skip, saying where they looked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ONELLM_OFFICIAL_FIXTURE", REPO.parent / "shared/fixtures/onellm_official"))
AVAILABLE = (FIXTURE / "manifest.json").is_file()
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text()) if AVAILABLE else {}
SKIP_REASON = f"no official parity fixture at {FIXTURE} (set ONELLM_OFFICIAL_FIXTURE)"


def stand_in_tokenizer(folder: Path, size: int | None = None) -> Path:
    """A word-level tokenizer of the fixture's vocabulary size with LLaMA's special ids (LLaMA-2's tokenizer.model is
    not shipped): ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    size = size or MANIFEST["config"]["llm"]["vocab_size"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return folder


def constants() -> dict[str, int]:
    """The official constants the weights cannot tell, as this fixture patched them (converter keyword arguments)."""
    return {
        "clip_head_width": MANIFEST["config"]["clip"]["head_width"],
        "expert_heads": MANIFEST["config"]["upm"]["expert_heads"],
    }


def convert_fixture(root: Path, **options) -> tuple[Path, dict]:
    """Convert the fixture's weights into ``root/converted`` -> (folder, summary)."""
    from onellm.convert.official import convert_official

    out = root / "converted"
    summary = convert_official(
        FIXTURE / "weights.safetensors",
        FIXTURE / "params.json",
        out,
        tokenizer=stand_in_tokenizer(root / "tokenizer"),
        **constants(),
        **options,
    )
    return out, summary


def official_state(
    dim: int = 64,
    layers: int = 2,
    vocab: int = 32000,
    ffn: int = 192,
    clip_width: int = 48,
    clip_layers: int = 2,
    patch: int = 14,
    grid: int = 16,
    experts: int = 3,
    depth: int = 2,
    queries: int = 30,
    expert_hidden: int = 128,
    voxels: int = 128,
    point_groups: int = 1024,
    dtype=None,
    seed: int = 0,
) -> dict:
    """A random state dict in the official layout (``llma.*`` names, official shapes) of any size: for checkpoints
    other than the fixture's (a converter must read every dimension from the weights) and for conversion benchmarks.
    Norm weights are drawn around 1 and biases around 0 so that a dropped or swapped one shows."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.float32
    state: dict = {}

    def put(name: str, *shape: int, centre: float = 0.0, scale: float = 0.02) -> None:
        state[f"llma.{name}"] = (torch.randn(shape, generator=generator) * scale + centre).to(dtype)

    def norm(name: str, width: int, bias: bool) -> None:
        put(f"{name}.weight", width, centre=1.0, scale=0.1)
        if bias:
            put(f"{name}.bias", width, scale=0.1)

    def llama_block(prefix: str, width: int, hidden: int) -> None:
        for w in "qkvo":
            put(f"{prefix}.attention.w{w}.weight", width, width)
        put(f"{prefix}.feed_forward.w1.weight", hidden, width)
        put(f"{prefix}.feed_forward.w2.weight", width, hidden)
        put(f"{prefix}.feed_forward.w3.weight", hidden, width)
        norm(f"{prefix}.attention_norm", width, bias=False)
        norm(f"{prefix}.ffn_norm", width, bias=False)

    put("tok_embeddings.weight", vocab, dim)
    for i in range(layers):
        llama_block(f"layers.{i}", dim, ffn)
    norm("norm", dim, bias=False)
    put("output.weight", vocab, dim)
    w = clip_width
    put("clip.visual.class_embedding", w)
    put("clip.visual.positional_embedding", grid * grid + 1, w)
    put("clip.visual.conv1.weight", w, 3, patch, patch)
    put("clip.visual.proj", w, 32)
    norm("clip.visual.ln_pre", w, bias=True)
    norm("clip.visual.ln_post", w, bias=True)
    for i in range(clip_layers):
        block = f"clip.visual.transformer.resblocks.{i}"
        put(f"{block}.attn.in_proj_weight", 3 * w, w)
        put(f"{block}.attn.in_proj_bias", 3 * w, scale=0.1)
        put(f"{block}.attn.out_proj.weight", w, w)
        put(f"{block}.attn.out_proj.bias", w, scale=0.1)
        norm(f"{block}.ln_1", w, bias=True)
        norm(f"{block}.ln_2", w, bias=True)
        put(f"{block}.mlp.c_fc.weight", 4 * w, w)
        put(f"{block}.mlp.c_fc.bias", 4 * w, scale=0.1)
        put(f"{block}.mlp.c_proj.weight", w, 4 * w)
        put(f"{block}.mlp.c_proj.bias", w, scale=0.1)
    put("clip.token_embedding.weight", 100, 32)  # the text tower's leftovers: present, unused
    put("clip.logit_scale", 1)
    state["llma.clip.logit_scale"] = state["llma.clip.logit_scale"].reshape(())
    for e in range(experts):
        for j in range(depth):
            llama_block(f"resample_layers.{e}.{j}", w, expert_hidden)
    for m in ("image", "video", "audio", "point", "rgbd", "rgbn", "imu", "fmri"):
        put(f"resample_tokens.{m}", 1, queries, w)
        put(f"clip_proj1.{m}.0.weight", w, w)
        put(f"clip_proj1.{m}.0.bias", w, scale=0.1)
        norm(f"clip_proj1.{m}.1", w, bias=True)
        put(f"clip_proj2.{m}.0.weight", dim, w)
        put(f"clip_proj2.{m}.0.bias", dim, scale=0.1)
        norm(f"clip_proj2.{m}.1", dim, bias=True)
        put(f"routers.{m}.fc1.weight", 4 * w, w)
        put(f"routers.{m}.fc1.bias", 4 * w, scale=0.1)
        put(f"routers.{m}.fc2.weight", experts, 4 * w, scale=0.5)
        put(f"routers.{m}.fc2.bias", experts, scale=1.0)
        put(f"start_tag.{m}", 1, 1, dim)
        put(f"end_tag.{m}", 1, 1, dim)
    put("conv1.audio.weight", w, 1, 16, 16)
    put("conv1.audio.bias", w, scale=0.1)
    put("positional_embedding.audio", 1 + 12 * 101, w)
    put("conv1.point.conv1.weight", w, 6, 1, 1)
    put("conv1.point.conv1.bias", w, scale=0.1)
    put("positional_embedding.point", point_groups + 1, w)
    put("conv1.fmri.weight", 8 * w, voxels)
    put("conv1.fmri.bias", 8 * w, scale=0.1)
    put("positional_embedding.fmri", 9, w)
    put("conv1.imu.weight", w, 6, 10)
    put("positional_embedding.imu", 392, w)
    return state
