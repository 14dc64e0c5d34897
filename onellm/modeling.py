"""`OneLLMForConditionalGeneration`: modality tokenizers -> frozen universal encoder -> UPM -> causal LM.

    mm_inputs[m]   [n_m, *input_shape]     preprocessed inputs of modality m (all samples of the batch, in order)
    tokenizer[m]   [n_m', L_m, C]          (video: n_m' = n_m * frames)
    encoder        [n_m, 1+L_m, C]         frames averaged for video (Modality.pool_encoded)
    projector      [n_m, N+2, D]           scattered into the n_m * (N+2) placeholder positions of input_ids

Parts only: nothing here decides what trains (the recipes do).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from onellm.configuration import OneLLMConfig
from onellm.encoder import UniversalEncoder
from onellm.modalities import get_modality
from onellm.projectors.upm import UniversalProjectionModule

IGNORE_INDEX = -100


def mask_placeholder_logits(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """``logits [..., V]`` with the modality placeholder tokens at the lowest value: a model never emits a marker.

    Their output rows are untrained (zero in converted checkpoints), so with small logits a marker could win a greedy
    step. The HF model and the vLLM model both apply this, so both engines sample from the same distribution."""
    ids = torch.tensor(sorted(token_ids), device=logits.device)
    return logits.index_fill(-1, ids, torch.finfo(logits.dtype).min)


def build_projector(config: OneLLMConfig, encoder: UniversalEncoder, **changes) -> UniversalProjectionModule:
    """The UPM that ``config.projector_config`` describes (with ``changes``, e.g. ``num_experts=1``), reading
    ``encoder``'s output channels."""
    return UniversalProjectionModule(
        config.modalities,
        in_width=encoder.out_width,
        out_width=config.text_config.hidden_size,
        query_grids={m: get_modality(m).query_grid(**config.modality_options(m)) for m in config.modalities},
        **{**config.projector_config, **changes},
    )


def build_modality_parts(config: OneLLMConfig) -> tuple[UniversalEncoder, nn.ModuleDict, UniversalProjectionModule]:
    """The encoder, the modality tokenizers and the UPM described by ``config`` (the HF and vLLM models share it)."""
    encoder = UniversalEncoder(AutoModel.from_config(config.vision_config), config.vision_feature_layers)
    width, patch = encoder.width, encoder.patch_size
    tokenizers = nn.ModuleDict(
        {m: get_modality(m).build_tokenizer(width, patch, **config.modality_options(m)) for m in config.modalities}
    )
    return encoder, tokenizers, build_projector(config, encoder)


class OneLLMPreTrainedModel(PreTrainedModel):
    config_class = OneLLMConfig
    config: OneLLMConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models (LLM, vision encoder) initialise themselves; our own modules initialise in __init__.
        # Only re-initialise plain Linear/LayerNorm weights of the projector/tokenizers when asked by HF.
        if isinstance(module, nn.Linear) and not getattr(module, "_is_hf_initialized", False):
            module.reset_parameters()


