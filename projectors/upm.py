"""The Universal Projection Module (UPM): a mixture of projection experts with a router per modality.

Per input of modality m, with encoder features ``[B, S, C]`` (S = 1 + L_m):

    x       = Linear_in[m](Standardize[m](features))             [B, S, H]     norm "standardize" (default)
            = LayerNorm(Linear_in[m](features))                                norm "layernorm" (official OneLLM)
    q       = queries[m]                                         [B, N, H]     query source "learned" (OneLLM)
            = queries[m] + pool_N(x)                                           "pooled" (see queries.py)
    seq     = [q ; x]                                            [B, N+S, H]
    e_k     = expert_k(seq)[:, :N]                               [B, N, H]     K experts, shared by all modalities
    w       = router[m](x, queries[m])                           [B|1, 1|N, K]
    mixed   = sum_k w_k * e_k                                    [B, N, H]
    out     = [start ; Linear_out[m](mixed) ; end]             [B, N+2, D]   D = LLM width
                                                 (LayerNorm(Linear_out[m](mixed)) under norm "layernorm")
    end     = end[m]                                             [B, 1, D]     end tag "learned" (OneLLM)
            = softmax(20 cos(Linear_lex[m](mean_N mixed), E)) E                "lexical": E = the LLM's word
                                                                               embeddings [V, D] (see LexicalTag);
                                                                               slot_summary "mean_max": mean_N + max_N
    start   = start[m]                                           [B, 1, D]     start tag "learned" (OneLLM)
            = the same with its own Linear                                     "lexical": a second word slot
    out     = [start ; ... ; end ; slot_1 ; ... ; slot_X]        [B, N+2+X, D] extra_slots X: more word slots,
                                                                               each with its own Linear

Why the default standardises instead of layer-normalising (measured on the small preset, issue 11): the encoder's
features of different inputs share a large common component. With a LayerNorm after each projection, the first
optimizer steps grow that common component (Adam moves every weight by ~lr, and the loss gradient is nearly the same
for every input at the start, so it is a rank-1 update along the mean feature), and the LayerNorm then rescales the
input-specific part towards zero: the relative spread of the outputs across images fell from 0.40 to 0.02 in 20
steps and the frozen LLM answered every image alike. Standardising the features with their running per-channel
mean and variance removes the common component before any weight sees it, and without the output LayerNorm nothing
shrinks the input-specific part: the spread stayed at 1.2 over the same 20 steps.

Stage-1 alignment trains a one-expert, image-only UPM ("the image projector");
:func:`expand_experts` then copies it into K experts and into every modality.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

from onellm.projectors.experts import build_expert
from onellm.projectors.queries import build_queries, query_source
from onellm.projectors.routers import Router


def placeholder_count(num_queries: int, extra_slots: int = 0) -> int:
    """Embeddings one modality input contributes to the LLM sequence: N queries + start tag + end tag, then the
    ``extra_slots`` further word slots (projector ``extra_slots``; :class:`ModalityHead`).

    This is THE counting function: the processor, the data collator, the model and the vLLM plugin all call it.
    """
    if extra_slots < 0:
        raise ValueError(f"extra_slots must be >= 0, got {extra_slots}")
    return num_queries + 2 + extra_slots


class FeatureStandardizer(nn.Module):
    """``[B, S, C] -> (x - mean) / std`` per channel, with the statistics of every token seen in training.

    In training mode each call first folds the batch's tokens into running (cumulative, not exponential) statistics,
    then normalises with them, so training and inference use the same transform once a few batches have passed.
    The statistics are buffers: they travel with the checkpoint. Before any training batch it is the identity.
    """

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def reset(self) -> None:
        """Forget the statistics (a head copied to a new modality must learn that modality's)."""
        self.mean.zero_()
        self.var.fill_(1.0)
        self.count.zero_()

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        n, total = flat.shape[0], float(self.count) + flat.shape[0]
        batch_mean, batch_var = flat.mean(0), flat.var(0, unbiased=False)
        delta = batch_mean - self.mean.double()
        # Chan et al.'s parallel update of mean and (population) variance.
        mean = self.mean.double() + delta * (n / total)
        m2 = self.var.double() * float(self.count) + batch_var * n + delta.pow(2) * float(self.count) * n / total
        self.mean.copy_(mean.to(self.mean.dtype))
        self.var.copy_((m2 / total).to(self.var.dtype))
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._update(x)
        if float(self.count) == 0:
            return x
        return (x - self.mean.to(x.dtype)) * torch.rsqrt(self.var.to(x.dtype) + self.eps)


# How a head normalises around its projections: (before proj_in, after proj_in, after proj_out).
NORMS = ("standardize", "layernorm")
# What closes a modality's soft tokens: one learned vector per modality (OneLLM), or a word-embedding mixture.
END_TAGS = ("learned", "lexical")
# What opens them: one learned vector per modality (OneLLM), or a second word-embedding mixture ("lexical", with a
# lexical end tag: the two tags are then two word slots, see ModalityHead.start).
START_TAGS = ("learned", "lexical")
# Whether each soft token also carries a word-embedding mixture chosen from its own region ("add"), or not ("off").
REGION_WORDS = ("off", "add")
# What the word slots read of the mixed query outputs [B, N, H]: their mean, or their mean plus their maximum.
SLOT_SUMMARIES = ("mean", "mean_max")


class LexicalTag(nn.Module):
    """An end tag made of words: ``(summary [B, H], E [V, D]) -> (tag [B, D], word logits [B, V])``.

        logits = 20 * cos(Linear(summary), E_v)  for every word v;   tag = softmax(logits) @ E

    The tag is a mixture of the LLM's own input embeddings, so it lies where the frozen LLM reads words (at their RMS,
    not the soft tokens'), and it names the input in the LLM's vocabulary; an auxiliary loss on the logits (the
    alignment recipes' ``train.lexical_loss``: the row's content words as targets) teaches it which words. The small
    curriculum's default; measured there over two seeds each (BENCHMARKS.md, "The demo"): image QA - blind after
    image alignment +0.15 / +0.19 against +0.10 / +0.11 for the learned tag, mean CIDEr after instruct 1.08 / 1.07
    against 0.92 / 0.89. The scale is the one measured.
    """

    scale = 20.0

    def __init__(self, width: int, out_width: int):
        super().__init__()
        self.proj = nn.Linear(width, out_width)

    def forward(self, summary: torch.Tensor, vocab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``summary [..., H]`` -> (mixture ``[..., D]``, word logits ``[..., V]``): one per summary vector."""
        logits = self.logits(summary, vocab)
        _heard(self, summary, logits)
        return _mixture(logits, vocab), logits

    def logits(self, summary: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
        """The word logits ``[..., V]`` alone (what the word loss needs; onellm/train/lexical.py)."""
        return _cosine_logits(self.proj(summary), vocab)


def slot_words(tags: list[LexicalTag], summary: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """The word mixtures ``[..., K, D]`` of K tags reading one ``summary [..., H]``: what each tag's forward gives,
    from one vocabulary matmul for all logits and one for all mixtures (the table read twice, not 2K times, forward
    and backward alike: bench/lexical_tag.py). Word listeners hear each tag's logits as from its forward."""
    logits = slot_logits(tags, summary, vocab)
    for k, tag in enumerate(tags):
        _heard(tag, summary, logits[..., k, :])
    return _mixture(logits, vocab)


def slot_logits(tags: list[LexicalTag], summary: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """The word logits ``[..., K, V]`` of K tags reading one ``summary [..., H]``: each tag's :meth:`LexicalTag.logits`,
    stacked, from one matmul against the vocabulary (the table read once instead of K times)."""
    return _cosine_logits(torch.stack([tag.proj(summary) for tag in tags], dim=-2), vocab)


def _cosine_logits(projected: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """``LexicalTag.scale`` x the cosine of each projected summary ``[..., D]`` with every word row ``[V, D]``."""
    query = nn.functional.normalize(projected, dim=-1)
    return LexicalTag.scale * query @ word_rows(vocab, query.dtype, unit=True).T


def _mixture(logits: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    # in the dtype autocast would compute it in (it casts both sides to that dtype), else the table's
    mix = logits.dtype if torch.is_autocast_enabled(vocab.device.type) else vocab.dtype
    return logits.softmax(-1).to(mix) @ word_rows(vocab, mix)


_LISTENERS: list[Callable[[LexicalTag, torch.Tensor, torch.Tensor], None]] = []


@contextlib.contextmanager
def word_listener(listener: Callable[[LexicalTag, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """Inside: ``listener(tag, summary, logits)`` after each :class:`LexicalTag` computes its word logits, in its own
    forward or among a head's word slots (:func:`slot_words`). How the word loss and the word-slot fit collect what
    the tags read and name (onellm/train/lexical.py); module hooks would miss the slots computed together."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def _heard(tag: LexicalTag, summary: torch.Tensor, logits: torch.Tensor) -> None:
    for listener in _LISTENERS:
        listener(tag, summary, logits)


_KEPT: dict[bool, tuple] = {}  # unit -> (weakref to the last frozen table, its key, its rows): see word_rows


def word_rows(vocab: torch.Tensor, dtype: torch.dtype, unit: bool = False) -> torch.Tensor:
    """``vocab`` in ``dtype``, each row scaled to unit length if ``unit``.

    A frozen table's rows are computed once and kept while the table is the same. Normalising SmolLM2's 49k x 576
    table and casting it to bf16 for the mixture took about half of a tag's time, and an instruct batch calls up to
    eight heads (bench/lexical_tag.py). Another tensor, an in-place update (its version counter), another dtype or a
    switch into or out of inference mode computes them again. A table that trains (requires grad) or is an inference
    tensor (no version counter) is never kept.
    """
    if not unit and dtype == vocab.dtype:
        return vocab
    if vocab.requires_grad or vocab.is_inference():
        return _rows(vocab, dtype, unit)
    table = vocab if vocab._base is None else vocab._base
    key = (vocab.data_ptr(), vocab.shape, vocab.stride(), vocab._version, dtype, torch.is_inference_mode_enabled())
    last = _KEPT.get(unit)
    if last is not None and last[0]() is table and last[1] == key:
        return last[2]
    rows = _rows(vocab, dtype, unit)
    _KEPT[unit] = (weakref.ref(table), key, rows)
    return rows


def forget_word_rows() -> None:
    """Drop the kept rows (:func:`word_rows`): the next call computes them again (benchmarks, memory)."""
    _KEPT.clear()


def _rows(vocab: torch.Tensor, dtype: torch.dtype, unit: bool) -> torch.Tensor:
    return (nn.functional.normalize(vocab, dim=-1) if unit else vocab).to(dtype)


def _out_norm(width: int, layernorm: bool, out_rms: float | None) -> nn.Module:
    if layernorm:
        return nn.LayerNorm(width)
    if out_rms is None:
        return nn.Identity()
    norm = nn.RMSNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.fill_(out_rms)
    return norm


class RegionWords(nn.Module):
    """Words per soft token: ``(mixed [B, N, H], E [V, D]) -> (words [B, N, D], word logits [B, N, V])``.

        words_r = gain * unit_rms(softmax(20 cos(Linear(mixed_r), E)) @ E)      for each query output r

    A :class:`LexicalTag` applied to each of the N query outputs instead of their mean, RMS-normalised to the soft
    tokens' scale and added to them (``region_words: add``). Where the queries are regions of the input (``queries:
    pooled``), each soft token then also names, in the LLM's own embeddings, what lies in its region ("purple",
    "circle"), so the frozen LLM can bind a shape to its colour by reading words instead of only soft tokens. The word
    loss (``train.lexical_loss``) reaches it as a multiple-instance loss: each content word of the row must be named
    by at least one region (noisy-OR over the regions; onellm/train/lexical.py).

    Opt-in; measured at the demo's align_image budget (300 steps, BENCHMARKS.md "Region words"): image QA - blind
    +0.10 and CIDEr 0.84 against +0.16 and 1.26 without, steps 0.67-0.74 s against 0.54-0.61 s. After 300 steps the
    regions named words by their slot (the bottom row sizes and places, one corner the colours present anywhere), not
    by what lies in them, and the "What color is the <shape>?" answers stayed at 0.00.
    """

    def __init__(self, width: int, out_width: int):
        super().__init__()
        self.tag = LexicalTag(width, out_width)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, mixed: torch.Tensor, vocab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        words, logits = self.tag(mixed, vocab)
        words = words * torch.rsqrt(words.float().pow(2).mean(-1, keepdim=True) + 1e-12).to(words.dtype)
        return self.gain.to(words.dtype) * words, logits


class ModalityHead(nn.Module):
    """The per-modality parts of the UPM: in/out projections, queries, router, start/end tags.

    ``norm``: "standardize" (default: running feature standardisation before the in-projection, no LayerNorm;
    keeps the outputs input-dependent through training) or "layernorm" (the official OneLLM layout: a LayerNorm
    after each projection).
    """

    def __init__(
        self,
        in_width: int,
        width: int,
        out_width: int,
        num_queries: int,
        num_experts: int,
        router: str,
        norm: str = "standardize",
        out_rms: float | None = None,
        router_norm: str = "softmax",
        router_hidden: int | None = None,
        end_tag: str = "learned",
        region_words: str = "off",
        start_tag: str = "learned",
        extra_slots: int = 0,
        slot_summary: str = "mean",
    ):
        super().__init__()
        if slot_summary not in SLOT_SUMMARIES:
            raise ValueError(f"projector slot_summary {slot_summary!r} is not one of {SLOT_SUMMARIES}")
        self.slot_summary = slot_summary
        if extra_slots and start_tag != "lexical":
            raise ValueError(
                f"projector extra_slots {extra_slots} needs start_tag 'lexical' and end_tag 'lexical' (they add word "
                "slots to the two tags)"
            )
        if start_tag not in START_TAGS:
            raise ValueError(f"projector start_tag {start_tag!r} is not one of {START_TAGS}")
        if start_tag == "lexical" and end_tag != "lexical":
            raise ValueError("projector start_tag 'lexical' needs end_tag 'lexical' (the two tags are two word slots)")
        if region_words not in REGION_WORDS:
            raise ValueError(f"projector region_words {region_words!r} is not one of {REGION_WORDS}")
        if end_tag not in END_TAGS:
            raise ValueError(f"projector end_tag {end_tag!r} is not one of {END_TAGS}")
        if norm not in NORMS:
            raise ValueError(f"projector norm {norm!r} is not one of {NORMS}")
        layernorm = norm == "layernorm"
        self.standardize = nn.Identity() if layernorm else FeatureStandardizer(in_width)
        self.proj_in = nn.Sequential(nn.Linear(in_width, width), nn.LayerNorm(width) if layernorm else nn.Identity())
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.router = Router(width, num_experts, router, router_norm, router_hidden)
        if layernorm and out_rms is not None:
            raise ValueError("projector out_rms applies to norm 'standardize' (norm 'layernorm' ends in a LayerNorm)")
        self.proj_out = nn.Sequential(nn.Linear(width, out_width), _out_norm(out_width, layernorm, out_rms))
        if start_tag == "lexical":
            self.lexical_start = LexicalTag(width, out_width)
        else:
            self.start_tag = nn.Parameter(torch.randn(1, 1, out_width) * 0.02)
        if end_tag == "lexical":
            self.lexical_tag = LexicalTag(width, out_width)
        else:
            self.end_tag = nn.Parameter(torch.randn(1, 1, out_width) * 0.02)
        # Word slots after the end tag: with start and end tag, 2 + extra_slots words of each input, named as a set
        # (a point cloud's two slots named its colour and size, and its shape only with a third: BENCHMARKS.md).
        self.extra_slots = nn.ModuleList([LexicalTag(width, out_width) for _ in range(extra_slots)])
        if region_words == "add":
            self.region_words = RegionWords(width, out_width)

    @property
    def lexical(self) -> bool:
        return hasattr(self, "lexical_tag")

    @property
    def word_slots(self) -> int:
        """How many of :meth:`word_tags` (the first ones) are tags named as a set: 2 + ``extra_slots`` with a lexical
        start tag, else 1 with a lexical end tag, else 0."""
        return 2 + len(self.extra_slots) if hasattr(self, "lexical_start") else int(self.lexical)

    def word_tags(self) -> list[nn.Module]:
        """The head's :class:`LexicalTag` modules (start tag, end tag, region words): what the word loss trains."""
        tags = [self.lexical_start] if hasattr(self, "lexical_start") else []
        tags += [self.lexical_tag] if self.lexical else []
        tags += list(self.extra_slots)
        return tags + ([self.region_words.tag] if hasattr(self, "region_words") else [])

    def soft_tokens(self, mixed: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
        """The mixed query outputs ``[B, N, H]`` -> the soft tokens ``[B, N, D]`` (plus their region words)."""
        out = self.proj_out(mixed)
        if not hasattr(self, "region_words"):
            return out
        if vocab is None:
            raise ValueError("a projector with region words needs the LLM's input embeddings (vocab=...)")
        # detached for the reason the end tag's summary is (see tags())
        return out + self.region_words(mixed.detach(), vocab)[0].to(out.dtype)

    def tags(self, mixed: torch.Tensor, vocab: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tags around the soft tokens, from the mixed query outputs ``[B, N, H]``: (before ``[B, 1, D]``, after
        ``[B, 1 + X, D]``); ``vocab``: the LLM's input embeddings ``[V, D]``, needed by lexical tags only.

        Learned (OneLLM): one vector per modality on each side. ``end_tag: lexical``: the end tag is a
        :class:`LexicalTag` reading the mean of ``mixed``, detached: its word loss and the LM loss through it left the
        soft tokens worse for the LLM (align_rest validation loss 1.044 against 0.800 detached; BENCHMARKS.md, "A
        lexical end tag"). ``start_tag: lexical`` as well: start and end tag (and the ``extra_slots`` X after the end
        tag) are word slots reading the same summary. One mixture blends the input's words (a point cloud's end tag
        named "blue" 0.25 and its shape far lower), and the LLM cannot check a word of the question against a blend:
        with two separate words where one blend stood, LoRA learned to answer "Is this a cube?" (BENCHMARKS.md, "Two
        word slots"); a third slot named a point cloud's shape beside its colour and size.
        """
        batch = mixed.shape[0]
        if self.lexical:  # (word slots need the lexical end tag too)
            if vocab is None:
                raise ValueError("a projector with lexical tags needs the LLM's input embeddings (vocab=...)")
            summary = self.summarize(mixed).detach()
        if self.word_slots >= 2:
            words = slot_words(self.word_tags()[: self.word_slots], summary, vocab)  # [B, 2 + X, D]
            return words[:, :1], words[:, 1:]
        start = self.start_tag.expand(batch, -1, -1)
        if self.lexical:
            return start, self.lexical_tag(summary, vocab)[0].unsqueeze(1)
        return start, self.end_tag.expand(batch, -1, -1)

    def summarize(self, mixed: torch.Tensor) -> torch.Tensor:
        """What the word slots read of the mixed query outputs ``[B, N, H]`` -> ``[B, H]`` (``slot_summary``): the
        mean, or the mean plus the channel-wise maximum (with the mean alone a small object is one region in sixteen;
        with the maximum the demo's image slots named shapes 0.60 and colours 0.50 instead of 0.37 and 0.40)."""
        summary = mixed.mean(1)
        return summary + mixed.amax(1) if self.slot_summary == "mean_max" else summary

    def project_in(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[B, S, C]`` -> ``[B, S, H]``."""
        return self.proj_in(self.standardize(features))


class UniversalProjectionModule(nn.Module):
    """K shared experts + one :class:`ModalityHead` per modality. ``[B, S, C] -> [B, N+2+extra_slots, D]``."""

    def __init__(
        self,
        modalities: list[str],
        in_width: int,
        out_width: int,
        width: int | None = None,
        num_experts: int = 3,
        depth: int = 8,
        num_queries: int = 30,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        router: str = "pooled",
        expert: str = "transformer",
        norm: str = "standardize",
        queries: str = "learned",
        out_rms: float | None = None,
        expert_hidden: int | None = None,
        router_norm: str = "softmax",
        router_hidden: int | None = None,
        end_tag: str = "learned",
        region_words: str = "off",
        start_tag: str = "learned",
        extra_slots: int = 0,
        slot_summary: str = "mean",
        query_grids: dict[str, tuple[tuple[int, int], tuple[int, int]] | None] | None = None,
    ):
        super().__init__()
        query_source(queries)  # an unknown name fails here, not on the first forward
        # Per modality, how pooled queries cut its tokens into regions (Modality.query_grid; absent: the default).
        self.query_grids = {m: grid for m, grid in (query_grids or {}).items() if grid is not None}
        for m, ((rows, cols), (r, c)) in self.query_grids.items():
            if r * c != num_queries or not (0 < r <= rows and 0 < c <= cols):
                raise ValueError(
                    f"modality {m!r}: query_grid {[r, c]} must hold num_queries {num_queries} regions "
                    f"within its {rows} x {cols} grid of tokens"
                )
        width = width or in_width
        self.num_queries = num_queries
        self.num_extra_slots = extra_slots
        self.query_source = queries
        self.experts = nn.ModuleList(
            [build_expert(expert, width, depth, num_heads, mlp_ratio, expert_hidden) for _ in range(num_experts)]
        )
        self.heads = nn.ModuleDict(
            {
                m: ModalityHead(
                    in_width,
                    width,
                    out_width,
                    num_queries,
                    num_experts,
                    router,
                    norm,
                    out_rms,
                    router_norm,
                    router_hidden,
                    end_tag,
                    region_words,
                    start_tag,
                    extra_slots,
                    slot_summary,
                )
                for m in modalities
            }
        )

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def num_tokens(self) -> int:
        return placeholder_count(self.num_queries, self.num_extra_slots)

    def query_positions(self, embeds: torch.Tensor) -> torch.Tensor:
        """This projector's output ``[B, num_tokens, D]`` -> its N soft tokens ``[B, N, D]`` (tags and slots left out)."""
        return embeds[:, 1 : 1 + self.num_queries]

    def routing_weights(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Mixture weights ``[B|1, 1|N, K]`` for ``features`` ``[B, S, C]``."""
        head = self.head(modality)
        return head.router(head.project_in(features), head.queries)

    def head(self, modality: str) -> ModalityHead:
        if modality not in self.heads:
            raise KeyError(f"the projector has no head for modality {modality!r}; it has: {list(self.heads)}")
        return self.heads[modality]

    def forward(self, features: torch.Tensor, modality: str, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """``features [B, S, C] -> [B, N+2+extra_slots, D]``; ``vocab``: the LLM's input embeddings ``[V, D]`` (lexical end tag)."""
        head = self.head(modality)
        x = head.project_in(features)
        queries = build_queries(self.query_source, head.queries, x, self.query_grids.get(modality))
        seq = torch.cat([queries, x], dim=1)
        weights = head.router(x, head.queries)  # [B|1, 1|N, K]
        mixed = sum(
            weights[..., k : k + 1] * expert(seq)[:, : self.num_queries] for k, expert in enumerate(self.experts)
        )
        before, after = head.tags(mixed, vocab)
        return torch.cat([before, head.soft_tokens(mixed, vocab), after], dim=1)


def expand_experts(
    projector: UniversalProjectionModule, num_experts: int, modalities: list[str]
) -> UniversalProjectionModule:
    """Build a K-expert, all-modality UPM from a trained one-expert projector (OneLLM's stage-1 -> stage-2 step).

    Every expert is a copy of the trained expert; every new modality head starts as a copy of the first
    trained head (the image head), with fresh feature statistics and, under lexical tags, fresh word
    projections. Routers start uniform. With K identical experts the output equals the
    source projector's output for any routing weights, since the weights sum to one.
    """
    if projector.num_experts != 1:
        raise ValueError(f"expand_experts expects a one-expert projector, got {projector.num_experts} experts")
    source_name, source_head = next(iter(projector.heads.items()))
    upm = copy.deepcopy(projector)
    upm.experts = nn.ModuleList([copy.deepcopy(projector.experts[0]) for _ in range(num_experts)])
    heads = {}
    for m in modalities:
        head = copy.deepcopy(projector.heads[m] if m in projector.heads else source_head)
        if m not in projector.heads and isinstance(head.standardize, FeatureStandardizer):
            head.standardize.reset()  # the image statistics do not describe another modality's features
        if m not in projector.heads:
            for tag in head.word_tags():
                tag.proj.reset_parameters()  # it names image words (colours, shapes); each modality its own
        width = head.queries.shape[-1]
        old = head.router
        head.router = Router(width, num_experts, old.mode, old.norm, old.mlp[0].out_features)
        heads[m] = head
    upm.heads = nn.ModuleDict(heads)
    return upm
