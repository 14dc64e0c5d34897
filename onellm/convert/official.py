"""The released OneLLM checkpoint (csuhan/OneLLM: ``consolidated.00-of-01.pth``, keys ``llma.*``, LLaMA-2's
``params.json`` and ``tokenizer.model``) -> a onellm HF checkpoint folder that transformers, vLLM and onellm load.

Nothing of the official layout is special-cased in the model: it is a choice of registered parts, written into the
converted ``config.json``:

- experts ``llama`` (LLaMA blocks, no rotary positions, attending both ways), ``router: query`` with
  ``router_norm: sigmoid`` (sigmoid then divided by the sum: per query position, input-independent),
  ``norm: layernorm`` (a LayerNorm after each projection), learned queries;
- the encoder: OpenAI CLIP in open_clip's layout -> transformers' CLIP vision model (QuickGELU), the post-norm over
  every token (what :class:`onellm.encoder.UniversalEncoder` does for every family);
- modality options (each modality's "7b" ``preset_options``): audio/IMU/fMRI/point position tables that cover the class token, the
  IMU convolution with stride 1 and no bias, fMRI's interleaved layout, the point tokenizer grouping on colour
  channels, depth and normal maps paired with their RGB image;
- the LLM: Meta's LLaMA layout -> transformers' Llama (q/k rows permuted from Meta's interleaved rotary pairs to
  the half-split form), one placeholder token per modality appended to the vocabulary (their rows are zero and
  never produced: :meth:`OneLLMForConditionalGeneration.forward` masks them);
- the sequence layout ``[BOS, start_tag, N tokens, end_tag, text]``: :data:`OFFICIAL_CHAT_TEMPLATE` puts every media
  marker right after BOS, then the official conversation format.

Every shape comes from the checkpoint. What the weights cannot tell (head counts, the audio stride, the point group
size) are the official code's constants, overridable. Tensors are converted one at a time from a memory-mapped
source and written in shards, so a 7B conversion holds about one shard in memory; dtypes are kept (bf16 stays bf16).
Unknown or missing keys are errors that name them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

OFFICIAL_PREFIX = "llma."
# Official modality names -> onellm's.
MODALITIES = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "point": "point",
    "rgbd": "depth",
    "rgbn": "normal",
    "imu": "imu",
    "fmri": "fmri",
}
# The CLIP text tower and the visual projection: stored in the checkpoint, never read by OneLLM's forward.
IGNORED = re.compile(r"^clip\.(?!visual\.)|^clip\.visual\.proj$")
# Constants of the official code that the weights do not reveal (the others, per modality, are the 7b preset's
# modalities' "7b" preset options: the audio stride and frames, point count and group size, IMU rate, ...).
CLIP_HEAD_WIDTH = 64  # open_clip's ViT head width (ViT-L/14: 1024 / 64 = 16 heads)
EXPERT_HEADS = 16  # the resampler blocks' head count
# The official conversation format ("v1": the system line, then "###Human: ...\n###Assistant: ..."), with every
# media marker right after BOS, as the official model places the modality tokens.
OFFICIAL_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
OFFICIAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}{% if message['content'] is not string %}{% for part in message['content'] %}"
    "{% if part['type'] != 'text' %}{{ '<' + part['type'] + '>' }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{{ " + json.dumps(OFFICIAL_SYSTEM + "\n\n###") + " }}"
    "{% for message in messages %}"
    "{{ 'Human' if message['role'] == 'user' else 'Assistant' }}{{ ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '\\n###' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class ConversionError(ValueError):
    """The checkpoint does not have the official layout; the message names the keys or values."""


# --- reading the source ------------------------------------------------------------------------------------------
class OfficialCheckpoint:
    """Lazy, name -> tensor access to an official checkpoint (``.pth`` memory-mapped, or ``.safetensors``), with
    the ``llma.`` prefix removed. Only the tensors asked for are read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConversionError(f"{self.path}: no such checkpoint file")
        if self.path.suffix == ".safetensors":
            from safetensors import safe_open

            self._file = safe_open(str(self.path), framework="pt")
            names = list(self._file.keys())
            self._get = self._file.get_tensor
            self._shape = lambda name: tuple(self._file.get_slice(name).get_shape())
        else:
            try:
                state = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:  # torch raises several kinds for a file that is not a checkpoint
                raise ConversionError(f"{self.path}: not a PyTorch checkpoint ({exc})") from None
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            if not isinstance(state, dict):
                raise ConversionError(f"{self.path}: expected a state dict, found {type(state).__name__}")
            names = list(state)
            self._get = state.__getitem__
            self._shape = lambda name: tuple(state[name].shape)
        foreign = [n for n in names if not n.startswith(OFFICIAL_PREFIX)]
        if foreign:
            raise ConversionError(
                f"{self.path}: {len(foreign)} key(s) outside the official '{OFFICIAL_PREFIX}' namespace, e.g. {foreign[:5]}"
            )
        self.names = [n[len(OFFICIAL_PREFIX) :] for n in names]

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def tensor(self, name: str) -> torch.Tensor:
        return self._get(OFFICIAL_PREFIX + name)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self:
            raise ConversionError(f"{self.path}: the official key '{OFFICIAL_PREFIX}{name}' is missing")
        return self._shape(OFFICIAL_PREFIX + name)

    def count(self, pattern: str) -> int:
        """How many distinct values the ``(\\d+)`` group of ``pattern`` takes among the keys."""
        regex = re.compile(pattern)
        return len({m.group(1) for n in self.names if (m := regex.match(n))})


