"""What the machine computes fast: decides the precision of training (``precision: auto``) and serving
(``--dtype auto``)."""

from __future__ import annotations


def fast_bf16(device_type: str) -> bool:
    """Whether bf16 matrix products run natively here: a CUDA GPU that supports bf16, or a CPU with the AVX512-BF16
    or AMX-BF16 instructions (elsewhere bf16 is emulated and slower than fp32). On the 2-core AMD EPYC machines of
    BENCHMARKS.md, bf16 autocast halves a SmolLM2-135M training step (0.66 vs 1.24 s); on a 2-core AVX2-only CPU,
    vLLM serving a float32 checkpoint in bf16 gave a quarter of the fp32 throughput at 16 concurrent requests."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(device_type: str, checkpoint_dtype: str = "float32") -> str:
    """What ``dtype: auto`` loads a checkpoint in on ``device_type`` (the HF evaluation backend and the hf serving
    engine): a float32 checkpoint in bfloat16 where bf16 runs natively (:func:`fast_bf16`), which is also what vLLM
    serves there (serving/vllm_engine.py, ``serving_dtype``), else in float32; a bf16 / fp16 checkpoint as stored."""
    stored = checkpoint_dtype.removeprefix("torch.")
    if stored in ("bfloat16", "float16"):
        return stored
    return "bfloat16" if fast_bf16(device_type) else "float32"
