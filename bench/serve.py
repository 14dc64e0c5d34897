"""Load-test ``onellm serve`` (engines vllm and hf) and vLLM serving LLaVA at matched dimensions.

    .venv/bin/python bench/serve.py [--checkpoint DIR] [--engines vllm,hf] [--concurrency 1,8,32]
                                    [--max-tokens 32] [--requests-per-level 64] [--max-seconds 60] [--no-llava]
                                    [--dtypes float32,bfloat16]

Each server runs on 127.0.0.1 (a free port) and gets the same load: streaming chat requests of one PNG image
(data: URL) + a short text, greedy, exactly ``--max-tokens`` output tokens each (``min_tokens`` = ``max_tokens``,
so every engine does the same work whatever the random model would emit). Per concurrency level the generator
keeps ``c`` requests in flight until ``--requests-per-level`` have been sent or ``--max-seconds`` have passed.
Reported: output tokens/s over the level's wall time, time to first token (p50/p95), end-to-end latency (p50),
and the vllm/hf throughput ratio per level.

Without ``--checkpoint`` the tiny preset is built into a temporary folder. The LLaVA baseline is a
``LlavaForConditionalGeneration`` with the same LLM (Llama config and tokenizer) and the same CLIP vision config as
the onellm checkpoint, with random weights, served by vLLM's own OpenAI server; it sees the same requests. It needs
a CLIP or SigLIP encoder (vLLM's LLaVA builds no other tower): for a DINOv2 checkpoint (the small preset) it is
skipped, saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
REQUEST_TIMEOUT_S = 600.0  # onellm serve's default --request-timeout
LLAVA_TOWERS = ("clip_vision_model", "siglip_vision_model")  # the vision towers vLLM's LLaVA implementation builds


# --- checkpoints -----------------------------------------------------------------------------------------
def build_onellm(folder: Path) -> Path:
    from onellm.presets import build_preset

    model, processor = build_preset("tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_llava(onellm_checkpoint: Path, folder: Path) -> Path:
    """LLaVA-1.5 layout with the onellm checkpoint's Llama config, tokenizer and CLIP vision config (random weights).

    Its ``<image>`` token is the onellm image marker; one image occupies (image_size / patch)^2 positions (16 for
    the tiny preset) where onellm uses N+2 (6): the LLM and encoder are matched, the token counts are each design's.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    import onellm  # noqa: F401

    source = AutoConfig.from_pretrained(onellm_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(onellm_checkpoint)
    vision = source.vision_config
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=source.text_config.to_dict(),
        image_token_index=source.modality_token_ids["image"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=source.text_config.tie_word_embeddings,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    size = vision.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    processor.save_pretrained(folder)
    return folder


# --- servers ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    startup_s: float


def start(name: str, command: list[str], port: int, log: Path, timeout: float = 600.0) -> Server:
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Server(name, url, process, time.monotonic() - started)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(Server(name, url, process, 0))
    raise RuntimeError(f"{name} not healthy after {timeout:.0f} s; see {log}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGINT)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- load ------------------------------------------------------------------------------------------------
@dataclass
class Level:
    concurrency: int
    ok: int = 0
    failed: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def request_body(model: str, image_url: str, max_tokens: int, min_tokens: bool) -> dict:
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": "Provide a one-sentence caption for the provided image."},
            ]},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    if min_tokens:
        body["min_tokens"] = max_tokens  # fixed output length: the same work for every engine
    return body


async def one_request(http: httpx.AsyncClient, body: dict, level: Level) -> None:
    started = time.monotonic()
    first = None
    tokens = 0
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"].get("message"))
                if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    first = time.monotonic()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # counted and reported, the load goes on
        level.failed += 1
        level.errors.append(f"{type(exc).__name__}: {exc}"[:200])  # httpx timeouts have no message
        return
    level.ok += 1
    level.tokens += tokens
    level.ttft.append((first or time.monotonic()) - started)
    level.latency.append(time.monotonic() - started)


async def run_level(url: str, body: dict, concurrency: int, requests: int, max_seconds: float) -> Level:
    level = Level(concurrency)
    sent = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency + 4)
    # A request may wait its turn behind c - 1 others (the hf engine serves one at a time: ~90 s for the small
    # preset at c=32): wait as long as the server itself lets a request run (--request-timeout, 600 s).
    timeout = max_seconds + REQUEST_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.monotonic() < deadline:
                sent += 1
                await one_request(http, body, level)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        level.wall_s = time.monotonic() - started
    return level


def bench_server(server: Server, model: str, image_url: str, args: argparse.Namespace, min_tokens: bool) -> list[Level]:
    body = request_body(model, image_url, args.max_tokens, min_tokens)
    asyncio.run(run_level(server.url, body, 1, 2, 60))  # warm-up (first-request allocations, caches)
    levels = []
    for concurrency in args.concurrency:
        level = asyncio.run(run_level(server.url, body, concurrency, args.requests_per_level, args.max_seconds))
        levels.append(level)
        print(
            f"  {server.name:<12} c={concurrency:<3} ok={level.ok:<4} failed={level.failed:<3} "
            f"{level.tokens_per_s:8.1f} tok/s  TTFT p50 {percentile(level.ttft, 0.5) * 1000:7.1f} ms  "
            f"p95 {percentile(level.ttft, 0.95) * 1000:7.1f} ms  e2e p50 {percentile(level.latency, 0.5) * 1000:7.1f} ms",
            flush=True,
        )
        if level.errors:
            print(f"    first error: {level.errors[0]}", flush=True)
    return levels


