"""The auxiliary word loss of the lexical end tag and of region words (``train.lexical_loss``; projectors/upm.py,
``LexicalTag``, ``RegionWords``).

A lexical end tag scores every word of the LLM's vocabulary for its input (``[n_m, V]`` logits per modality); region
words score them for each of its N soft tokens (``[n_m, N, V]``). This loss teaches them which words: for each input,
the mean over the content words of its row's target text of ``-log P(word)``, where P is the tag's softmax, and for
region words the probability that at least one region names the word (noisy-OR: ``1 - prod_r (1 - p_r)``; a
multiple-instance loss, since the text does not say which region holds what). So the tags learn to name what the
caption or answer says about that input (its colours, shapes, places), and the frozen LLM reads those words where it
reads text.

    hooks on each head's word tags    -> word logits [n_m, R, V] per (modality, tag), in input order (one forward)
    input_ids == marker(m)            -> the row of each input   (each input holds placeholder_count(N) markers)
    labels[row] & content-word mask   -> targets                  [n_m, V] (bool)

Content words are whole-word tokens (the tokenizer's word-start marker, then three or more letters) other than
function words and "yes": a yes/no answer says nothing about the input by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from onellm.modeling import IGNORE_INDEX

# Word-start markers of byte-level BPE (GPT-2, SmolLM2: "Ġ") and SentencePiece (LLaMA: "▁") vocabularies.
WORD_STARTS = ("\u0120", "\u2581")
STOP_WORDS = frozenset(
    "the and with that this these those are was were for from its has have had there their what which who whom how "
    "why when where not but all any can does did into onto than then yes one also been being very".split()
)


def content_word_mask(tokenizer) -> torch.Tensor:
    """``[len(tokenizer)]`` bool: the token ids that are whole content words (see the module docstring)."""
    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    for token, index in tokenizer.get_vocab().items():
        word = token[1:]
        if token[:1] in WORD_STARTS and len(word) >= 3 and word.isascii() and word.isalpha():
            mask[index] = word.lower() not in STOP_WORDS
    return mask


def word_tags(core: nn.Module) -> dict[tuple[str, int], nn.Module]:
    """``{(modality, i): LexicalTag}``: the word tags (end tag, region words) of the model's projector heads."""
    return {(m, i): tag for m, head in core.projector.heads.items() for i, tag in enumerate(head.word_tags())}


@contextlib.contextmanager
def captured_word_logits(core: nn.Module) -> Iterator[dict[tuple[str, int], list[torch.Tensor]]]:
    """Inside: every forward of a word tag appends its word logits ``[n, V]`` or ``[n, N, V]`` to
    ``captured[(modality, i)]`` (see :func:`word_tags`)."""
    captured: dict[tuple[str, int], list[torch.Tensor]] = {}
    handles = [
        tag.register_forward_hook(lambda _module, _args, out, key=key: captured.setdefault(key, []).append(out[1]))
        for key, tag in word_tags(core).items()
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def word_targets(
    input_ids: torch.Tensor, labels: torch.Tensor, marker: int, per_input: int, words: torch.Tensor
) -> torch.Tensor:
    """``[n, V]`` bool: the content words of the target text of the row of each input of one modality.

    ``input_ids``/``labels`` ``[B, T]``; ``marker``: the modality's placeholder id; ``per_input``: placeholders per
    input; ``words``: :func:`content_word_mask` (``[V']``, padded or cut to the logits' V by the caller)."""
    counts = (input_ids == marker).sum(dim=1) // per_input
    rows = torch.repeat_interleave(torch.arange(input_ids.shape[0], device=input_ids.device), counts)
    row_labels = labels[rows]
    present = torch.zeros(rows.shape[0], words.shape[0], device=labels.device)
    present.scatter_add_(1, row_labels.clamp(min=0), (row_labels != IGNORE_INDEX).float())
    return (present > 0) & words.to(labels.device)


def lexical_loss(
    captured: dict[tuple[str, int], list[torch.Tensor]],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    markers: dict[str, int],
    per_input: int,
    words: torch.Tensor,
) -> torch.Tensor | None:
    """Mean over the inputs that have content words (and over tags) of the mean ``-log P(word)`` over them; None
    when none has."""
    per_row = []
    for (modality, _), chunks in captured.items():
        logits = torch.cat(chunks).float()  # [n, V] or [n, N, V]
        vocab = logits.shape[-1]
        targets = word_targets(input_ids, labels, markers[modality], per_input, _fit(words, vocab))
        if targets.shape[0] != logits.shape[0]:
            raise RuntimeError(f"{modality}: {logits.shape[0]} lexical tags for {targets.shape[0]} inputs in the batch")
        counts = targets.sum(dim=1)
        keep = counts > 0
        if bool(keep.any()):
            log_p = _log_any(logits.log_softmax(dim=-1))
            per_row.append(-(log_p * targets).sum(dim=1)[keep] / counts[keep])
    return torch.cat(per_row).mean() if per_row else None


def _log_any(log_p: torch.Tensor) -> torch.Tensor:
    """``log p [n, V]`` as is; ``[n, N, V]`` -> ``log(1 - prod_r (1 - p_r))`` ``[n, V]`` (noisy-OR over the N)."""
    if log_p.dim() == 2:
        return log_p
    log_none = torch.log1p(-(log_p.exp().clamp(max=1 - 1e-6))).sum(dim=1)  # log prod_r (1 - p_r)
    return torch.log((-torch.expm1(log_none)).clamp(min=1e-30))


def _fit(words: torch.Tensor, size: int) -> torch.Tensor:
    if words.shape[0] >= size:
        return words[:size]
    return torch.cat([words, words.new_zeros(size - words.shape[0])])


__all__ = ["captured_word_logits", "content_word_mask", "lexical_loss", "word_tags", "word_targets"]
