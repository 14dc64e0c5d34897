"""`OneLLMConfig`: the one serialisable description of a onellm model (the HF / vLLM boundary).

Sub-configs: ``text_config`` (any causal-LM config), ``vision_config`` (CLIP / SigLIP / DINOv2 vision config),
``projector_config`` (UPM shape), ``vision_feature_layers`` (the encoder blocks whose outputs the UPM reads,
concatenated along channels; ``[-1]``: the last), ``modality_configs`` (per-modality options; its keys are the enabled
modalities), ``modality_token_ids`` (the tokenizer id of each modality's placeholder token).
Builders unpack it into keyword arguments; modules never read it.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING

from onellm.modalities import get_modality
from onellm.projectors.routers import router_modes, router_norms
from onellm.projectors.upm import placeholder_count

PROJECTOR_DEFAULTS = {
    "num_experts": 3,
    "depth": 8,
    "num_queries": 30,
    "num_heads": 8,
    "mlp_ratio": 4.0,
    "router": "pooled",
    "expert": "transformer",
    "width": None,  # None: the encoder's width (OneLLM: 1024 for CLIP ViT-L/14)
    # "standardize": running feature standardisation, no LayerNorm (keeps outputs input-dependent, see
    # projectors/upm.py); "layernorm": a LayerNorm after each projection, the official OneLLM layout.
    "norm": "standardize",
    # Where the experts' N input tokens come from: "learned" queries (OneLLM) or the learned queries plus the input
    # tokens pooled to N regions ("pooled", for per-token "mlp" experts); see projectors/queries.py.
    "queries": "learned",
    # None: the soft tokens leave the out-projection unnormalised. A number: each soft token is RMS-normalised and
    # scaled by a learned per-channel gain initialised to this value (presets pass the LLM's text-embedding RMS), so
    # soft tokens enter the LLM at the scale of words however the projector's weights grow (see projectors/upm.py).
    "out_rms": None,
    # Feed-forward width of each expert block (None: width * mlp_ratio); router MLP width (None: the projector width);
    # how router logits become weights ("softmax", or "sigmoid" divided by the sum as in the official OneLLM code).
    "expert_hidden": None,
    "router_hidden": None,
    "router_norm": "softmax",
    # What closes each input's soft tokens: a "learned" end tag per modality (OneLLM), or "lexical": a mixture of the
    # LLM's word embeddings chosen from the input (projectors/upm.py, LexicalTag; train it with train.lexical_loss;
    # the small curriculum's choice, configs/small/align_image.yaml).
    "end_tag": "learned",
    # "add": each soft token also carries a mixture of the LLM's word embeddings chosen from its own query output (its
    # region, under queries "pooled"); trained by the same word loss (projectors/upm.py, RegionWords).
    "region_words": "off",
    # What opens them: a "learned" start tag per modality (OneLLM), or "lexical" (with end_tag "lexical"): a second
    # word-embedding mixture, so the two tags name two words of the input, each sharply (projectors/upm.py,
    # ModalityHead.start; the word loss names them as a set, onellm/train/lexical.py).
    "start_tag": "learned",
    # Further word slots after the end tag (with start_tag and end_tag "lexical"): each input then names 2 + this many
    # of its words; every input occupies N + 2 + extra_slots positions (projectors/upm.py, placeholder_count).
    "extra_slots": 0,
    # What the word slots (lexical tags) read: the "mean" of the query outputs, or "mean_max": their mean plus their
    # channel-wise maximum, so an object that fills one region in sixteen still shows (projectors/upm.py,
    # ModalityHead.tags; BENCHMARKS.md, "What the LLM reads from words": measured, not the small curriculum's default).
    "slot_summary": "mean",
}


class OneLLMConfig(PreTrainedConfig):
    model_type = "onellm"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projector_config: dict | None = None
    modality_configs: dict | None = None
    modality_token_ids: dict | None = None
    vision_feature_layers: list | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.text_config, dict):
            self.text_config = CONFIG_MAPPING[self.text_config.get("model_type", "llama")](**self.text_config)
        elif self.text_config is None:
            self.text_config = CONFIG_MAPPING["llama"]()
        if isinstance(self.vision_config, dict):
            kind = self.vision_config.get("model_type", "clip_vision_model")
            self.vision_config = CONFIG_MAPPING[kind](**self.vision_config)
        elif self.vision_config is None:
            self.vision_config = CONFIG_MAPPING["clip_vision_model"]()
        self.projector_config = {**PROJECTOR_DEFAULTS, **(self.projector_config or {})}
        unknown = sorted(set(self.projector_config) - set(PROJECTOR_DEFAULTS))
        if unknown:
            raise ValueError(f"projector_config has unknown key(s) {unknown}; known: {sorted(PROJECTOR_DEFAULTS)}")
        if self.projector_config["router"] not in router_modes():
            raise ValueError(
                f"projector_config.router={self.projector_config['router']!r}; expected one of {router_modes()}"
            )
        if self.projector_config["router_norm"] not in router_norms():
            raise ValueError(
                f"projector_config.router_norm={self.projector_config['router_norm']!r}; expected one of {router_norms()}"
            )
        self.modality_configs = dict(self.modality_configs or {"image": {}})
        for name, options in self.modality_configs.items():
            get_modality(name).options(**options)  # unknown modality / option -> error naming it
        self.modality_token_ids = dict(self.modality_token_ids or {})
        self.vision_feature_layers = [int(k) for k in (self.vision_feature_layers or [-1])]
        # The LLM decides whether its input and output embeddings are tied (SmolLM2 ties them).
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        super().__post_init__(**kwargs)

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_configs)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_placeholder_tokens(self) -> int:
        """Positions each modality input occupies in the LLM sequence (the HF model and the vLLM plugin read this)."""
        return placeholder_count(self.projector_config["num_queries"], self.projector_config["extra_slots"])

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    def modality_options(self, name: str) -> dict:
        """The full options of modality ``name`` (its defaults merged with this model's overrides)."""
        if name not in self.modality_configs:
            raise KeyError(f"this model has no modality {name!r}; it has: {self.modalities}")
        return get_modality(name).options(**self.modality_configs[name])


__all__ = ["OneLLMConfig"]
