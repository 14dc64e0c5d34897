"""Every checkpoint onellm writes loads in every engine (issue 15): for each encoder family (CLIP, SigLIP, DINOv2)
the training recipes write a one-expert alignment checkpoint, a K-expert one, an instruct merged one and an instruct
base + LoRA adapter; ``onellm serve``'s vllm engine and its hf engine (the reference) give the same greedy tokens
for an image and an audio request on each, and so does vLLM's stock OpenAI server for DINOv2.

The checkpoints come from the real recipes (``configs/tiny`` stages run 1 step on a tiny corpus, ``init_from`` a
tiny model of the family), so their layout is whatever the recipes write. Each family's LLM is input-sensitive
(see conftest.input_sensitive) and its adapter's B factors are redrawn large after the run (one step leaves them
near zero), so a dropped input or adapter changes the tokens.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
from greedy_tokens import collect
from openai import OpenAI
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
MAX_TOKENS = 8
ADAPTER = "matrix-lora"
# family -> whether its LLM ties the LM head to the embeddings (SmolLM2 does; LLaMA-2, the 7b preset's, does not)
FAMILIES = {"clip_vision_model": False, "siglip_vision_model": True, "dinov2": True}
CHECKPOINTS = ("one-expert", "k-experts", "merged", "base+lora")


def run_recipes(family: str, kit, data: Path, out: Path) -> dict[str, Path]:
    """align_image (from a tiny model of the family, one expert) -> build_upm -> instruct, 1 step each."""
    from onellm.train.common import make_accelerator
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    model, processor = kit.family_model(kit.encoder_configs()[family], tie_embeddings=FAMILIES[family])
    model.save_pretrained(out / "init")
    processor.save_pretrained(out / "init")
    quick = {
        "data.root": str(data),
        "output_dir": str(out),
        "train.steps": 1,
        "train.warmup_steps": 0,
        "train.batch_size": 4,
        "train.eval_interval": 0,
        "train.eval_samples": 4,
        "train.save_interval": 1,
        "train.log_interval": 1,
    }
    accelerator = make_accelerator()
    with contextlib.redirect_stderr(io.StringIO()):
        run_stage(
            load_stage(
                TINY / "align_image.yaml", {**quick, "init_from": {"path": str(out / "init"), "num_experts": 1}}
            ),
            accelerator,
        )
        run_stage(load_stage(TINY / "build_upm.yaml", {"output_dir": str(out)}), accelerator)
        sources = [{"modalities": ["image"]}, {"modalities": ["audio"]}]
        instruct = {**quick, "init_from": {"stage": "build_upm"}, "data.sources": sources}
        run_stage(load_stage(TINY / "instruct.yaml", instruct), accelerator)
    return {
        "one-expert": out / "align_image" / "final",
        "k-experts": out / "build_upm" / "final",
        "merged": out / "instruct" / "merged",
        "base+lora": out / "instruct" / "final",
        "adapter": out / "instruct" / "adapter",
    }


def strengthen(adapter: Path, seed: int) -> None:
    """Redraw the adapter's B factors at std 0.5 (same names, shapes and dtype): after one training step they are
    ~1e-3, too small to change a greedy token, so serving without the adapter would pass unnoticed."""
    weights = load_file(adapter / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for key, value in weights.items():
        if "lora_B" in key:
            weights[key] = (torch.randn(value.shape, generator=generator) * 0.5).to(value.dtype)
    save_file(weights, adapter / "adapter_model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def written(tmp_path_factory, kit) -> dict[str, dict[str, Path]]:
    """family -> {checkpoint kind -> folder, "adapter" -> the instruct adapter}."""
    from onellm.instruct_data.synth import synthesize

    data = tmp_path_factory.mktemp("matrix-corpus")
    synthesize(data, per_modality=6, seed=0, modalities=["image", "audio"], workers=1)
    runs = {}
    for i, family in enumerate(FAMILIES):
        runs[family] = run_recipes(family, kit, data, tmp_path_factory.mktemp(f"matrix-{family}"))
        strengthen(runs[family]["adapter"], seed=i)
    return runs


def requests(media, parts) -> dict[str, dict]:
    return {
        "image": {"messages": parts.user(parts.image(media["png"]), text="What is it?"), "adapter": None},
        "audio": {"messages": parts.user(parts.audio(media["wav"]), text="What is it?"), "adapter": None},
    }


def jobs(written, media, parts) -> list[dict]:
    """One job (= one engine start) per checkpoint; the base + LoRA job also asks with the adapter."""
    out = []
    for family, folders in written.items():
        for kind in CHECKPOINTS:
            asked = requests(media, parts)
            adapters = {}
            if kind == "base+lora":
                adapters = {ADAPTER: str(folders["adapter"])}
                asked |= {f"lora {name}": {**r, "adapter": ADAPTER} for name, r in requests(media, parts).items()}
            for request in asked.values():
                request["max_tokens"] = MAX_TOKENS
            out.append({"family": family, "kind": kind, "checkpoint": str(folders[kind]), "adapters": adapters,
                        "requests": asked})  # fmt: skip
    return out


def greedy_tokens(engine: str, jobs: list[dict], folder: Path) -> dict[tuple[str, str], dict]:
    """Greedy tokens from ``engine`` -> {(family, kind): {request: {prompt_ids, token_ids}}}."""
    results = collect(engine, jobs, folder)
    return {(job["family"], job["kind"]): result for job, result in zip(jobs, results, strict=True)}


@pytest.fixture(scope="module")
def hf_tokens(written, media, parts, tmp_path_factory):
    return greedy_tokens("hf", jobs(written, media, parts), tmp_path_factory.mktemp("hf-tokens"))


def test_vllm_engine_loads_every_checkpoint_and_matches_hf(written, hf_tokens, media, parts, tmp_path):
    pytest.importorskip("vllm")
    candidate = greedy_tokens("vllm", jobs(written, media, parts), tmp_path)
    assert candidate.keys() == hf_tokens.keys() and len(candidate) == len(FAMILIES) * len(CHECKPOINTS)
    mismatches = []
    for (family, kind), reference in hf_tokens.items():
        for name, expected in reference.items():
            got = candidate[family, kind][name]
            assert len(expected["token_ids"]) == MAX_TOKENS or expected["token_ids"][-1] == 2, (family, kind, name)
            if got != expected:
                mismatches.append(f"{family} {kind} {name}: hf {expected} vs vllm {got}")
    assert not mismatches, "\n".join(mismatches)
    for family in FAMILIES:  # the answers depend on what was asked, and the adapter is applied
        answers = hf_tokens[family, "base+lora"]
        assert answers["image"]["token_ids"] != answers["audio"]["token_ids"], family
        assert answers["lora image"]["token_ids"] != answers["image"]["token_ids"], family


@pytest.fixture(scope="module")
def stock_dinov2_server(written, tmp_path_factory, kit):
    """vLLM's own OpenAI server on the DINOv2 instruct base (a K-expert checkpoint) with its LoRA adapter."""
    pytest.importorskip("vllm")
    folders = written["dinov2"]
    port = kit.free_port()
    command = [
        *(sys.executable, "-m", "vllm.entrypoints.openai.api_server"),
        *("--model", str(folders["base+lora"]), "--served-model-name", "dino", "--host", "127.0.0.1"),
        *("--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager"),
        *("--distributed-executor-backend", "uni", "--api-key", kit.API_KEY),
        *("--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"),
        *("--lora-modules", f"{ADAPTER}={folders['adapter']}"),
    ]
    server = kit.start_server(
        command, tmp_path_factory.mktemp("logs") / "stock_dinov2.log", port, timeout=300, stock_vllm=True
    )
    yield server
    kit.stop_server(server)


def test_stock_vllm_server_loads_dinov2_base_and_adapter_and_matches_hf(
    stock_dinov2_server, hf_tokens, media, parts, kit
):
    """Raw media through vLLM's chat pipeline and the plugin's processor: same prompt length, same greedy tokens."""
    client = OpenAI(base_url=f"{stock_dinov2_server.url}/v1", api_key=kit.API_KEY, max_retries=0, timeout=120)
    reference = hf_tokens["dinov2", "base+lora"]
    for name, request in requests(media, parts).items():
        for model, key in (("dino", name), (ADAPTER, f"lora {name}")):
            response = client.chat.completions.create(
                model=model,
                messages=request["messages"],
                max_tokens=MAX_TOKENS,
                temperature=0,
                extra_body={"return_token_ids": True},
            )
            got = (response.usage.prompt_tokens, response.choices[0].model_extra["token_ids"])
            assert got == (len(reference[key]["prompt_ids"]), reference[key]["token_ids"]), key
