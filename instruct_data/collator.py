"""Conversations + decoded media -> padded training batches, with the loss on assistant turns only.

One example (what :class:`onellm.instruct_data.loader.ManifestDataset` yields)::

    {"id": "synth-image-000012",
     "conversation": [{"role": "user", "content": "<image>\\nCaption it."}, {"role": "assistant", "content": "..."}],
     "media": [("image", tensor [3, H, W]), ...],     # in marker order; None where the feature cache holds it
     "keys": ["<content hash>", ...]}                 # one per input, for the frozen-feature cache

One batch (what :class:`Collator` returns)::

    input_ids       [B, T]   markers expanded to placeholder_count(N) copies each; right-padded with the pad id
    attention_mask  [B, T]
    labels          [B, T]   token ids on assistant turns (answer + end-of-turn token), -100 elsewhere
    mm_inputs       {modality: [n_m, *input_shape]}   inputs of the whole batch, sample by sample, marker order
                    (a list of n_m tensors-or-None when some inputs were not decoded: their features are cached)
    mm_keys         {modality: [n_m content keys]}
    ids             [B] record ids
    num_label_tokens  int: positions that count in the loss after the causal shift

:func:`pack` lays such a batch's samples end to end in fewer rows (``train.pack_rows``), without the padding.

Labels are built turn by turn, tokenising each chat-template segment separately: the prompt part of every turn
is exactly what the processor tokenises at inference time (``apply_chat_template(..., add_generation_prompt=True)``),
so training and serving see the same token boundaries.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from onellm.modeling import IGNORE_INDEX
from onellm.processing import OneLLMProcessor


class CollateError(ValueError):
    """An example cannot become a batch row (too long, marker/input mismatch). Names the record."""


def _turns(conversation: Sequence[Any]) -> list[dict[str, str]]:
    return [turn if isinstance(turn, dict) else turn.to_dict() for turn in conversation]


def conversation_segments(processor: OneLLMProcessor, conversation: Sequence[Any]) -> list[tuple[str, bool]]:
    """Split a rendered conversation into ``(text, is_target)`` pieces, in order.

    A target piece is one assistant answer plus the end-of-turn token (``<|im_end|>``): what the model must
    generate before stopping. Everything else (system/user turns, role headers, the newline after an end-of-turn)
    is context. Prefixes are rendered by the processor's own chat template, so any template works as long as each
    longer conversation renders to an extension of the shorter one.
    """
    turns = _turns(conversation)
    eos = processor.tokenizer.eos_token or ""
    pieces: list[tuple[str, bool]] = []
    done = ""  # text already assigned to pieces
    for index, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        prompt = processor.apply_chat_template(turns[:index], add_generation_prompt=True)
        full = processor.apply_chat_template(turns[: index + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise CollateError(
                "the chat template does not render conversations prefix by prefix; labels cannot be assigned to turns"
            )
        answer = full[len(prompt) :]
        cut = answer.find(eos) + len(eos) if eos and eos in answer else len(answer)
        pieces.append((prompt[len(done) :], False))
        pieces.append((answer[:cut], True))
        done = prompt + answer[:cut]
    final = processor.apply_chat_template(turns, add_generation_prompt=False)
    if final[len(done) :]:
        pieces.append((final[len(done) :], False))
    return [(text, target) for text, target in pieces if text]


def encode_conversation(processor: OneLLMProcessor, conversation: Sequence[Any]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one conversation, markers expanded, labels ``-100`` outside assistant targets.

    Each marker becomes ``processor.num_placeholder_tokens`` ids via :meth:`OneLLMProcessor.expand_placeholders`
    (the shared counting function); markers only occur in user turns, whose labels are all ``-100``.
    """
    ids: list[int] = []
    labels: list[int] = []
    for text, target in conversation_segments(processor, conversation):
        piece = processor.expand_placeholders(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.extend(piece)
        labels.extend(piece if target else [IGNORE_INDEX] * len(piece))
    return ids, labels


@dataclass(frozen=True)
class SystemTurns:
    """A system turn before ``share`` of the conversations (``data.system_turns``), its text one of ``texts``.

    Manifests hold user/assistant turns only, while API clients often open with a system message. Which records get
    one, and which text, follows from ``seed`` and the record id alone, so a run is reproducible and a record reads
    the same in every epoch and every worker.
    """

    texts: tuple[str, ...]
    share: float
    seed: int = 0

    def pick(self, record_id: str) -> str | None:
        digest = hashlib.sha256(f"{self.seed}\0{record_id}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= self.share:
            return None
        return self.texts[int.from_bytes(digest[8:16], "big") % len(self.texts)]


class Collator:
    """Pads a list of examples into one batch (see the module docstring for shapes).

    Args:
        processor: tokenizer, chat template and placeholder expansion of the model being trained.
        max_length: longest allowed row in tokens (after expansion); a longer example is an error naming the record,
            never truncated (validation rejects such records up front, see ``loader.validate_manifest``).
        system_turns: a system turn before some conversations (:class:`SystemTurns`); a record the turn would push
            past ``max_length`` goes without it.
    """

    def __init__(
        self, processor: OneLLMProcessor, max_length: int | None = None, system_turns: SystemTurns | None = None
    ):
        self.processor = processor
        self.max_length = max_length
        self.system_turns = system_turns
        self.pad_id = processor.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = processor.tokenizer.eos_token_id

    def tokens(self, record_id: Any, conversation: Sequence[Any]) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of one record's row: its conversation, after its system turn if it gets one (what
        ``data.group_by_length`` sorts by)."""
        system = self.system_turns.pick(str(record_id)) if self.system_turns is not None else None
        if system is not None:
            with_system = encode_conversation(
                self.processor, [{"role": "system", "content": system}, *_turns(conversation)]
            )
            if self.max_length is None or len(with_system[0]) <= self.max_length:
                return with_system
        return encode_conversation(self.processor, conversation)

    def encode(self, example: dict[str, Any]) -> tuple[list[int], list[int]]:
        record = example.get("id", "?")
        ids, labels = self.tokens(record, example["conversation"])
        if self.max_length is not None and len(ids) > self.max_length:
            raise CollateError(f"record {record}: {len(ids)} tokens exceed max_length {self.max_length}")
        found = {m: n for m, n in self.processor.count_markers(ids).items() if n}
        expected: dict[str, int] = {}
        for modality, _ in example.get("media", []):
            expected[modality] = expected.get(modality, 0) + 1
        per_input = self.processor.num_placeholder_tokens
        if {m: n // per_input for m, n in found.items()} != expected or any(n % per_input for n in found.values()):
            raise CollateError(
                f"record {record}: placeholder tokens {found} (x{per_input} per input) do not match inputs {expected}"
            )
        return ids, labels

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows = [self.encode(example) for example in examples]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (ids, targets) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(targets)
            attention_mask[row, : len(ids)] = 1
        media: dict[str, list[torch.Tensor]] = {}
        keys: dict[str, list[str]] = {}
        for example in examples:
            example_keys = example.get("keys") or [None] * len(example.get("media", []))
            for (modality, tensor), key in zip(example.get("media", []), example_keys, strict=True):
                media.setdefault(modality, []).append(tensor)
                keys.setdefault(modality, []).append(key)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "mm_inputs": {m: _stack(tensors) for m, tensors in media.items()},
            "mm_keys": keys,
            "ids": [example.get("id") for example in examples],
            # The loss shifts labels by one: position t predicts token t+1, so the first token never counts.
            "num_label_tokens": int((labels[:, 1:] != IGNORE_INDEX).sum()),
        }


def balanced_split(lengths: Sequence[int], parts: int) -> list[int]:
    """Where to cut ``lengths`` (in order) into at most ``parts`` contiguous runs with the smallest longest run sum:
    the start index of each run after the first."""
    n = len(lengths)
    parts = max(1, min(parts, n))
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    # best[k][i]: the smallest longest run over the first i lengths cut into k runs; cut[k][i]: where its last starts
    best = [[float("inf")] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    k = min(range(1, parts + 1), key=lambda k: (best[k][n], k))
    starts, i = [], n
    while k > 1:
        i = cut[k][i]
        starts.append(i)
        k -= 1
    return sorted(starts)


def pack(batch: dict[str, Any], rows: int, pad_id: int) -> dict[str, Any]:
    """``batch`` (as :class:`Collator` builds it) with its samples laid end to end in ``rows`` rows instead of one
    padded row each: the same tokens with less padding (``train.pack_rows``).

    In order, so the placeholders still meet the inputs of ``mm_inputs`` sample by sample. Adds ``position_ids``
    (restarting at each sample, so each keeps the positions it had alone) and ``segments`` (``[R, W]``: the sample
    each position belongs to, -1 on padding), and drops ``attention_mask``: transformers reads restarting positions
    without a mask as packed sequences and lets each attend only within its own. A sample's first label is cleared
    (the position before it belongs to the previous sample; in a padded row the first token never counts either).
    ``padded_input_ids`` / ``padded_labels`` keep the one-row-per-sample view (the word loss reads rows)."""
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(dim=1).tolist()
    starts = [0, *balanced_split(lengths, rows), len(lengths)]
    groups = [range(a, b) for a, b in itertools.pairwise(starts) if b > a]
    width = max(sum(lengths[i] for i in group) for group in groups)
    shape = (len(groups), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    for row, group in enumerate(groups):
        at = 0
        for i in group:
            n = lengths[i]
            input_ids[row, at : at + n] = batch["input_ids"][i, mask[i]]
            labels[row, at : at + n] = batch["labels"][i, mask[i]]
            labels[row, at] = IGNORE_INDEX
            segments[row, at : at + n] = i
            position_ids[row, at : at + n] = torch.arange(n)
            at += n
        position_ids[row, at:] = torch.arange(width - at)  # the padding: one more sequence of its own
    packed = {k: v for k, v in batch.items() if k != "attention_mask"}
    packed.update(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        segments=segments,
        padded_input_ids=batch["input_ids"],
        padded_labels=batch["labels"],
    )
    return packed


def _stack(tensors: list[torch.Tensor | None]) -> torch.Tensor | list[torch.Tensor | None]:
    """One tensor when every input was decoded; else the list as it is (the feature cache fills the gaps)."""
    return torch.stack(tensors) if all(t is not None for t in tensors) else tensors


__all__ = ["CollateError", "Collator", "balanced_split", "conversation_segments", "encode_conversation", "pack"]