# --- the configuration -------------------------------------------------------------------------------------------
def official_modalities(source: OfficialCheckpoint) -> list[str]:
    """onellm names of the modalities the checkpoint has a projector head for, in onellm's order."""
    from onellm.modalities import modality_names

    found = {m.split(".", 1)[1] for m in source.names if m.startswith("resample_tokens.")}
    unknown = sorted(found - set(MODALITIES))
    if unknown:
        raise ConversionError(f"{source.path}: unknown official modalities {unknown}; known: {sorted(MODALITIES)}")
    if not found:
        raise ConversionError(f"{source.path}: no 'llma.resample_tokens.<modality>' key: not a OneLLM checkpoint")
    ours = {MODALITIES[m] for m in found}
    return [m for m in modality_names() if m in ours]


def official_name(modality: str) -> str:
    return next(k for k, v in MODALITIES.items() if v == modality)


def modality_options(source: OfficialCheckpoint, modality: str, width: int, image_size: int) -> dict[str, Any]:
    """The official options (the 7b preset's table) with the shapes the weights fix: image size, token counts,
    kernels, voxel count. A table that contradicts the weights is an error naming both."""
    from onellm.modalities import get_modality

    options = dict(get_modality(modality).preset_options["7b"])
    table = f"positional_embedding.{official_name(modality)}"
    tokens = source.shape(table)[0] - 1 if modality in ("audio", "point", "imu", "fmri") else None
    if modality in ("image", "video", "depth", "normal"):
        options["image_size"] = image_size
    elif modality == "audio":
        kernel, stride, frames = source.shape("conv1.audio.weight")[-1], options["stride"], options["target_length"]
        grid = ((options["num_mel_bins"] - kernel) // stride + 1) * ((frames - kernel) // stride + 1)
        if grid != tokens:
            raise ConversionError(
                f"llma.{table} has {tokens} + 1 rows; kernel {kernel}, stride {stride} over "
                f"{options['num_mel_bins']} x {frames} fbank frames gives {grid} tokens"
            )
        options["kernel"] = kernel
    elif modality == "imu":
        kernel = source.shape("conv1.imu.weight")[-1]
        options.update(kernel=kernel, num_samples=(tokens - 1) * options["stride"] + kernel)
    elif modality == "fmri":
        out, voxels = source.shape("conv1.fmri.weight")
        if out != tokens * width:
            raise ConversionError(f"llma.conv1.fmri.weight has {out} outputs; {tokens} tokens x width {width} expected")
        options.update(num_voxels=voxels, tokens=tokens)
    elif modality == "point":
        options["num_groups"] = tokens
    return options


def official_config(
    source: OfficialCheckpoint, params: dict, clip_head_width: int = CLIP_HEAD_WIDTH, expert_heads: int = EXPERT_HEADS
):
    """The :class:`OneLLMConfig` of the converted checkpoint: every shape read from ``source``."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from onellm.configuration import OneLLMConfig

    vocab, dim = source.shape("tok_embeddings.weight")
    if params.get("dim", dim) != dim:
        raise ConversionError(f"params.json dim {params['dim']} != llma.tok_embeddings.weight width {dim}")
    heads = int(params["n_heads"])
    modalities = official_modalities(source)
    text = LlamaConfig(
        vocab_size=vocab + len(modalities),
        hidden_size=dim,
        intermediate_size=source.shape("layers.0.feed_forward.w1.weight")[0],
        num_hidden_layers=source.count(r"layers\.(\d+)\."),
        num_attention_heads=heads,
        num_key_value_heads=int(params.get("n_kv_heads") or heads),
        rms_norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        max_position_embeddings=int(params.get("max_seq_len", 2048)),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    width = source.shape("clip.visual.class_embedding")[0]
    if width % clip_head_width:
        raise ConversionError(f"CLIP width {width} is not a multiple of the head width {clip_head_width}")
    patch = source.shape("clip.visual.conv1.weight")[-1]
    grid = math.isqrt(source.shape("clip.visual.positional_embedding")[0] - 1)
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=source.shape("clip.visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
        num_hidden_layers=source.count(r"clip\.visual\.transformer\.resblocks\.(\d+)\."),
        num_attention_heads=width // clip_head_width,
        image_size=patch * grid,
        patch_size=patch,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    first = official_name(modalities[0])
    projector = {
        "num_experts": source.count(r"resample_layers\.(\d+)\."),
        "depth": source.count(r"resample_layers\.0\.(\d+)\."),
        "num_queries": source.shape(f"resample_tokens.{first}")[1],
        "num_heads": expert_heads,
        "expert": "llama",
        "expert_hidden": source.shape("resample_layers.0.0.feed_forward.w1.weight")[0],
        "router": "query",
        "router_norm": "sigmoid",
        "router_hidden": source.shape(f"routers.{first}.fc1.weight")[0],
        "norm": "layernorm",
        "queries": "learned",
        "width": source.shape(f"clip_proj1.{first}.0.weight")[0],
    }
    options = {m: modality_options(source, m, width, patch * grid) for m in modalities}
    return OneLLMConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projector_config=projector,
        modality_configs=options,
        modality_token_ids={m: vocab + i for i, m in enumerate(modalities)},
    )


# --- the weights -------------------------------------------------------------------------------------------------
def meta_to_hf_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a Meta-layout q/k projection (rotary pairs interleaved: 2i, 2i+1) in transformers' layout (pairs
    i and i + head_dim/2)."""
    rows, cols = weight.shape
    return weight.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


@dataclass
class Rule:
    """Official keys matching ``pattern`` -> ``target`` (with the match's groups), through ``transform``."""

    pattern: str
    target: str | Callable[[re.Match], list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]]
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    regex: re.Pattern = field(init=False)

    def __post_init__(self):
        self.regex = re.compile(self.pattern + "$")


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _rules(config) -> list[Rule]:
    text, heads = config.text_config, config.text_config.num_attention_heads
    kv_heads, vocab = text.num_key_value_heads, config.text_config.vocab_size
    width = config.vision_config.hidden_size
    m = lambda name: MODALITIES[name]  # noqa: E731

    def pad_vocab(t: torch.Tensor) -> torch.Tensor:  # zero rows for the placeholder tokens
        return torch.cat([t, t.new_zeros(vocab - t.shape[0], t.shape[1])])

    def split_qkv(match: re.Match) -> list[tuple[str, Callable]]:
        base, kind = f"encoder.model.encoder.layers.{match.group(1)}.self_attn", match.group(2)
        return [(f"{base}.{p}_proj.{kind}", lambda t, i=i: t[i * width : (i + 1) * width]) for i, p in enumerate("qkv")]

    def table(match: re.Match) -> list[tuple[str, Callable]]:
        base = f"mm_tokenizers.{m(match.group(1))}"
        return [(f"{base}.class_position", lambda t: t[0]), (f"{base}.positions", lambda t: t[1:].unsqueeze(0))]

    llm, clip, layer = "language_model.model", "encoder.model", r"layers\.(\d+)"
    resblock = r"clip\.visual\.transformer\.resblocks\.(\d+)"
    expert = r"resample_layers\.(\d+)\.(\d+)"
    mod = r"(\w+)"
    return [
        Rule(r"tok_embeddings\.weight", f"{llm}.embed_tokens.weight", pad_vocab),
        Rule(r"output\.weight", "language_model.lm_head.weight", pad_vocab),
        Rule(r"norm\.weight", f"{llm}.norm.weight"),
        Rule(
            rf"{layer}\.attention\.wq\.weight",
            rf"{llm}.layers.\1.self_attn.q_proj.weight",
            lambda t: meta_to_hf_rotary(t, heads),
        ),
        Rule(
            rf"{layer}\.attention\.wk\.weight",
            rf"{llm}.layers.\1.self_attn.k_proj.weight",
            lambda t: meta_to_hf_rotary(t, kv_heads),
        ),
        Rule(rf"{layer}\.attention\.wv\.weight", rf"{llm}.layers.\1.self_attn.v_proj.weight"),
        Rule(rf"{layer}\.attention\.wo\.weight", rf"{llm}.layers.\1.self_attn.o_proj.weight"),
        Rule(rf"{layer}\.feed_forward\.w1\.weight", rf"{llm}.layers.\1.mlp.gate_proj.weight"),
        Rule(rf"{layer}\.feed_forward\.w2\.weight", rf"{llm}.layers.\1.mlp.down_proj.weight"),
        Rule(rf"{layer}\.feed_forward\.w3\.weight", rf"{llm}.layers.\1.mlp.up_proj.weight"),
        Rule(rf"{layer}\.attention_norm\.weight", rf"{llm}.layers.\1.input_layernorm.weight"),
        Rule(rf"{layer}\.ffn_norm\.weight", rf"{llm}.layers.\1.post_attention_layernorm.weight"),
        # CLIP (open_clip) -> transformers' CLIP vision model
        Rule(r"clip\.visual\.class_embedding", f"{clip}.embeddings.class_embedding"),
        Rule(r"clip\.visual\.positional_embedding", f"{clip}.embeddings.position_embedding.weight"),
        Rule(r"clip\.visual\.conv1\.weight", f"{clip}.embeddings.patch_embedding.weight"),
        Rule(r"clip\.visual\.ln_pre\.(weight|bias)", rf"{clip}.pre_layrnorm.\1"),
        Rule(r"clip\.visual\.ln_post\.(weight|bias)", rf"{clip}.post_layernorm.\1"),
        Rule(rf"{resblock}\.attn\.in_proj_(weight|bias)", split_qkv),
        Rule(rf"{resblock}\.attn\.out_proj\.(weight|bias)", rf"{clip}.encoder.layers.\1.self_attn.out_proj.\2"),
        Rule(rf"{resblock}\.ln_1\.(weight|bias)", rf"{clip}.encoder.layers.\1.layer_norm1.\2"),
        Rule(rf"{resblock}\.ln_2\.(weight|bias)", rf"{clip}.encoder.layers.\1.layer_norm2.\2"),
        Rule(rf"{resblock}\.mlp\.c_fc\.(weight|bias)", rf"{clip}.encoder.layers.\1.mlp.fc1.\2"),
        Rule(rf"{resblock}\.mlp\.c_proj\.(weight|bias)", rf"{clip}.encoder.layers.\1.mlp.fc2.\2"),
        # UPM experts (LLaMA blocks)
        *[Rule(rf"{expert}\.attention\.w{a}\.weight", rf"projector.experts.\1.\2.{a}.weight") for a in "qkvo"],
        Rule(rf"{expert}\.feed_forward\.w1\.weight", r"projector.experts.\1.\2.gate.weight"),
        Rule(rf"{expert}\.feed_forward\.w2\.weight", r"projector.experts.\1.\2.down.weight"),
        Rule(rf"{expert}\.feed_forward\.w3\.weight", r"projector.experts.\1.\2.up.weight"),
        Rule(rf"{expert}\.(attention_norm|ffn_norm)\.weight", r"projector.experts.\1.\2.\3.weight"),
        # per-modality heads and tokenizers
        Rule(rf"resample_tokens\.{mod}", lambda x: [(f"projector.heads.{m(x.group(1))}.queries", _keep)]),
        Rule(rf"start_tag\.{mod}", lambda x: [(f"projector.heads.{m(x.group(1))}.start_tag", _keep)]),
        Rule(rf"end_tag\.{mod}", lambda x: [(f"projector.heads.{m(x.group(1))}.end_tag", _keep)]),
        Rule(
            rf"clip_proj1\.{mod}\.([01])\.(weight|bias)",
            lambda x: [(f"projector.heads.{m(x.group(1))}.proj_in.{x.group(2)}.{x.group(3)}", _keep)],
        ),
        Rule(
            rf"clip_proj2\.{mod}\.([01])\.(weight|bias)",
            lambda x: [(f"projector.heads.{m(x.group(1))}.proj_out.{x.group(2)}.{x.group(3)}", _keep)],
        ),
        Rule(
            rf"routers\.{mod}\.fc(1|2)\.(weight|bias)",
            lambda x: [
                (f"projector.heads.{m(x.group(1))}.router.mlp.{0 if x.group(2) == '1' else 2}.{x.group(3)}", _keep)
            ],
        ),
        Rule(rf"positional_embedding\.{mod}", table),
        Rule(r"conv1\.audio\.(weight|bias)", r"mm_tokenizers.audio.conv.\1"),
        Rule(r"conv1\.imu\.weight", "mm_tokenizers.imu.conv.weight"),
        Rule(r"conv1\.fmri\.(weight|bias)", r"mm_tokenizers.fmri.proj.\1"),
        Rule(r"conv1\.point\.conv1\.weight", "mm_tokenizers.point.proj.weight", lambda t: t.flatten(1)),
        Rule(r"conv1\.point\.conv1\.bias", "mm_tokenizers.point.proj.bias"),
    ]