def image_data_url() -> str:
    import io

    import numpy as np
    from PIL import Image

    rgb = (np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="a onellm checkpoint (default: build tiny)")
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests-per-level", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per level; no new request after this")
    parser.add_argument("--no-llava", action="store_true", help="skip the LLaVA baseline")
    parser.add_argument(
        "--dtypes",
        default="float32",
        help="onellm servers' --dtype, one server per engine and dtype (e.g. float32,auto)",
    )
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    dtypes = [d for d in args.dtypes.split(",") if d]

    work = Path(tempfile.mkdtemp(prefix="onellm-bench-"))
    checkpoint = (args.checkpoint or build_onellm(work / "tiny")).resolve()
    image_url = image_data_url()
    import torch
    import transformers

    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = "not installed"
    print(f"# bench/serve.py  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()}  {os.cpu_count()} CPUs  "
          f"python {platform.python_version()}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"vllm {vllm_version}")  # fmt: skip
    print(f"# checkpoint {checkpoint}; {args.max_tokens} output tokens per request (min_tokens=max_tokens), greedy; "
          f"one 224x224 PNG + text per request; <= {args.requests_per_level} requests or {args.max_seconds:g} s per level")  # fmt: skip

    results: dict[str, list[Level]] = {}
    startups: dict[str, float] = {}
    servers = [(f"onellm-{e}" + (f"-{d}" if len(dtypes) > 1 else ""),
                [sys.executable, "-m", "onellm.serving", "serve", str(checkpoint), "--engine", e,
                 "--served-model-name", "bench", "--max-queue", "256", "--dtype", d])
               for e in engines for d in dtypes]  # fmt: skip
    tower = json.loads((checkpoint / "config.json").read_text())["vision_config"]["model_type"]
    if not args.no_llava and "vllm" in engines and tower not in LLAVA_TOWERS:
        print(f"# llava-vllm: skipped, vLLM's LLaVA builds {' or '.join(LLAVA_TOWERS)} vision towers, this "
              f"checkpoint's encoder is {tower}: no baseline at matched dimensions")  # fmt: skip
    elif not args.no_llava and "vllm" in engines:
        llava = build_llava(checkpoint, work / "llava")
        servers.append(("llava-vllm", [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(llava),
                                       "--served-model-name", "bench", "--enforce-eager",
                                       "--distributed-executor-backend", "uni", "--dtype", "float32"]))  # fmt: skip
    for name, command in servers:
        port = free_port()
        command = [*command, "--host", LOOPBACK, "--port", str(port), "--max-model-len", "1024"]
        log = work / f"{name}.log"
        try:
            server = start(name, command, port, log)
        except RuntimeError as exc:
            lines = log.read_text(errors="replace").splitlines()
            # the root cause (an import failure) comes before the wrapper errors vLLM raises from it
            reasons = [ln for ln in lines if "ModuleNotFoundError" in ln or "ImportError" in ln] or [
                ln for ln in lines if "Error:" in ln
            ]
            print(f"{name}: did not start ({exc}); {reasons[-1].strip() if reasons else 'no error line in the log'}")
            continue
        startups[name] = server.startup_s
        print(f"{name}: healthy after {server.startup_s:.0f} s", flush=True)
        try:
            results[name] = bench_server(server, "bench", image_url, args, min_tokens=True)
        finally:
            stop(server)

    print("\n| server | c | ok | failed | output tok/s | TTFT p50 ms | TTFT p95 ms | e2e p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, levels in results.items():
        for lv in levels:
            print(f"| {name} | {lv.concurrency} | {lv.ok} | {lv.failed} | {lv.tokens_per_s:.1f} | "
                  f"{percentile(lv.ttft, 0.5) * 1000:.1f} | {percentile(lv.ttft, 0.95) * 1000:.1f} | "
                  f"{percentile(lv.latency, 0.5) * 1000:.1f} |")  # fmt: skip
    pairs = [("onellm-vllm", "onellm-hf"), ("onellm-vllm", "llava-vllm")]
    pairs += [(f"onellm-{e}-{d}", f"onellm-{e}-{dtypes[0]}") for e in engines for d in dtypes[1:]]
    for numerator, denominator in pairs:
        if numerator in results and denominator in results:
            ratios = [
                f"c={a.concurrency}: {a.tokens_per_s / b.tokens_per_s:.2f}x"
                if b.tokens_per_s
                else f"c={a.concurrency}: n/a"
                for a, b in zip(results[numerator], results[denominator], strict=True)
            ]
            print(f"\nthroughput {numerator} / {denominator}: " + ", ".join(ratios))
    print("\nstart-up to healthy: " + ", ".join(f"{k} {v:.0f} s" for k, v in startups.items()))


if __name__ == "__main__":  # the servers spawn vLLM worker processes; keep the guard
    main()
