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

Word slots (a head with ``start_tag: lexical`` and ``end_tag: lexical``, and its ``extra_slots``) are named as a set
instead: each slot is taught one content word of the row, the distinct words the slots already name best (a matching,
so each slot stays one sharp word rather than a blend of all of them; with fewer words than slots, every word and
each spare slot one of them: a spare slot left untaught named a random blend, BENCHMARKS.md "The demo" 2026-12-05
midday), and only distinctive words count: those in fewer than ``train.slot_word_share`` of the modality's training inputs
(:func:`distinctive_words`). Without that the slots learned the words every input has: an fMRI caption's "picture",
or "small" / "large" (BENCHMARKS.md, "Two word slots").

The stage's word loss reaches the slots through the LLM's batches only, too few inputs to make them sharp at the
demo's budget. ``train.word_fit_steps`` fits them once more at the end of the stage, without the LLM: each distinct
training input passes the projector once, is paired with the distinctive words of everything said about it
(:func:`said_by_input`), and only the slots' word projections train on those pairs (:func:`fit_word_slots`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from onellm.modeling import IGNORE_INDEX
from onellm.projectors.upm import slot_logits, word_listener

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


def word_slots(core: nn.Module) -> dict[str, int]:
    """``{modality: K}`` for the heads whose first K >= 2 word tags are slots named as a set (see the module docstring)."""
    return {m: head.word_slots for m, head in core.projector.heads.items() if head.word_slots >= 2}


def input_key(record, n: int) -> str:
    """The identity of a record's ``n``-th input: its file, or for an inline array the record and position."""
    item = record.inputs[n]
    return item.path if item.path is not None else f"{record.id}#{n}"


def said_by_input(
    records: Iterable, tokenizer, keys: Iterable[list[str]] | None = None
) -> dict[str, dict[str, set[int]]]:
    """``{modality: {input key: token ids}}``: the tokens of every assistant turn of the records each distinct input
    (:func:`input_key`, or ``keys``: each record's input keys, e.g. content keys) appears in, in first-seen order."""
    seen: dict[str, dict[str, set[int]]] = {}
    records = list(records)
    keys = keys if keys is not None else ([input_key(r, n) for n in range(len(r.inputs))] for r in records)
    for record, record_keys in zip(records, keys, strict=True):
        said = {i for turn in record.conversation if turn.role == "assistant" for i in _ids(tokenizer, turn.content)}
        for item, key in zip(record.inputs, record_keys, strict=True):
            seen.setdefault(item.modality, {}).setdefault(key, set()).update(said)
    return seen


def distinctive_words(records: Iterable, tokenizer, words: torch.Tensor, share: float) -> dict:
    """``{modality: [len(tokenizer)] bool}``: the content words (``words``) of the assistant turns that occur with
    fewer than ``share`` of the modality's distinct inputs (:func:`said_by_input`)."""
    out = {}
    for modality, inputs in said_by_input(records, tokenizer).items():
        counts = torch.zeros(words.shape[0])
        for ids in inputs.values():
            counts[[i for i in ids if i < counts.shape[0]]] += 1
        out[modality] = words & (counts < share * len(inputs))
    return out


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@contextlib.contextmanager
def captured_word_logits(core: nn.Module) -> Iterator[dict[tuple[str, int], list[torch.Tensor]]]:
    """Inside: every forward of a word tag appends its word logits ``[n, V]`` or ``[n, N, V]`` to
    ``captured[(modality, i)]`` (see :func:`word_tags`)."""
    captured: dict[tuple[str, int], list[torch.Tensor]] = {}
    keys = {id(tag): key for key, tag in word_tags(core).items()}

    def listen(tag, _summary, logits):
        if id(tag) in keys:
            captured.setdefault(keys[id(tag)], []).append(logits)

    with word_listener(listen):
        yield captured


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
    slots: dict[str, int] | None = None,
    distinctive: dict[str, torch.Tensor] | None = None,
    coverage: float = 0.0,
) -> torch.Tensor | None:
    """Mean over the inputs that have content words (and over tags) of the mean ``-log P(word)`` over them; None
    when none has. ``slots``: :func:`word_slots`; those tags are named as a set, from ``distinctive``
    (:func:`distinctive_words`; a modality missing there: every content word), with ``coverage`` (:func:`slot_loss`)."""
    slots, distinctive = slots or {}, distinctive or {}
    per_row = []
    grouped: dict[tuple[str, int], list[torch.Tensor]] = {}
    for (modality, i), chunks in captured.items():
        k = slots.get(modality, 0)
        if i < k:  # the slots of one head: stacked [n, K, V] under the key (modality, -1)
            grouped.setdefault((modality, -1), [None] * k)[i] = torch.cat(chunks).float()
        else:
            grouped[(modality, i)] = [torch.cat(chunks).float()]
    for (modality, i), parts in grouped.items():
        if any(part is None for part in parts):
            raise RuntimeError(f"{modality}: a word slot's logits are missing from the batch")
        logits = torch.stack(parts, dim=1) if i < 0 else parts[0]  # [n, K, V] slots; [n, V] or [n, N, V]
        vocab = logits.shape[-1]
        mask = fit_mask(distinctive[modality], vocab) if i < 0 and modality in distinctive else fit_mask(words, vocab)
        targets = word_targets(input_ids, labels, markers[modality], per_input, mask)
        if targets.shape[0] != logits.shape[0]:
            raise RuntimeError(f"{modality}: {logits.shape[0]} lexical tags for {targets.shape[0]} inputs in the batch")
        counts = targets.sum(dim=1)
        keep = counts > 0
        if not bool(keep.any()):
            continue
        log_p = logits.log_softmax(dim=-1)
        if i < 0:
            per_row.append(slot_loss(log_p[keep], targets[keep], coverage))
        else:
            per_row.append(-(_log_any(log_p) * targets).sum(dim=1)[keep] / counts[keep])
    return torch.cat(per_row).mean() if per_row else None