def plan(source: OfficialCheckpoint, config) -> dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """target name -> (official key, transform) for every target tensor; errors name unknown and missing keys."""
    rules, targets, unknown = _rules(config), {}, []
    for name in source.names:
        if IGNORED.match(name):
            continue
        for rule in rules:
            match = rule.regex.match(name)
            if match is None:
                continue
            if callable(rule.target):
                pairs = rule.target(match)
            else:
                pairs = [(match.expand(rule.target), rule.transform or _keep)]
            for target, transform in pairs:
                if target in targets:
                    raise ConversionError(
                        f"'{OFFICIAL_PREFIX}{name}' and '{OFFICIAL_PREFIX}{targets[target][0]}' both map to {target}"
                    )
                targets[target] = (name, transform)
            break
        else:
            unknown.append(OFFICIAL_PREFIX + name)
    if unknown:
        raise ConversionError(f"{source.path}: {len(unknown)} key(s) this converter does not know: {unknown[:10]}")
    return targets


def expected_tensors(config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the converted model with its shape (built on the meta device: no memory)."""
    from onellm.modeling import OneLLMForConditionalGeneration

    with torch.device("meta"):
        model = OneLLMForConditionalGeneration(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def converted_tensors(source: OfficialCheckpoint, config) -> Iterator[tuple[str, torch.Tensor]]:
    """``(target name, tensor)`` in the model's order, one at a time; errors name missing keys and bad shapes."""
    targets, expected = plan(source, config), expected_tensors(config)
    missing = [name for name in expected if name not in targets]
    extra = [f"{OFFICIAL_PREFIX}{targets[name][0]} -> {name}" for name in targets if name not in expected]
    if missing or extra:
        raise ConversionError(
            f"{source.path}: the checkpoint does not fill this model. "
            + (f"Nothing in it for: {missing[:10]}. " if missing else "")
            + (f"No place for: {extra[:10]}." if extra else "")
        )
    for name, shape in expected.items():
        key, transform = targets[name]
        tensor = transform(source.tensor(key)).contiguous()
        if tuple(tensor.shape) != shape:
            raise ConversionError(
                f"'{OFFICIAL_PREFIX}{key}' gives {name} the shape {tuple(tensor.shape)}; {shape} expected"
            )
        yield name, tensor


# --- writing ------------------------------------------------------------------------------------------------------
def write_shards(tensors: Iterator[tuple[str, torch.Tensor]], out: Path, max_shard_bytes: int) -> dict[str, Any]:
    """safetensors shards of at most ``max_shard_bytes`` (one tensor may exceed it) + the index transformers reads."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes, weight_map, total, written = [0], {}, 0, []

    def flush() -> None:
        number = len(written) + 1
        path = out / f"model-{number:05d}.safetensors.part"
        save_file(shards[-1], str(path), metadata={"format": "pt"})
        written.append(path)
        shards[-1], sizes[-1] = {}, 0

    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + size > max_shard_bytes:
            flush()
        shards[-1][name] = tensor
        sizes[-1] += size
        total += size
        weight_map[name] = len(written) + 1
    if shards[-1]:
        flush()
    count = len(written)
    names = {}
    for number, path in enumerate(written, start=1):
        final = out / (f"model-{number:05d}-of-{count:05d}.safetensors" if count > 1 else "model.safetensors")
        path.rename(final)
        names[number] = final.name
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return {"tensors": len(weight_map), "bytes": total, "shards": count}


def load_tokenizer(path: str | Path, vocab: int):
    """The LLM tokenizer: LLaMA's sentencepiece ``tokenizer.model`` or a transformers tokenizer folder. Its size
    must equal the checkpoint's vocabulary."""
    from transformers import AutoTokenizer, LlamaTokenizer

    path = Path(path)
    if path.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    elif path.is_file():
        tokenizer = LlamaTokenizer(vocab_file=str(path), legacy=False, add_bos_token=False, add_eos_token=False)
    else:
        raise ConversionError(f"tokenizer {path}: not a tokenizer.model file or a tokenizer folder")
    if len(tokenizer) != vocab:
        raise ConversionError(f"tokenizer {path} has {len(tokenizer)} tokens; the checkpoint's vocabulary has {vocab}")
    if tokenizer.pad_token is None:  # LLaMA-2 has none (pad_id -1); batches pad with <unk>, as LLaVA/Vicuna do
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def convert_official(
    checkpoint: str | Path,
    params: str | Path | dict,
    out: str | Path,
    tokenizer: str | Path | None = None,
    clip_head_width: int = CLIP_HEAD_WIDTH,
    expert_heads: int = EXPERT_HEADS,
    max_shard_bytes: int = 4 << 30,
) -> dict[str, Any]:
    """Convert; returns a summary (tensors, bytes, shards, modalities). ``out`` must not exist or be empty."""
    from transformers import GenerationConfig

    from onellm.presets import add_marker_tokens
    from onellm.processing import OneLLMProcessor

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"{out}: the output folder exists and is not empty")
    if not isinstance(params, dict):
        try:
            params = json.loads(Path(params).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConversionError(f"params {params}: not a readable JSON file ({exc})") from None
    source = OfficialCheckpoint(checkpoint)
    config = official_config(source, params, clip_head_width, expert_heads)
    vocab = source.shape("tok_embeddings.weight")[0]
    if tokenizer is None:
        beside = source.path.parent / "tokenizer.model"
        if not beside.is_file():
            raise ConversionError(
                f"no tokenizer: give --tokenizer (LLaMA-2's tokenizer.model), or put it beside {source.path.name}"
            )
        tokenizer = beside
    tok = load_tokenizer(tokenizer, vocab)
    ids = add_marker_tokens(tok, config.modalities)
    if ids != config.modality_token_ids:
        raise ConversionError(
            f"the tokenizer gave the modality markers ids {ids}; {config.modality_token_ids} expected"
        )
    dtype = source.tensor("tok_embeddings.weight").dtype
    config.dtype = dtype
    config.architectures = ["OneLLMForConditionalGeneration"]
    out.mkdir(parents=True, exist_ok=True)
    summary = write_shards(converted_tensors(source, config), out, max_shard_bytes)
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id).save_pretrained(out)
    processor = OneLLMProcessor(
        tok,
        modality_configs=config.modality_configs,
        num_queries=config.projector_config["num_queries"],
        chat_template=OFFICIAL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return {**summary, "modalities": config.modalities, "dtype": str(dtype).removeprefix("torch.")}


__all__ = ["ConversionError", "OfficialCheckpoint", "convert_official", "official_config"]