class OneLLMForConditionalGeneration(OneLLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: OneLLMConfig):
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.encoder, self.mm_tokenizers, self.projector = build_modality_parts(config)
        self.post_init()
        self.generation_config = GenerationConfig.from_model_config(config.text_config)

    # --- HF plumbing --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        model = super().from_pretrained(*args, **kwargs)
        # Loaded tensors can be views into one buffer at odd offsets (safetensors); SIMD kernels then sum in a
        # different order than for the saved model (1e-7 drift), and views of a file must not outlive an
        # overwrite of that file by a later save. Own every tensor: identical logits, safe re-saves.
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                tensor.data = tensor.data.clone()
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def num_placeholder_tokens(self) -> int:
        return self.config.num_placeholder_tokens

    # --- the modality path --------------------------------------------------------------------
    def encode(self, modality: str, values: torch.Tensor) -> torch.Tensor:
        """Preprocessed inputs ``[n, *input_shape]`` -> encoder features ``[n, 1+L, C]`` (cacheable when frozen)."""
        tokenizer = self.mm_tokenizers[modality]
        encoded = self.encoder(tokenizer(values, self.encoder), getattr(tokenizer, "class_position", None))
        return get_modality(modality).pool_encoded(encoded, values.shape[0], **self.config.modality_options(modality))

    def embed_modality(
        self, modality: str, values: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inputs (or cached encoder features) -> LLM-width embeddings ``[n, N+2, D]``."""
        if modality not in self.mm_tokenizers:
            raise ValueError(f"this model does not take {modality!r} inputs; it takes: {list(self.mm_tokenizers)}")
        if features is None:
            features = self.encode(modality, values)
        return self.projector(features, modality, self.word_embeddings())

    def word_embeddings(self) -> torch.Tensor:
        """The LLM's input embeddings of its vocabulary ``[V, D]`` (what a lexical end tag mixes)."""
        return self.get_input_embeddings().weight[: self.config.text_config.vocab_size]

    def merge_modalities(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        mm_inputs: dict[str, torch.Tensor] | None,
        mm_features: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Scatter each modality's projector output into its placeholder positions ``[B, T, D]``."""
        mm_inputs, mm_features = mm_inputs or {}, mm_features or {}
        token_ids = self.config.modality_token_ids
        for modality in sorted(set(mm_inputs) | set(mm_features)):
            if modality not in token_ids:
                raise ValueError(f"config.modality_token_ids has no placeholder token for {modality!r}")
            embeds = self.embed_modality(modality, mm_inputs.get(modality), mm_features.get(modality))
            mask = input_ids == token_ids[modality]
            if int(mask.sum()) != embeds.shape[0] * embeds.shape[1]:
                raise ValueError(
                    f"{modality}: the prompt holds {int(mask.sum())} placeholder tokens but {embeds.shape[0]} input(s) "
                    f"x {embeds.shape[1]} embeddings = {embeds.shape[0] * embeds.shape[1]} were computed; "
                    f"build prompts with OneLLMProcessor so each marker expands to {embeds.shape[1]} tokens"
                )
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), embeds.to(inputs_embeds.dtype))
        for modality, token_id in token_ids.items():
            if modality not in mm_inputs and modality not in mm_features and bool((input_ids == token_id).any()):
                found = int((input_ids == token_id).sum())
                raise ValueError(f"{modality}: the prompt holds {found} placeholder tokens but 0 inputs were given")
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        mm_inputs: dict[str, torch.Tensor] | None = None,
        mm_features: dict[str, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``input_ids [B, T]`` with expanded placeholders + ``mm_inputs`` -> logits ``[B, T, V]`` (+ loss).

        ``labels`` are text targets; placeholder positions never count in the loss.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            decoding = past_key_values is not None and past_key_values.get_seq_length() > 0
            if not decoding or mm_inputs or mm_features:
                inputs_embeds = self.merge_modalities(input_ids, inputs_embeds, mm_inputs, mm_features)
            if labels is not None:
                placeholders = torch.isin(
                    input_ids, torch.tensor(list(self.config.modality_token_ids.values()), device=input_ids.device)
                )
                labels = labels.masked_fill(placeholders, IGNORE_INDEX)
        out = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if out.logits is not None and self.config.modality_token_ids:
            out.logits = mask_placeholder_logits(out.logits, list(self.config.modality_token_ids.values()))
        if labels is not None:  # the loss of the distribution the model samples from (placeholders masked)
            out.loss = self.language_model.loss_function(out.logits, labels, vocab_size=out.logits.shape[-1], **kwargs)
        return out

    def prepare_inputs_for_generation(
        self,
        *args: Any,
        mm_inputs: Any = None,
        mm_features: Any = None,
        is_first_iteration: bool = False,
        **kwargs: Any,
    ) -> dict:
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # Media are consumed by the prefill; later steps read them from the KV cache.
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["mm_inputs"] = mm_inputs
            model_inputs["mm_features"] = mm_features
        return model_inputs


__all__ = ["OneLLMForConditionalGeneration", "OneLLMPreTrainedModel"]
