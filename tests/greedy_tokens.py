"""Greedy token ids of OpenAI chat requests on several checkpoints, from one engine, in one process.

    python tests/serving/greedy_tokens.py {hf|vllm} JOBS.json OUT.json

JOBS.json: ``[{"checkpoint": DIR, "adapters": {NAME: DIR}, "requests": {NAME: {"messages": [...],
"adapter": NAME|null, "max_tokens": N}}}]``. OUT.json: ``[{NAME: {"prompt_ids": [...], "token_ids": [...]}}]``,
job by job; ``prompt_ids`` is the prompt the LLM saw (each marker expanded to its placeholder positions).

Each request is parsed once by ``onellm serve``'s own chat parser (:func:`onellm.serving.chat.parse_chat`: media
decoded and preprocessed, prompt rendered), then:

- ``hf``: ``onellm serve --engine hf``'s engine (:class:`HFEngine`, transformers ``generate``, PEFT adapters);
- ``vllm``: an offline vLLM engine through the onellm plugin, fed exactly what ``onellm serve --engine vllm``
  feeds its ``AsyncLLM`` (prompt ids with one marker per input + :class:`Preprocessed` tensors). Offline and in
  process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): after the first, each engine starts in a few seconds, where an
  ``AsyncLLM`` spawns and imports a new engine process per checkpoint (~25 s on 2 cores).

A separate process per engine kind: vLLM binds the process's threads to cores, the hf engine sets torch's thread
count; neither should leak into the test process.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

MAX_INPUTS = 4  # media inputs per request (the servers' --max-inputs-per-request in the serving tests)
LORA_RANKS = (8, 16, 32, 64)  # vLLM sizes its LoRA buffers by max_lora_rank, one of these


async def parse(messages: list[dict], processor: Any):
    from onellm.serving.chat import parse_chat
    from onellm.serving.media import MediaFetcher, MediaPolicy

    return await parse_chat(messages, processor, MediaFetcher(MediaPolicy()), MAX_INPUTS)


def run_hf(job: dict) -> dict:
    from transformers import AutoProcessor

    from onellm.serving.engines import EngineSettings, GenerationRequest, SamplingSettings
    from onellm.serving.hf_engine import HFEngine

    processor = AutoProcessor.from_pretrained(job["checkpoint"])
    adapters = {name: Path(path) for name, path in job["adapters"].items()}
    engine = HFEngine(EngineSettings(checkpoint=Path(job["checkpoint"]), adapters=adapters, dtype="float32"))

    async def run() -> dict:
        await engine.start()
        results = {}
        for name, request in job["requests"].items():
            chat = await parse(request["messages"], processor)
            generation = GenerationRequest(
                name, chat, SamplingSettings(max_tokens=request["max_tokens"], temperature=0.0), request["adapter"]
            )
            ids = [
                i
                for deltas in [d async for d in engine.generate(generation)]
                for delta in deltas
                for i in delta.token_ids
            ]
            results[name] = {"prompt_ids": chat.expanded_ids, "token_ids": ids}
        await engine.stop()
        return results

    return asyncio.run(run())


def run_vllm(job: dict) -> dict:
    from transformers import AutoConfig, AutoProcessor
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from onellm.serving.engines import adapter_rank
    from onellm.serving.plugin import register
    from onellm.serving.vllm_model import Preprocessed

    register()  # the entry point does this in vLLM's processes; here it also covers a non-installed checkout
    checkpoint, adapters = job["checkpoint"], job["adapters"]
    processor = AutoProcessor.from_pretrained(checkpoint)
    options: dict[str, Any] = {
        "model": checkpoint,
        "dtype": "float32",
        "seed": 0,
        "max_model_len": 512,
        "enforce_eager": True,
        "distributed_executor_backend": "uni",
        "limit_mm_per_prompt": {m: MAX_INPUTS for m in AutoConfig.from_pretrained(checkpoint).modalities},
    }
    if adapters:
        rank = max(adapter_rank(Path(path)) for path in adapters.values())
        options.update(
            enable_lora=True, max_loras=len(adapters) + 1, max_lora_rank=next(r for r in LORA_RANKS if r >= rank)
        )
    llm = LLM(**options)
    loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())}
    results = {}
    for name, request in job["requests"].items():
        chat = asyncio.run(parse(request["messages"], processor))
        media: dict[str, list[Preprocessed]] = {}
        for modality, tensor in chat.inputs:
            media.setdefault(modality, []).append(Preprocessed(tensor))
        prompt = {"prompt_token_ids": chat.prompt_ids, "multi_modal_data": media}
        params = SamplingParams(max_tokens=request["max_tokens"], temperature=0.0)
        lora = loras[request["adapter"]] if request["adapter"] else None
        (output,) = llm.generate([prompt], params, lora_request=lora, use_tqdm=False)
        results[name] = {"prompt_ids": list(output.prompt_token_ids), "token_ids": list(output.outputs[0].token_ids)}
    del llm
    gc.collect()
    return results


def main(engine: str, jobs_file: str, out_file: str) -> None:
    if engine == "vllm":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run = {"hf": run_hf, "vllm": run_vllm}[engine]
    outputs = [run(job) for job in json.loads(Path(jobs_file).read_text())]
    Path(out_file).write_text(json.dumps(outputs))


def collect(engine: str, jobs: list[dict], folder: Path) -> list[dict]:
    """Run this file as a subprocess for ``engine`` on ``jobs`` (files and log in ``folder``); the results, job by job."""
    import subprocess

    (folder / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    log = folder / f"{engine}.log"
    with log.open("wb") as handle:
        code = subprocess.run(
            [sys.executable, __file__, engine, str(folder / "jobs.json"), str(folder / f"{engine}.json")],
            stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=900,
        ).returncode  # fmt: skip
    assert code == 0, f"{engine} runner failed ({code}); log:\n{log.read_text()[-5000:]}"
    return json.loads((folder / f"{engine}.json").read_text())


if __name__ == "__main__":  # vLLM may spawn processes: starting an engine must be guarded
    main(*sys.argv[1:])