def slot_loss(log_p: torch.Tensor, targets: torch.Tensor, coverage: float = 0.0) -> torch.Tensor:
    """``log p [n, K, V]`` of K word slots, ``targets [n, V]`` (bool, each row at least one) -> ``[n]``: minus the
    mean log p of each row's best pairing of slots and words (:func:`_matched`). Rows with the same number of words
    are matched together (a loop over rows took a quarter of the word fit's step; bench/slot_fit.py).

    ``coverage`` > 0 adds that weight times minus the mean over each row's words of the log-probability that some
    slot names the word (noisy-OR over the slots): the matching alone trains only the words a slot already names
    best, so a word said of every input of a kind but named by no slot yet never gains; with the coverage term the
    words the input always has win the slots over words it has only sometimes."""
    counts = targets.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("slot_loss: every row needs at least one target word")
    _, words = targets.nonzero(as_tuple=True)  # row-major: each row's words together, in vocabulary order
    starts = torch.cumsum(counts, 0) - counts
    widest = int(counts.max())
    slot = torch.arange(widest, device=targets.device)
    index = words[(starts.unsqueeze(1) + slot).clamp(max=words.shape[0] - 1)]  # [n, widest]
    index = torch.where(slot < counts.unsqueeze(1), index, 0)  # past a row's words: word 0, never read
    chosen = log_p.gather(2, index.unsqueeze(1).expand(-1, log_p.shape[1], -1))  # [n, K, widest]
    out = log_p.new_empty(targets.shape[0])
    for count in counts.unique().tolist():
        group = (counts == count).nonzero().squeeze(1)
        out[group] = -_matched(chosen[group, :, :count])
    if coverage:  # on the rows' own words only: the whole vocabulary doubled the word fit's time
        named = _log_any(chosen)  # [n, K, widest] -> [n, widest]: log P(some slot names the word)
        valid = slot < counts.unsqueeze(1)
        out = out - coverage * (named * valid).sum(dim=1) / counts
    return out


