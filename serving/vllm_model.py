"""onellm inside vLLM: the model class, its processing info, dummy inputs, data parser and multimodal processor.

Data flow for one request (vLLM 0.32's multimodal API):

    prompt ids with ONE marker per input (``<image>``, ``<audio>``, ...)       the renderer tokenised the chat
    multi_modal_data {modality: [item, ...]}                                  raw media or :class:`Preprocessed`
      -> OneLLMDataParser            every modality of the checkpoint (custom ones included) -> OneLLMItems
      -> OneLLMMultiModalProcessor   item -> ``OneLLMProcessor.preprocess`` -> ``{m}_values [n, *input_shape]``
                                     each marker -> placeholder_count(N) copies of itself (PromptReplacement)
      -> OneLLMForConditionalGeneration.embed_multimodal   tokenizer -> frozen encoder -> UPM -> ``[n, N+2, D]``
      -> vLLM scatters the embeddings into the placeholder positions; vLLM's own Llama runs the LLM.

Raw media is preprocessed here, by the checkpoint's own processor (the stock vLLM server path). ``onellm serve``
preprocesses each input once while validating the request and hands the tensor over as :class:`Preprocessed`,
so nothing is decoded twice.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsLoRA,
    SupportsMultiModal,
    SupportsPP,
)
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.media import MediaWithBytes
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser, ProcessorBatchItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors

import onellm  # noqa: F401  (registers the config/processor with the transformers Auto classes)
from onellm.configuration import OneLLMConfig
from onellm.modalities import MediaError, get_modality
from onellm.modeling import OneLLMForConditionalGeneration as HFOneLLM
from onellm.modeling import build_modality_parts, mask_placeholder_logits
from onellm.processing import OneLLMProcessor
from onellm.serving.checkpoint_names import CheckpointKeyError, CheckpointNames


@dataclass(frozen=True)
class Preprocessed:
    """An input already run through ``OneLLMProcessor.preprocess``: a tensor of the modality's input shape.

    ``onellm serve`` validates and preprocesses every input once, then passes this to vLLM, so the plugin's
    processor does not decode the media a second time.
    """

    tensor: torch.Tensor


def field_name(modality: str) -> str:
    """The keyword under which a modality's preprocessed batch ``[n, *input_shape]`` reaches the model."""
    return f"{modality}_values"


# --- parsing ----------------------------------------------------------------------------------------
class OneLLMItems(ProcessorBatchItems[Any]):
    """The inputs of one modality, kept as given (raw media or :class:`Preprocessed`) until preprocessing."""

    def get(self, index: int) -> Any:
        return self.data[index]  # keep MediaWithBytes: its original bytes are what our processor decodes

    def get_item_for_hash(self, index: int) -> object:
        item = self.data[index]
        return item.tensor if isinstance(item, Preprocessed) else item

    def get_processor_data(self) -> Mapping[str, object]:
        return {self.modality: list(self.data)}


