"""An in-batch contrastive loss between each input's soft tokens and text about it (``train.contrastive_loss``).

BLIP-2's first stage blocks a projector's shortcut to one generic soft prompt with an image-text contrastive term;
this is that term for the UPM, with the frozen LLM's own word embeddings as the text side (no text encoder, no extra
projection): for each input of a modality in a micro-batch, the mean of its soft tokens (the N query tokens, not the
tags) against the mean input embedding of its words, cosine similarity over a temperature, InfoNCE in both
directions. The words (``train.contrastive_text``): "row", the content words of its row's target text
(lexical.word_targets); "input", the distinctive words of everything the training set says about the input (its
caption and answers: one description per image). A pair counts as a match when both rows hold the same input
(``mm_keys``: a caption and a question about one image) or have the same words, so no true pair is pushed apart.
Inputs without words take no part: "yes", "2", and any one-word answer at the start of SmolLM2's assistant turn,
which tokenizes without the word-start marker (BENCHMARKS.md, "The first token"), so with "row" mostly the captions
take part. So do modalities with fewer than two distinct texts in the micro-batch.

    hooks on each head's proj_out              -> soft tokens [n_m, N, D] per modality, in input order
    row_texts(...) or input_texts(...)         -> words [n_m, V] (bool) -> mean word embeddings [n_m, D]
    cosine / temperature, match mask           -> InfoNCE (input -> text and text -> input), mean over the two

Measured on the demo's first stage (BENCHMARKS.md, "A contrastive term in the first stage"): not a lever for its QA,
so it is off by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from onellm.train.lexical import fit_mask, said_by_input, word_targets


@contextlib.contextmanager
def captured_soft_tokens(core: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Inside: every forward of a projector head's out-projection appends its soft tokens ``[n, N, D]`` to
    ``captured[modality]``."""
    captured: dict[str, list[torch.Tensor]] = {}
    handles = [
        head.proj_out.register_forward_hook(lambda _m, _in, out, m=m: captured.setdefault(m, []).append(out))
        for m, head in core.projector.heads.items()
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def row_texts(
    captured: dict[str, list[torch.Tensor]],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    markers: dict[str, int],
    per_input: int,
    words: torch.Tensor,
    vocab: int,
) -> dict[str, torch.Tensor]:
    """``{modality: [n_m, vocab] bool}``: the content words of the target text of each input's row
    (``contrastive_text: row``)."""
    mask = fit_mask(words, vocab)
    return {m: word_targets(input_ids, labels, markers[m], per_input, mask) for m in captured}


def described_by_input(dataset, tokenizer, words: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{modality: {content key: token ids}}``: the words (``words[modality]``, a bool mask over the vocabulary) of
    every assistant turn of the records each distinct input of ``dataset`` appears in (``contrastive_text: input``:
    an image's caption and the answers about it, one description per image)."""
    keys = (dataset.input_keys(index) for index in range(len(dataset)))
    return {
        m: {key: torch.tensor(sorted(i for i in ids if i < len(words[m]) and words[m][i])) for key, ids in seen.items()}
        for m, seen in said_by_input(dataset.records, tokenizer, keys).items()
    }


def input_texts(
    captured: dict[str, list[torch.Tensor]], keys: dict[str, Sequence[str]], described: dict, vocab: int
) -> dict[str, torch.Tensor]:
    """``{modality: [n_m, vocab] bool}``: each input's description (:func:`described_by_input`); an input the
    training set does not describe (none: they come from it) gets no words and takes no part."""
    out = {}
    for m in captured:
        targets = torch.zeros(len(keys[m]), vocab, dtype=torch.bool)
        for row, key in enumerate(keys[m]):
            ids = described.get(m, {}).get(key)
            if ids is not None and len(ids):
                targets[row, ids[ids < vocab].long()] = True
        out[m] = targets
    return out


def contrastive_loss(
    captured: dict[str, list[torch.Tensor]],
    keys: dict[str, Sequence[str]],
    texts: dict[str, torch.Tensor],
    embeddings: torch.Tensor,
    temperature: float,
) -> torch.Tensor | None:
    """Mean over the modalities that take part of the symmetric InfoNCE loss (see the module docstring); None when
    none does. ``keys``: the batch's ``mm_keys`` (the identity of each input); ``texts``: each input's words
    (:func:`row_texts` or :func:`input_texts`, ``[n_m, V]`` bool); ``embeddings``: the LLM's input embeddings
    ``[V, D]`` (frozen)."""
    losses = []
    for modality, chunks in captured.items():
        tokens = torch.cat(chunks).float()  # [n, N, D]
        targets = texts[modality].to(tokens.device)
        if targets.shape[0] != tokens.shape[0]:
            raise RuntimeError(f"{modality}: {tokens.shape[0]} soft-token sets for {targets.shape[0]} inputs")
        keep = targets.any(dim=1)
        if int(keep.sum()) < 2:
            continue
        targets = targets[keep].float()
        same_text = (targets.unsqueeze(1) == targets.unsqueeze(0)).all(dim=-1)
        if bool(same_text.all()):
            continue
        text_vectors = targets @ embeddings.detach().float() / targets.sum(dim=1, keepdim=True)
        ids = [key for key, k in zip(keys[modality], keep.tolist(), strict=True) if k]
        same_input = torch.tensor([[a == b for b in ids] for a in ids], device=same_text.device)
        match = same_text | same_input
        text = nn.functional.normalize(text_vectors, dim=-1)
        image = nn.functional.normalize(tokens[keep].mean(dim=1), dim=-1)
        logits = image @ text.T / temperature  # [n, n]: input i against text j
        losses.append((_matched_nll(logits, match) + _matched_nll(logits.T, match.T)) / 2)
    return torch.stack(losses).mean() if losses else None


def _matched_nll(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log`` (the softmax mass of the row's matches)."""
    matched = logits.masked_fill(~match, float("-inf")).logsumexp(dim=1)
    return (logits.logsumexp(dim=1) - matched).mean()