@contextlib.contextmanager
def captured_slot_summaries(core: nn.Module, modalities: Iterable[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Inside: every forward of the word slots of ``modalities``' heads (:func:`word_slots`) appends the summary the
    slots read (``[n, H]``, the same for all of a head's slots) to ``captured[modality]``."""
    captured: dict[str, list[torch.Tensor]] = {}
    firsts = {id(core.projector.heads[m].word_tags()[0]): m for m in modalities}

    def listen(tag, summary, _logits):
        if id(tag) in firsts:
            captured.setdefault(firsts[id(tag)], []).append(summary.detach().float())

    with word_listener(listen):
        yield captured


def fit_word_slots(
    core: nn.Module,
    summaries: torch.Tensor,
    targets: torch.Tensor,
    modality: str,
    steps: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    coverage: float = 0.0,
    schedule: str = "constant",
) -> tuple[float, float]:
    """Fit the word slots of ``modality``'s head (only their word projections) to name ``targets`` (``[n, V]`` bool,
    the distinctive words of each input's text) from ``summaries`` (``[n, H]``, what the slots read: the head's
    detached mean query output) with :func:`slot_loss`, ``steps`` Adam steps on random batches at the rate ``lr``
    (``schedule`` "constant"; "cosine" decays it to 0 over the steps: on the demo's stages it ended some fits lower
    and some higher, BENCHMARKS.md, "The demo", 2026-12-08; bench/word_fit.py). Without the LLM a step costs a few
    milliseconds, so the slots can see many more inputs than the alignment stage's word loss gives them. ``amp``: a
    fresh autocast context per step (one context around all steps would keep computing with the weights' first
    low-precision copy: autocast caches those casts until it exits). Returns the mean loss over all inputs before
    and after."""
    head = core.projector.heads[modality]
    tags = head.word_tags()[: head.word_slots]
    vocab = core.word_embeddings().detach()
    targets = torch.stack([fit_mask(row, vocab.shape[0]) for row in targets]) if targets.shape[0] else targets
    keep = targets.any(dim=1).to(summaries.device)
    summaries, targets = summaries[keep], targets.to(summaries.device)[keep]
    if summaries.shape[0] == 0:
        raise ValueError(f"{modality}: no training input has a distinctive content word for its word slots")
    params = [p for tag in tags for p in tag.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"word fit schedule {schedule!r} is not 'cosine' or 'constant'")
    decay = get_cosine_schedule_with_warmup(optimizer, 0, steps) if schedule == "cosine" else None
    generator = torch.Generator().manual_seed(seed)

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        with amp():
            logits = slot_logits(tags, summaries[index], vocab).float()
        return slot_loss(logits.log_softmax(dim=-1), targets[index], coverage).mean()

    def overall() -> float:
        with torch.no_grad():
            chunks = torch.arange(summaries.shape[0]).split(256)
            return float(sum(loss_of(c) * len(c) for c in chunks) / summaries.shape[0])

    before = overall()
    for _ in range(steps):
        index = torch.randint(summaries.shape[0], (min(batch_size, summaries.shape[0]),), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss_of(index).backward()
        optimizer.step()
        if decay is not None:
            decay.step()
    return before, overall()


def _matched(log_p: torch.Tensor) -> torch.Tensor:
    """``log p [n, K, T]`` of K slots for each row's T words -> ``[n]``: the mean log p of each row's best pairing of
    slots and words: each slot one word, no word twice; with fewer words than slots, every word at least once and the
    other slots one of them each (a slot left without a word names a random blend, which the LLM reads as words of
    the input)."""
    _, slots, count = log_p.shape
    words = _pairings(slots, count).to(log_p.device)  # [P, K]: the word of each slot, for every allowed pairing
    paired = log_p[:, torch.arange(slots, device=log_p.device), words]  # [n, P, K]
    return paired.mean(dim=2).amax(dim=1)


@functools.lru_cache(maxsize=64)
def _pairings(slots: int, count: int) -> torch.Tensor:
    """``[P, slots]``: every allowed assignment of ``count`` words to the slots (see :func:`_matched`), computed once
    per shape (building them per row took most of a word fit's time)."""
    if count >= slots:
        return torch.tensor(list(itertools.permutations(range(count), slots)))
    onto = [p for p in itertools.product(range(count), repeat=slots) if len(set(p)) == count]
    return torch.tensor(onto)


def _log_any(log_p: torch.Tensor) -> torch.Tensor:
    """``log p [n, V]`` as is; ``[n, N, V]`` -> ``log(1 - prod_r (1 - p_r))`` ``[n, V]`` (noisy-OR over the N)."""
    if log_p.dim() == 2:
        return log_p
    log_none = torch.log1p(-(log_p.exp().clamp(max=1 - 1e-6))).sum(dim=1)  # log prod_r (1 - p_r)
    return torch.log((-torch.expm1(log_none)).clamp(min=1e-30))


def fit_mask(words: torch.Tensor, size: int) -> torch.Tensor:
    """A vocabulary mask cut or zero-padded to ``size`` entries (the logits' or the embedding table's length)."""
    if words.shape[0] >= size:
        return words[:size]
    return torch.cat([words, words.new_zeros(size - words.shape[0])])


__all__ = [
    "captured_slot_summaries",
    "captured_word_logits",
    "content_word_mask",
    "distinctive_words",
    "fit_mask",
    "fit_word_slots",
    "input_key",
    "lexical_loss",
    "said_by_input",
    "slot_loss",
    "word_slots",
    "word_tags",
    "word_targets",
]