class OneLLMDataParser(MultiModalDataParser):
    """Accepts every modality of the checkpoint, including the ones vLLM has no parser for.

    Items stay as given: audio tuples ``(waveform, sample_rate)`` are resampled by our own preprocessing, not by
    vLLM's resampler (which needs torchaudio by default), so both serving paths compute the same features.
    """

    def __init__(self, modalities: Sequence[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.modalities = list(modalities)

    def _parse_items(self, modality: str, data: Any) -> OneLLMItems | None:
        if data is None:
            return None
        single = isinstance(data, (Preprocessed, MediaWithBytes, Image.Image, bytes, str, dict, tuple))
        if isinstance(data, (np.ndarray, torch.Tensor)):
            raise ValueError(
                f"{modality}: pass a list of inputs (one array per input), not a bare array; "
                f"a batch dimension is ambiguous for raw media"
            )
        return OneLLMItems(list([data] if single else data), modality)

    def _get_subparsers(self) -> Mapping[str, Any]:
        return {m: (lambda data, m=m: self._parse_items(m, data)) for m in self.modalities}


# --- processing info, dummy inputs, processor -----------------------------------------------------
class OneLLMProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> OneLLMConfig:
        return self.ctx.get_hf_config(OneLLMConfig)

    def get_hf_processor(self, **kwargs: object) -> OneLLMProcessor:
        return self.ctx.get_hf_processor(OneLLMProcessor, **kwargs)

    def get_data_parser(self) -> MultiModalDataParser:
        return OneLLMDataParser(
            self.get_hf_config().modalities,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {m: None for m in self.get_hf_config().modalities}

    @property
    def num_placeholder_tokens(self) -> int:
        return self.get_hf_config().num_placeholder_tokens

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # Every input of every modality occupies the same N+2 positions (the UPM's queries + start/end tags; + the
        # projector's extra word slots).
        return {m: self.num_placeholder_tokens for m in self.get_hf_config().modalities}


class OneLLMDummyInputsBuilder(BaseDummyInputsBuilder[OneLLMProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return "".join(get_modality(m).marker * count for m, count in mm_counts.items())

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        processor = self.info.get_hf_processor()
        return {m: [Preprocessed(processor.dummy_input(m))] * count for m, count in mm_counts.items() if count}


def to_source(modality: str, item: Any) -> tuple[Any, dict | None]:
    """One raw multimodal item as vLLM hands it over -> ``(source, extras)`` for ``OneLLMProcessor.preprocess``.

    The original file bytes are preferred (vLLM's image/video loaders keep them), so an input decodes exactly as
    it does in the HF reference path; a bare PIL image is re-encoded losslessly (PNG) for the same reason.
    """
    if isinstance(item, MediaWithBytes):
        return item.original_bytes, None
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return buffer.getvalue(), None
    if isinstance(item, tuple) and len(item) == 2:
        first, second = item
        if isinstance(second, dict):  # (frames [T, H, W, 3], metadata) from vLLM's video loader
            return np.asarray(first), None
        return np.asarray(first, dtype=np.float32), {"sample_rate": float(second)}  # (waveform, rate): audio loader
    if isinstance(item, dict):
        if "source" not in item:
            raise ValueError(f"{modality}: a dict input needs a 'source' key (path, bytes or array)")
        return item["source"], {k: v for k, v in item.items() if k != "source"}
    return item, None


class OneLLMMultiModalProcessor(BaseMultiModalProcessor[OneLLMProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """``{modality: [item, ...]}`` (no text: vLLM has tokenised the prompt) -> ``{m}_values [n, *input_shape]``."""
        processor = self.info.get_hf_processor()
        out = {}
        for modality, items in hf_data.items():
            shape = get_modality(modality).input_shape(**processor.options(modality))
            tensors = []
            for index, item in enumerate(items):
                if isinstance(item, Preprocessed):
                    tensor = item.tensor
                    if tuple(tensor.shape) != shape:
                        raise ValueError(
                            f"{modality} input {index}: preprocessed tensor has shape {tuple(tensor.shape)}, "
                            f"this checkpoint expects {shape}"
                        )
                else:
                    source, extras = to_source(modality, item)
                    try:
                        tensor = processor.preprocess(modality, source, extras)
                    except MediaError:
                        raise
                    except (TypeError, KeyError) as exc:
                        raise ValueError(f"{modality} input {index}: unusable input ({exc})") from None
                tensors.append(tensor.float())
            out[field_name(modality)] = torch.stack(tensors)
        return BatchFeature(out)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {field_name(m): MultiModalFieldConfig.batched(m) for m in self.info.get_hf_config().modalities}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        count = self.info.num_placeholder_tokens
        return [
            PromptReplacement(modality=m, target=[token_id], replacement=[token_id] * count)
            for m, token_id in config.modality_token_ids.items()
            if m in config.modality_configs
        ]


# --- the model -------------------------------------------------------------------------------------
def causal_lm_architecture(text_config: Any) -> list[str]:
    """The vLLM architecture of the LLM: the text config's own, else the transformers class for its model_type."""
    if getattr(text_config, "architectures", None):
        return list(text_config.architectures)
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_config.model_type)
    if name is None:
        raise ValueError(f"text_config.model_type {text_config.model_type!r} has no causal-LM class in transformers")
    return [name]


@MULTIMODAL_REGISTRY.register_processor(
    OneLLMMultiModalProcessor, info=OneLLMProcessingInfo, dummy_inputs=OneLLMDummyInputsBuilder
)
class OneLLMForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsLoRA, SupportsPP):
    """vLLM model for onellm checkpoints: our encoder/tokenizers/UPM modules + vLLM's own causal LM.

    Weight names are the checkpoint's (``encoder.``, ``mm_tokenizers.``, ``projector.``, ``language_model.``),
    mapped for the encoder as transformers maps them (see :meth:`load_weights`); the LLM's ``language_model.``
    prefix is stripped by the loader when it hands the weights to vLLM's Llama.
    """

    # Llama's fused projections (LoRA needs them); replaced by the inner LLM's own mapping in __init__.
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    # LoRA adapters trained on the bare LLM (``base_model.model.model.layers...``) land on the inner LLM too;
    # adapters of the whole onellm model (``...language_model.model.layers...``) already match.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
    )

    # The modality path (tokenizer -> encoder -> pooling -> UPM) is the HF model's code, borrowed unchanged so
    # both engines compute the same embeddings by construction. They read self.mm_tokenizers, self.encoder,
    # self.projector and self.config.
    encode = HFOneLLM.encode
    embed_modality = HFOneLLM.embed_modality

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return get_modality(modality).marker

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: OneLLMConfig = vllm_config.model_config.hf_config
        self.config = config
        self.configure_mm_token_handling(
            vocab_size=config.text_config.vocab_size, mm_token_ids=list(config.modality_token_ids.values())
        )
        with self._mark_tower_model(vllm_config, set(config.modalities)):
            self.encoder, self.mm_tokenizers, self.projector = build_modality_parts(config)
            # transformers builds the encoder in its config's dtype (float32 in our checkpoints) whatever torch's
            # default is; vLLM runs the model in model_config.dtype (bfloat16 for a float32 checkpoint on the CPU
            # with --dtype auto), as the tokenizers and the UPM already are.
            self.encoder.to(dtype=vllm_config.model_config.dtype)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=causal_lm_architecture(config.text_config),
            )
        self.packed_modules_mapping = dict(getattr(self.language_model, "packed_modules_mapping", {}))
        # The LLM's weights are rounded to the serving dtype as they load (what each parameter's copy does anyway),
        # so a float32 checkpoint served in bfloat16 loads without one warning per weight; a quantized LLM's
        # loader receives them as stored.
        self.llm_weights_dtype = vllm_config.model_config.dtype if vllm_config.quant_config is None else None
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def word_embeddings(self) -> torch.Tensor:
        """The LLM's input embeddings of its vocabulary ``[V, D]`` (vLLM pads the table's rows; the HF model's
        :meth:`word_embeddings` in vLLM's layout)."""
        return self.language_model.model.embed_tokens.weight[: self.config.text_config.vocab_size]

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """vLLM calls this once per modality group: ``{m}_values [n, *input_shape]`` -> ``[n, N+2, D]``."""
        outputs: list[torch.Tensor] = []
        for modality in self.config.modalities:
            values = kwargs.get(field_name(modality))
            if values is None:
                continue
            if isinstance(values, (list, tuple)):
                values = torch.stack(list(values))
            outputs.extend(self.embed_modality(modality, values))
        return outputs

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)
        if logits is None or not self.config.modality_token_ids:
            return logits
        return mask_placeholder_logits(logits, list(self.config.modality_token_ids.values()))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint weights -> this model. The encoder is transformers' module: its weights take the names
        transformers maps them to when it loads (:class:`CheckpointNames`); the LLM's go to vLLM's loader under
        their stored names, in the serving dtype. Any weight that cannot be placed raises naming its checkpoint key."""
        names = CheckpointNames(self, passthrough="language_model")  # modality weights come in their modules' dtype
        current: list[str] = []  # the checkpoint key vLLM's loaders are working on (they consume lazily)
        dtype = self.llm_weights_dtype

        def renamed() -> Iterator[tuple[str, torch.Tensor]]:
            for key, name, tensor in names.convert(weights):
                current[:] = [key]
                if dtype is not None and name.startswith(names.passthrough) and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                yield name, tensor

        try:
            return AutoWeightsLoader(self).load_weights(renamed(), mapper=self.hf_to_vllm_mapper)
        except CheckpointKeyError:
            raise
        except (KeyError, ValueError, RuntimeError, AssertionError) as exc:
            if not current:
                raise
            raise CheckpointKeyError(current[0], f"vLLM cannot load it into {type(self).__name__}: {exc!r}") from exc

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(
            language_model="language_model", connector="projector", tower_model=["encoder", "mm_tokenizers"]
        )
