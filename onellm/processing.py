"""`OneLLMProcessor`: per-modality preprocessing + chat template + placeholder expansion.

The processor owns token counting: a prompt holds one marker token (``<image>``, ``<audio>``, ...) per input;
:meth:`OneLLMProcessor.__call__` expands each to ``placeholder_count(num_queries)`` copies, the positions the
model later fills with that input's projector output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin

from onellm.modalities import get_modality, modality_names
from onellm.modalities.base import Source
from onellm.projectors.upm import placeholder_count

# Chat template shared by every preset (ChatML, as SmolLM2 uses). Content may be a string, or a list of parts
# in the HF multimodal format: {"type": "text", "text": ...} or {"type": "<modality>"} -> the modality's marker.
# A message's inputs come first, in their order, each marker on its own line, then its text parts: the layout every
# stage trains on (``<image>\n{question}``), whatever order a client sends the parts in (as llava-hf's templates
# and OneLLM's own prompt do). Rendered in the client's order, a question sent before its image (the order of
# OpenAI's own examples) reached a trained model as ``{question}<image>\n``, which no stage trains on: image QA of
# the demo's final checkpoint fell from 0.50 to 0.14, under the input-blind 0.28 (BENCHMARKS.md, "Part order").
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] if part['type'] != 'text' %}{{ '<' + part['type'] + '>\\n' }}"
    "{% endfor %}{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class OneLLMProcessor(ProcessorMixin):
    """Turns text with modality markers + the matching media into model inputs.

    Args:
        tokenizer: the LLM's tokenizer, holding one special token per modality marker.
        modality_configs: per-modality preprocessing options (as in ``OneLLMConfig.modality_configs``).
        num_queries: the projector's query count N; each input occupies N + 2 placeholder tokens (+ extra_slots).
        extra_slots: the projector's word slots after its end tag (projector_config ``extra_slots``).
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer: Any = None,
        modality_configs: dict | None = None,
        num_queries: int = 30,
        chat_template: str | None = None,
        extra_slots: int = 0,
    ):
        self.modality_configs = dict(modality_configs or {"image": {}})
        self.num_queries = num_queries
        self.extra_slots = extra_slots
        super().__init__(tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    # --- token counting -----------------------------------------------------------------------
    @property
    def num_placeholder_tokens(self) -> int:
        return placeholder_count(self.num_queries, self.extra_slots)

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_configs)

    def token_id(self, modality: str) -> int:
        """The id of ``modality``'s marker token; an error when the tokenizer lacks it."""
        marker = get_modality(modality).marker
        token_id = self.tokenizer.convert_tokens_to_ids(marker)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no special token {marker!r} for modality {modality!r}")
        return token_id

    @property
    def modality_token_ids(self) -> dict[str, int]:
        return {m: self.token_id(m) for m in self.modalities}

    # --- preprocessing ------------------------------------------------------------------------
    def options(self, modality: str) -> dict:
        if modality not in self.modality_configs:
            raise ValueError(f"this model does not take {modality!r} inputs; it takes: {self.modalities}")
        return get_modality(modality).options(**self.modality_configs[modality])

    def preprocess(self, modality: str, source: Source, extras: dict | None = None) -> torch.Tensor:
        """One input -> its fixed-shape tensor, with this model's options for the modality."""
        return get_modality(modality).preprocess(source, extras=extras, **self.options(modality))

    def dummy_input(self, modality: str) -> torch.Tensor:
        return get_modality(modality).dummy_input(**self.options(modality))

    def expand_placeholders(self, ids: Sequence[int]) -> list[int]:
        """Replace every modality marker id by ``num_placeholder_tokens`` copies of itself."""
        markers = set(self.modality_token_ids.values())
        out: list[int] = []
        for token in ids:
            out.extend([token] * self.num_placeholder_tokens if token in markers else [token])
        return out

    def count_markers(self, ids: Sequence[int]) -> dict[str, int]:
        return {m: sum(1 for t in ids if t == tid) for m, tid in self.modality_token_ids.items()}

    def __call__(
        self,
        text: str | list[str],
        return_tensors: str = "pt",
        padding_side: str | None = None,
        **media: Sequence[Any],
    ) -> BatchFeature:
        """Tokenise ``text`` (one string or a batch) and preprocess the media passed by modality name.

        ``media[m]`` lists every input of modality m in the batch, in the order their markers appear
        (sample by sample). An item may be a path, bytes, an array, or ``{"source": ..., **extras}``.
        Returns ``input_ids``, ``attention_mask`` and ``mm_inputs`` (``{modality: [n_m, *input_shape]}``).
        """
        unknown = sorted(set(media) - set(modality_names()))
        if unknown:
            raise TypeError(f"unexpected keyword(s) {unknown}; media keywords are modality names: {modality_names()}")
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        counts = {m: sum(self.count_markers(r)[m] for r in rows) for m in self.modalities}
        for m in set(counts) | {k for k, v in media.items() if v}:
            given = len(media.get(m) or [])
            if counts.get(m, 0) != given:
                raise ValueError(
                    f"the text has {counts.get(m, 0)} {get_modality(m).marker} marker(s) but {given} {m} input(s) "
                    f"were given; put one marker where each input goes"
                )
        mm_inputs = {}
        for m, items in media.items():
            if items:
                tensors = []
                for item in items:
                    if isinstance(item, dict):
                        extras = {k: v for k, v in item.items() if k != "source"}
                        tensors.append(self.preprocess(m, item["source"], extras))
                    else:
                        tensors.append(self.preprocess(m, item))
                mm_inputs[m] = torch.stack(tensors)
        expanded = [self.expand_placeholders(r) for r in rows]
        batch = self.tokenizer.pad(
            {"input_ids": expanded}, padding=True, return_tensors=return_tensors, padding_side=padding_side
        )
        return BatchFeature(
            {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "mm_inputs": mm_inputs}
        )

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render messages to the prompt string (markers included); tokenisation is :meth:`__call__`'s job."""
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **kwargs,
        )

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)


def puts_inputs_first(processor: OneLLMProcessor) -> bool:
    """Whether ``processor``'s chat template renders a message's inputs before its text when a client sends the text
    part first, as :data:`CHAT_TEMPLATE` does and every training stage expects. Templates saved with a checkpoint
    before 2026-12-06 followed the parts' order; ``onellm serve`` warns about them."""
    modality = processor.modalities[0]
    probe = "Which input comes first?"
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": probe}, {"type": modality}]}]
    )
    return prompt.find(get_modality(modality).marker) < prompt.find(probe)
