"""The training loop shared by the recipes: optimizer steps over a data mixture, on accelerate.

What it does, in order, for ``steps`` optimizer steps:

1. the mixture yields one *global* batch of ``batch_size x processes x grad_accum`` dataset indices; this process
   takes its ``grad_accum`` micro-batches (:func:`onellm.instruct_data.mixture.shard`);
2. the loss is normalised by the number of label tokens in the whole global batch (all processes, all micro
   steps), so 2 processes x batch b, 1 process x batch 2b and 1 process x batch b x 2 accumulation steps compute
   the same gradient (up to float summation order);
3. image-like inputs whose path up to the UPM is frozen go through the frozen-feature cache (:mod:`.features`);
   the auxiliary terms join the LM loss: the word loss (``lexical_loss``, :mod:`.lexical`) and the soft-token/text
   contrastive term (``contrastive_loss``, :mod:`.contrastive`);
4. clip, step the optimizer and the schedule (cosine / linear / constant after a linear warmup);
5. every ``log_interval`` steps: TensorBoard + ``metrics.jsonl``; every ``eval_interval``: validation loss per
   modality; every ``save_interval`` (and at the last step): an atomic resumable checkpoint (:mod:`.checkpoint`).

A restart finds the newest complete checkpoint and continues from its step: trainable weights, optimizer,
scheduler, each process's RNG and the data position (the mixture replays its first ``step`` choices) are restored.
The loop decides nothing about what trains: the recipe sets ``requires_grad`` and passes the learning rates.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from onellm.instruct_data.collator import Collator, pack
from onellm.instruct_data.loader import ManifestDataset
from onellm.instruct_data.mixture import Mixture, shard
from onellm.modeling import IGNORE_INDEX
from onellm.train import checkpoint as ckpt
from onellm.train.config import DataConfig, TrainConfig
from onellm.train.contrastive import (
    captured_soft_tokens,
    contrastive_loss,
    described_by_input,
    input_texts,
    row_texts,
)
from onellm.train.features import FeatureCache, cache_options, cacheable_modalities
from onellm.train.lexical import (
    captured_slot_summaries,
    captured_word_logits,
    content_word_mask,
    distinctive_words,
    fit_word_slots,
    input_key,
    lexical_loss,
    said_by_input,
    word_slots,
    word_tags,
)

SCHEDULES = {
    "cosine": get_cosine_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "constant": lambda optimizer, warmup, total: get_constant_schedule_with_warmup(optimizer, warmup),
}


@dataclass
class LoopResult:
    steps: int
    resumed_from: int
    seconds: float  # wall time of this run of the loop (not counting earlier, interrupted runs)
    samples: int  # samples seen over the whole stage, all processes
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean token loss), whole stage
    val: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, {modality|"all": loss})
    cache_hits: int = 0
    cache_misses: int = 0
    step_seconds: float = 0.0  # median seconds per optimizer step in this run


class _RankBatches:
    """Batch sampler: this process's micro-batches for steps ``start..total-1`` (what the DataLoader iterates)."""

    def __init__(self, mixture: Mixture, global_batch: int, rank: int, world: int, accum: int, start: int, total: int):
        self.args = mixture, global_batch, rank, world, accum, start, total

    def __iter__(self) -> Iterator[list[int]]:
        mixture, global_batch, rank, world, accum, start, total = self.args
        stream = mixture.batches(global_batch, start=start)
        for _ in range(start, total):
            _, indices = next(stream)
            yield from shard(indices, rank, world, accum)

    def __len__(self) -> int:
        _, _, _, _, accum, start, total = self.args
        return (total - start) * accum


def split_decay(params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases, norms, tags and query vectors (1-d or size-1 leading)."""
    decay = [p for _, p in params if p.ndim >= 2 and p.shape[0] > 1]
    rest = [p for _, p in params if not (p.ndim >= 2 and p.shape[0] > 1)]
    return [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
        if g["params"]
    ]


# How a batch's label tokens are averaged (train.loss_weighting; see label_loss_sum).
LOSS_WEIGHTINGS = ("token", "sample", "turn")


def label_loss_sum(model: nn.Module, inputs: dict[str, Any], weighting: str = "token") -> torch.Tensor:
    """Summed cross-entropy over the label tokens of one batch (``inputs`` as the collator + cache build them), as
    ``train.loss_weighting`` sums it: ``token``, every label token; ``sample``, the sum over rows of each row's mean
    over its label tokens; ``turn``, the sum over answers (runs of label tokens: one per assistant turn) of each
    answer's mean, so an answer in a multi-turn conversation weighs what it would alone.

    Logits are computed only at the positions whose next token is a label in some row (``logits_to_keep``): the
    answers are a fraction of each row (a 15-token caption after a 35-token prompt), and the LM head (SmolLM2:
    576 x 49152) is about a fifth of a step, so this saves most of that fifth. Same value as the model's own loss.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting {weighting!r} is not one of {LOSS_WEIGHTINGS}")
    inputs = dict(inputs)
    targets = inputs.pop("labels")[:, 1:]  # position t predicts token t+1
    segments = inputs.pop("segments", None)  # packed rows (instruct_data.collator.pack): the sample of each position
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    # no KV cache: a training pass never decodes on, and building one cost copies (and compiled layers a recompile)
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()  # [B, len(keep), V]
    kept = targets[:, keep]
    if weighting == "token":
        return nn.functional.cross_entropy(
            logits.flatten(0, 1), kept.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    token_losses = nn.functional.cross_entropy(
        logits.flatten(0, 1), kept.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    labelled = kept.flatten() != IGNORE_INDEX
    if weighting == "turn":
        owner = answer_runs(targets)[:, keep].flatten()
    elif segments is None:  # one row per sample
        owner = torch.arange(kept.shape[0], device=kept.device).unsqueeze(1).expand_as(kept).flatten()
    else:
        owner = segments[:, 1:][:, keep].flatten()
    owner, token_losses = owner[labelled], token_losses[labelled]
    sums = token_losses.new_zeros(int(owner.max()) + 1 if owner.numel() else 0).index_add_(0, owner, token_losses)
    counts = torch.bincount(owner, minlength=sums.shape[0])
    return (sums[counts > 0] / counts[counts > 0]).sum()


def answer_runs(targets: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` labels -> the index of the answer each label position belongs to, counted over the whole batch (a
    run of label tokens is one answer: the prompt's ignored tokens part two turns, and packed samples begin with
    their prompts); -1 before the first answer."""
    labelled = targets != IGNORE_INDEX
    before = torch.zeros_like(labelled)
    before[:, 1:] = labelled[:, :-1]
    starts = labelled & ~before
    return starts.flatten().cumsum(0).view_as(targets) - 1


def loss_units(batch: dict[str, Any], weighting: str) -> int:
    """What :func:`label_loss_sum` sums over in ``batch``: its label tokens, its rows that have label tokens
    (``sample``), or its answers (``turn``)."""
    if weighting == "token":
        return batch["num_label_tokens"]
    labels = batch.get("padded_labels", batch["labels"])[:, 1:]  # one row per sample, also when packed
    if weighting == "turn":
        return int(answer_runs(labels).max()) + 1 if labels.numel() else 0
    return int((labels != IGNORE_INDEX).any(dim=1).sum())


def backbones(core: nn.Module) -> list[nn.Module]:
    """The HF models a OneLLM model runs through: its LLM and its universal encoder's vision model."""
    encoder = getattr(core, "encoder", None)
    found = [getattr(core, "language_model", None), getattr(encoder, "model", None)]
    return [model for model in found if isinstance(model, nn.Module) and hasattr(model, "config")]


@contextlib.contextmanager
def frozen_linear_weights_in_bf16(*models: nn.Module):
    """Inside: the frozen fp32 weights of the models' linear layers are held in bf16; afterwards the fp32 originals
    are back (bit-exact), so checkpoints keep the weights they started with. For bf16 autocast training only.

    Autocast casts a frozen matrix to bf16 again at every use (14 % of a small-preset alignment step); holding the
    cast copy gives the same numbers without the casts. Only linear layers: autocast leaves embedding lookups, norms,
    class tokens and position tables in fp32 (the residual stream stays fp32). A linear layer whose weight is an
    embedding table too (SmolLM2's tied LM head) gets its own bf16 copy while the table stays fp32 for the lookups:
    casting SmolLM2's 49k x 576 table took about 4 % of an alignment step (BENCHMARKS.md, "Training steps").
    Afterwards the layer holds the shared table again. Not for sharded (FSDP / DeepSpeed) models."""
    originals: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
    untied: list[tuple[nn.Linear, nn.Parameter]] = []  # (tied linear layer, the table it shares)
    lookups = {id(m.weight) for model in models for m in model.modules() if isinstance(m, nn.Embedding)}
    for model in models:
        for module in model.modules():
            param = module.weight if isinstance(module, nn.Linear) else None
            if param is None or param.requires_grad or param.dtype != torch.float32:
                continue
            if id(param) in lookups:
                untied.append((module, param))
                module.weight = nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False)
                continue
            originals[id(param)] = (param, param.data)
            param.data = param.data.to(torch.bfloat16)
    try:
        yield
    finally:
        for param, data in originals.values():
            param.data = data
        for module, param in untied:
            module.weight = param


@contextlib.contextmanager
def compiled_layers(*models: nn.Module, dynamic: bool = True):
    """Inside: each repeated block of the HF models (the classes a model names in ``_no_split_modules``: SmolLM2's
    decoder layers) runs through ``torch.compile`` (inductor); afterwards, eagerly again. The blocks share one code
    object, so one compilation serves all of them; ``dynamic``: sequence lengths and batch sizes vary without
    recompiling. State dicts are unchanged (the modules are compiled in place, not wrapped)."""
    blocks = []
    for model in models:
        names = set(getattr(model, "_no_split_modules", None) or ())
        blocks += [module for module in model.modules() if type(module).__name__ in names]
    for block in blocks:
        block.compile(dynamic=dynamic)
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None


class Trainer:
    """Runs a stage's optimizer steps. ``model`` may be PEFT-wrapped; ``core`` is the OneLLM model inside it.

    Args:
        groups: ``[(name, learning rate, [(param name, param)])]`` from the recipe (one per ``trainable`` pattern).
        config_snapshot: the stage config as a dict, stored in checkpoints and compared on resume.
    """

    def __init__(
        self,
        *,
        accelerator,
        model: nn.Module,
        core: nn.Module,
        collator: Collator,
        train_set: ManifestDataset,
        val_set: ManifestDataset | None,
        mixture: Mixture,
        groups: list[tuple[str, float, list[tuple[str, nn.Parameter]]]],
        train: TrainConfig,
        data: DataConfig,
        stage_dir: Path,
        seed: int,
        feature_cache_dir: Path | None,
        config_snapshot: dict[str, Any],
        log=print,
    ):
        self.acc = accelerator
        self.model, self.core = model, core
        self.collator = collator
        self.train_set, self.val_set = train_set, val_set
        self.mixture = mixture
        self.cfg, self.data_cfg = train, data
        self.stage_dir = stage_dir
        self.checkpoints = stage_dir / "checkpoints"
        self.seed = seed
        self.snapshot = config_snapshot
        self.log = log
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.global_batch = train.batch_size * self.world * train.grad_accum

        optim_groups = []
        for name, lr, params in groups:
            for group in split_decay(params, train.weight_decay):
                optim_groups.append({**group, "lr": lr, "name": name})
        self.optimizer = torch.optim.AdamW(optim_groups)
        self.scheduler = SCHEDULES[train.schedule](self.optimizer, train.warmup_steps, train.steps)

        self.words = None  # content-word mask of the lexical end tag's auxiliary loss (train.lexical_loss)
        self.slots, self.distinctive = {}, {}
        self.lexical_sum = 0.0  # that loss summed over the steps since the last log line
        self.contrastive_sum = 0.0  # train.contrastive_loss's term, likewise
        if train.lexical_loss or train.contrastive_loss:
            self.content_words = content_word_mask(collator.processor.tokenizer)
        self.described = None  # train.contrastive_text "input": each training input's words
        if train.contrastive_loss and train.contrastive_text == "input":
            tokenizer = collator.processor.tokenizer
            share = distinctive_words(train_set.records, tokenizer, self.content_words, train.slot_word_share)
            self.described = described_by_input(train_set, tokenizer, share)
        if train.lexical_loss:
            if not word_tags(core):
                raise ValueError(
                    "train.lexical_loss is set but the projector has no word tags; build the model with projector "
                    "end_tag: lexical or region_words: add (preset_args: {end_tag: lexical}) or set train.lexical_loss: 0"
                )
            tokenizer = collator.processor.tokenizer
            self.words = self.content_words
            self.slots = word_slots(core)  # heads whose tags are word slots: named as a set, from distinctive words
            if self.slots:
                self.distinctive = distinctive_words(train_set.records, tokenizer, self.words, train.slot_word_share)
        if train.word_fit_steps:
            if not self.slots:
                raise ValueError(
                    "train.word_fit_steps fits word slots, but the projector has none (build it with projector "
                    "start_tag: lexical and end_tag: lexical) or train.lexical_loss is 0; set train.word_fit_steps: 0"
                )
            if self.world > 1:
                raise ValueError("train.word_fit_steps runs on one process; set it to 0 for a distributed run")

        modalities = sorted({m for i in range(len(train_set)) for m in train_set.modalities(i)})
        # Under FSDP the encoder's weights are sharded and only usable inside the wrapped forward: no cache there.
        use_cache = train.cache_features and accelerator.distributed_type.name != "FSDP"
        self.cached = cacheable_modalities(core, modalities) if use_cache else []
        options = cache_options(collator.processor, core, self.cached)
        self.cache = FeatureCache(core, options, feature_cache_dir) if self.cached else None
        self.feature_cache_dir = feature_cache_dir if use_cache else None
        if self.cache is not None:  # the datasets skip decoding inputs whose features are stored
            for dataset in (train_set, val_set):
                if dataset is not None:
                    dataset.cached = self.cache.has

    # --- one optimizer step -----------------------------------------------------------------------------------------
    def _forward_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.acc.device
        mm_inputs, mm_features = {}, {}
        for m, values in batch["mm_inputs"].items():
            if m in self.cached:
                mm_features[m] = self.cache.features(self.core, m, values, batch["mm_keys"][m])
            else:
                mm_inputs[m] = values.to(device)
        inputs = {
            "input_ids": batch["input_ids"].to(device),
            "labels": batch["labels"].to(device),
            "mm_inputs": mm_inputs,
            "mm_features": mm_features,
        }
        if "position_ids" in batch:  # packed rows: no mask, restarting positions (instruct_data.collator.pack)
            inputs.update(position_ids=batch["position_ids"].to(device), segments=batch["segments"].to(device))
        else:
            inputs["attention_mask"] = batch["attention_mask"].to(device)
        return inputs

    def _autocast(self):
        if self.cfg.resolved_precision(self.acc.device.type) == "bf16":
            return torch.autocast(self.acc.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def training_attention(self):
        """Inside: the LLM and the encoder compute attention with ``train.attention``'s kernel; afterwards, their own
        again. (The encoder matters where tokenizers train through it: audio, point, IMU, fMRI.)"""
        wanted = self.cfg.resolved_attention(self.acc.device.type)
        owns = [(model, model.config._attn_implementation) for model in backbones(self.core)]
        changed = [(model, own) for model, own in owns if wanted is not None and own != wanted]
        for model, _ in changed:
            model.set_attn_implementation(wanted)
        try:
            yield
        finally:
            for model, own in changed:
                model.set_attn_implementation(own)

    def compiled_llm(self):
        """:func:`compiled_layers` for the LLM where ``train.compile`` asks for it (not sharded)."""
        llm = getattr(self.core, "language_model", None)
        if not self.cfg.compile or self.sharded or llm is None:
            return contextlib.nullcontext()
        compiler = os.environ.get("CXX", "g++")
        if self.acc.device.type == "cpu" and shutil.which(compiler) is None:
            self.log(
                f"note: train.compile needs a C++ compiler on a CPU and {compiler} is not on PATH: training eagerly"
            )
            return contextlib.nullcontext()
        return compiled_layers(llm)

    def frozen_llm_in_bf16(self):
        """:func:`frozen_linear_weights_in_bf16` for the LLM under bf16 training, unless sharded. (Not the encoder:
        the feature cache runs it outside autocast, in fp32, as evaluation does.)"""
        bf16 = self.cfg.resolved_precision(self.acc.device.type) == "bf16"
        llm = getattr(self.core, "language_model", None)
        if not bf16 or self.sharded or llm is None:
            return contextlib.nullcontext()
        return frozen_linear_weights_in_bf16(llm)

    def _sum(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(tensor, reduction="sum")[0])

    def step(self, micro_batches: list[dict[str, Any]]) -> float:
        """One optimizer step over this process's micro-batches; returns the global mean loss (per label token, row or
        answer, as ``train.loss_weighting`` weighs them)."""
        weighting = self.cfg.loss_weighting
        if self.cfg.pack_rows:
            micro_batches = [pack(b, self.cfg.pack_rows, self.collator.pad_id) for b in micro_batches]
        global_units = self._sum(sum(loss_units(b, weighting) for b in micro_batches))
        normaliser = torch.tensor(max(global_units, 1.0), device=self.acc.device)
        loss_sum = 0.0
        for j, batch in enumerate(micro_batches):
            last = j == len(micro_batches) - 1
            with contextlib.nullcontext() if last else self.acc.no_sync(self.model):
                inputs = self._forward_inputs(batch)
                with self._autocast(), self._word_logits() as words, self._soft_tokens() as soft:
                    # sum over this micro-batch's label tokens (rows) / all of them in the global batch
                    loss = label_loss_sum(self.model, inputs, weighting) / normaliser
                # DDP averages gradients over processes; undo that so the result is the global-batch mean.
                aux = self._lexical(words, batch) + self._contrastive(soft, batch)
                total = loss * self.world + aux / len(micro_batches)
                self.acc.backward(total)
                loss_sum += float(loss.detach())
        if self.cfg.max_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            self.acc.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._sum(loss_sum)

    def _word_logits(self):
        return captured_word_logits(self.core) if self.words is not None else contextlib.nullcontext({})

    def _soft_tokens(self):
        return captured_soft_tokens(self.core) if self.cfg.contrastive_loss else contextlib.nullcontext({})

    def _contrastive(self, captured: dict[str, list[torch.Tensor]], batch: dict[str, Any]) -> torch.Tensor | float:
        """``train.contrastive_loss`` x this micro-batch's soft-token/text contrastive loss (0 when off or when no
        modality has two distinct texts; onellm/train/contrastive.py)."""
        if not captured:
            return 0.0
        device = self.acc.device
        embeddings = self.core.word_embeddings()
        if self.described is not None:
            texts = input_texts(captured, batch["mm_keys"], self.described, embeddings.shape[0])
        else:
            texts = row_texts(
                captured,
                batch.get("padded_input_ids", batch["input_ids"]).to(device),  # one row per sample, also when packed
                batch.get("padded_labels", batch["labels"]).to(device),
                self.core.config.modality_token_ids,
                self.core.num_placeholder_tokens,
                self.content_words,
                embeddings.shape[0],
            )
        value = contrastive_loss(captured, batch["mm_keys"], texts, embeddings, self.cfg.contrastive_temperature)
        if value is None:
            return 0.0
        self.contrastive_sum += float(value.detach())
        return self.cfg.contrastive_loss * value

    def _lexical(
        self, captured: dict[tuple[str, int], list[torch.Tensor]], batch: dict[str, Any]
    ) -> torch.Tensor | float:
        """``train.lexical_loss`` x this micro-batch's auxiliary word loss (0 when off or no row has content words).
        Not rescaled by the process count: DDP's averaging makes it the mean over processes."""
        if not captured:
            return 0.0
        per_input = self.core.num_placeholder_tokens
        markers = self.core.config.modality_token_ids
        device = self.acc.device
        value = lexical_loss(
            captured,
            batch.get("padded_input_ids", batch["input_ids"]).to(device),  # one row per sample, also when packed
            batch.get("padded_labels", batch["labels"]).to(device),
            markers,
            per_input,
            self.words,
            self.slots,
            self.distinctive,
            self.cfg.slot_coverage,
        )
        if value is None:
            return 0.0
        self.lexical_sum += float(value.detach())
        return self.cfg.lexical_loss * value

    def fit_slots(self, say: Callable[[str], None]) -> None:
        """``train.word_fit_steps``: each distinct training input of the heads this stage trains passes the
        projector once (no LLM) to collect what its word slots read; each is paired with the distinctive words of
        all the text said about it (:func:`said_by_input`); then only the slots' word projections are fitted to
        them (:func:`fit_word_slots`)."""
        tick = time.perf_counter()
        records = self.train_set.records
        said = said_by_input(records, self.collator.processor.tokenizer)
        heads = self.core.projector.heads
        # the heads this stage trains (a replayed modality's frozen head keeps its slots)
        modalities = sorted(m for m in set(self.slots) & set(said) if heads[m].word_tags()[0].proj.weight.requires_grad)
        first: dict[str, int] = {}  # input key -> the first record that holds it
        for index, record in enumerate(records):
            for n, item in enumerate(record.inputs):
                if item.modality in modalities:
                    first.setdefault(input_key(record, n), index)
        chosen = sorted(set(first.values()))
        order = [chosen[i : i + 4 * self.cfg.batch_size] for i in range(0, len(chosen), 4 * self.cfg.batch_size)]
        loader = DataLoader(
            self.train_set, batch_sampler=order, collate_fn=self.collator, num_workers=self.data_cfg.num_workers
        )
        summaries: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
        keys: dict[str, list[str]] = {m: [] for m in modalities}
        final = self._final_features(modalities)
        self.model.eval()
        with torch.no_grad(), self._autocast(), captured_slot_summaries(self.core, modalities) as captured:
            for indices, batch in zip(order, loader, strict=True):
                inputs = self._forward_inputs(batch)
                if final is not None:  # encoded in fp32 (the cache's rule), as later stages read them
                    for m in set(final.namespace) & set(inputs["mm_inputs"]):
                        values = inputs["mm_inputs"].pop(m)
                        inputs["mm_features"][m] = final.features(self.core, m, values, batch["mm_keys"][m])
                for m in modalities:
                    if m in inputs["mm_inputs"] or m in inputs["mm_features"]:
                        self.core.embed_modality(m, inputs["mm_inputs"].get(m), inputs["mm_features"].get(m))
                        summaries[m].append(captured.pop(m)[-1])
                        held = [(records[i], n) for i in indices for n, item in enumerate(records[i].inputs)]
                        keys[m] += [input_key(record, n) for record, n in held if record.inputs[n].modality == m]
        self._train_mode()
        for m in modalities:
            mask = self.distinctive.get(m, self.words)
            targets = torch.zeros(len(keys[m]), mask.shape[0], dtype=torch.bool)
            for row, key in enumerate(keys[m]):
                targets[row, [i for i in said[m][key] if i < mask.shape[0]]] = True
            before, after = fit_word_slots(
                self.core,
                torch.cat(summaries[m]),
                targets & mask,
                m,
                self.cfg.word_fit_steps,
                self.cfg.word_fit_lr,
                batch_size=self.cfg.word_fit_batch,
                seed=self.seed,
                amp=self._autocast,
                coverage=self.cfg.slot_coverage,
                schedule=self.cfg.word_fit_schedule,
            )
            say(
                f"[{self.stage_dir.name}] {m} word slots fitted on {len(keys[m])} inputs: loss {before:.3f} -> {after:.3f}"
            )
        say(f"[{self.stage_dir.name}] word slots fitted in {time.perf_counter() - tick:.0f} s")

    def _final_features(self, modalities: list[str]) -> FeatureCache | None:
        """A feature cache for the fitted ``modalities`` whose tokenizers this stage trained, keyed by their final
        weights, in the stage's cache folder: the word fit's pass encodes every distinct training input of them once
        anyway, and a later stage that freezes those tokenizers (instruct) then reads the features instead of
        decoding and encoding each input again (in the demo's instruct stage about 700 first encodings)."""
        if self.feature_cache_dir is None or any(p.requires_grad for p in self.core.encoder.parameters()):
            return None
        trained = [m for m in modalities if m not in self.cached]
        if not trained:
            return None
        return FeatureCache(
            self.core, cache_options(self.collator.processor, self.core, trained), self.feature_cache_dir
        )

    # --- validation -------------------------------------------------------------------------------------------------
    def val_indices(self) -> dict[str, list[int]]:
        """A fixed validation subset: up to eval_samples split evenly over modalities, seeded order."""
        if self.val_set is None or len(self.val_set) == 0 or self.cfg.eval_samples == 0:
            return {}
        by_modality: dict[str, list[int]] = {}
        for i in range(len(self.val_set)):
            by_modality.setdefault("+".join(self.val_set.modalities(i)) or "text", []).append(i)
        per = max(1, self.cfg.eval_samples // len(by_modality))
        rng = np.random.default_rng(self.seed)
        return {m: sorted(rng.permutation(idx)[:per].tolist()) for m, idx in sorted(by_modality.items())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per modality and over all of them (``"all"``) on the fixed validation subset, per label token,
        row or answer as ``train.loss_weighting`` weighs the training loss, so the two read alike."""
        self.model.eval()
        # Plain / DDP: each process scores its share with the unwrapped model (no collective inside, so uneven
        # shares cannot deadlock), then the sums are reduced. Sharded: every process runs the whole subset through
        # the wrapped model (its forward gathers the shards in lockstep).
        model = self.model if self.sharded else self.core
        with torch.compiler.set_stance("force_eager"):  # a few batches: not worth compiling the no-grad graph
            return self._evaluate(model)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        weighting = self.cfg.loss_weighting
        total_loss = total_units = 0.0
        for name, indices in self.val_indices().items():
            mine = indices if self.sharded else indices[self.rank :: self.world]
            loss_sum = units = 0.0
            for start in range(0, len(mine), self.cfg.batch_size):
                batch = self.collator([self.val_set[i] for i in mine[start : start + self.cfg.batch_size]])
                with self._autocast():
                    loss = label_loss_sum(model, self._forward_inputs(batch), weighting)
                loss_sum += float(loss)
                units += loss_units(batch, weighting)
            if not self.sharded:
                loss_sum, units = self._sum(loss_sum), self._sum(units)
            out[name] = loss_sum / max(units, 1.0)
            total_loss, total_units = total_loss + loss_sum, total_units + units
        if out:
            out["all"] = total_loss / max(total_units, 1.0)
        self._train_mode()
        return out

    def _train_mode(self) -> None:
        self.model.train()
        self.core.encoder.eval()  # frozen: its outputs must not depend on the mode (and the cache assumes so)
        for head in self.core.projector.heads.values():
            if not any(p.requires_grad for p in head.parameters()):
                head.eval()  # a frozen head stays as it is: its feature statistics no longer move either

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def _state(self, step: int, samples: int, losses, val) -> dict[str, Any]:
        return {
            "step": step,
            "samples": samples,
            "losses": losses,
            "val": val,
            "world_size": self.world,
            "config": self.snapshot,
        }

    @property
    def sharded(self) -> bool:
        """FSDP / DeepSpeed: parameters or optimizer states are split over processes; accelerate saves them."""
        return self.acc.distributed_type.name in ("FSDP", "DEEPSPEED")

    def save(self, step: int, samples: int, losses, val) -> None:
        target = self.checkpoints / ckpt.step_dir_name(step)
        tmp = self.checkpoints / f".tmp-{target.name}"
        if self.acc.is_main_process:
            ckpt.temp_dir(target)
        self.acc.wait_for_everyone()
        state = self._state(step, samples, losses, val)
        if self.sharded:
            # every process writes its shards; the scheduler is ours (not prepared), so it goes in separately
            self.acc.save_state(str(tmp / "accelerate"))
        else:
            ckpt.save_rng(tmp, self.rank)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            try:
                if self.sharded:
                    torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
                else:
                    ckpt.save_training_state(tmp, self.core_for_state, self.optimizer, self.scheduler, state)
                ckpt.commit(tmp, target)
            except OSError as exc:  # a full disk: name the folder, keep the last complete checkpoint
                ckpt.remove_partial(self.checkpoints)
                previous = ckpt.list_checkpoints(self.checkpoints)
                raise ckpt.write_failed(target, exc, previous[-1][1] if previous else None) from exc
            ckpt.prune(self.checkpoints, self.cfg.save_limit)
        self.acc.wait_for_everyone()

    @property
    def core_for_state(self) -> nn.Module:
        """The module whose parameter names the checkpoint uses (the PEFT wrapper when there is one)."""
        return self.acc.unwrap_model(self.model)

    def latest(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint, after deleting what an interrupted writer left behind."""
        if self.acc.is_main_process:
            for path in ckpt.remove_partial(self.checkpoints):
                self.log(f"removed incomplete checkpoint {path.name} (left by an interrupted run)")
        self.acc.wait_for_everyone()
        found = ckpt.list_checkpoints(self.checkpoints)
        return found[-1] if found else None

    def resume(self, found: tuple[int, Path]) -> dict[str, Any]:
        """Restore the checkpoint ``found``: before ``prepare`` for plain/DDP runs, after it for sharded ones."""
        step, path = found
        if self.sharded:
            self.acc.load_state(str(path / "accelerate"))
            self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        else:
            state = ckpt.load_training_state(path, self.core_for_state, self.optimizer, self.scheduler)
            ckpt.load_rng(path, self.rank)
        changed = _changed_keys(state.get("config", {}), self.snapshot)
        if changed:
            raise RuntimeError(
                f"{path}: the stage config changed since this checkpoint was written ({', '.join(changed[:8])}); "
                f"restore it, or delete {self.stage_dir} to train the stage from scratch"
            )
        if state.get("world_size", self.world) != self.world:
            self.log(f"note: checkpoint written by {state['world_size']} process(es), resuming with {self.world}")
        self.log(f"resumed from {path} (step {step})")
        return state

    # --- the loop ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def training_setup(self):
        """Inside: the models as the loop trains them (:meth:`training_attention`, :meth:`frozen_llm_in_bf16`,
        :meth:`compiled_llm`); afterwards, as they were."""
        with self.training_attention(), self.frozen_llm_in_bf16(), self.compiled_llm():
            yield

    def fit(self) -> LoopResult:
        with self.training_setup():
            return self._fit()

    def _fit(self) -> LoopResult:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        found = self.latest()
        torch.manual_seed(self.seed * 1000 + self.rank)  # per-process randomness (dropout); a resume restores it
        state = self.resume(found) if found and not self.sharded else None
        if self.acc.distributed_type.name == "DEEPSPEED":  # no DataLoader goes through prepare(): say the batch
            self.acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = self.cfg.batch_size
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        if found and self.sharded:
            state = self.resume(found)
        start = state["step"] if state else 0
        samples = state["samples"] if state else 0
        losses = [tuple(x) for x in state["losses"]] if state else []
        val = [tuple(x) for x in state["val"]] if state else []
        self._train_mode()
        main = self.acc.is_main_process
        writer = SummaryWriter(str(self.stage_dir / "tensorboard")) if main else None
        metrics_path = self.stage_dir / "metrics.jsonl"
        if main:
            _truncate_metrics(metrics_path, start)

        loader = DataLoader(
            self.train_set,
            batch_sampler=_RankBatches(
                self.mixture, self.global_batch, self.rank, self.world, self.cfg.grad_accum, start, self.cfg.steps
            ),
            collate_fn=self.collator,
            num_workers=self.data_cfg.num_workers,
        )
        batches = iter(loader)
        bar = tqdm(total=self.cfg.steps, initial=start, desc=self.stage_dir.name, disable=not main, dynamic_ncols=True)
        started = time.perf_counter()
        durations = []
        for step in range(start + 1, self.cfg.steps + 1):
            tick = time.perf_counter()
            micro = [next(batches) for _ in range(self.cfg.grad_accum)]
            loss = self.step(micro)
            durations.append(time.perf_counter() - tick)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"{self.stage_dir.name}: loss is {loss} at step {step}; lower the learning rate"
                )
            samples += self.global_batch
            losses.append((step, loss))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if main and (step % self.cfg.log_interval == 0 or step == self.cfg.steps):
                self._log_metrics(writer, metrics_path, step, loss, samples, durations)
            if (self.cfg.eval_interval and step % self.cfg.eval_interval == 0) or step == self.cfg.steps:
                result = self.evaluate()
                if result:
                    val.append((step, result))
                    if main:
                        for name, value in result.items():
                            writer.add_scalar(f"val/{name}", value, step)
                        bar.write(
                            f"[{self.stage_dir.name}] step {step}: val loss "
                            + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
                        )
            if step == self.cfg.steps and self.cfg.word_fit_steps:
                self.fit_slots(bar.write)
            if (self.cfg.save_interval and step % self.cfg.save_interval == 0) or step == self.cfg.steps:
                self.save(step, samples, losses, val)
        bar.close()
        if writer is not None:
            writer.close()
        return LoopResult(
            steps=self.cfg.steps,
            resumed_from=start,
            seconds=time.perf_counter() - started,
            samples=samples,
            losses=losses,
            val=val,
            cache_hits=self.cache.hits if self.cache else 0,
            cache_misses=self.cache.misses if self.cache else 0,
            step_seconds=float(np.median(durations)) if durations else 0.0,
        )

    def _log_metrics(self, writer, path: Path, step: int, loss: float, samples: int, durations: list[float]) -> None:
        recent = durations[-self.cfg.log_interval :]
        seconds = sum(recent) / len(recent)
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("perf/seconds_per_step", seconds, step)
        writer.add_scalar("perf/samples_per_second", self.global_batch / seconds, step)
        for name, lr in lrs.items():
            writer.add_scalar(f"lr/{name}", lr, step)
        if self.cache is not None:
            writer.add_scalar("cache/hit_rate", self.cache.hits / max(self.cache.hits + self.cache.misses, 1), step)
        row = {"step": step, "loss": loss, "samples": samples, "seconds_per_step": seconds, "lr": lrs}
        if self.words is not None:  # the auxiliary word loss, mean per micro-batch since the last log line
            row["lexical_loss"] = self.lexical_sum / (self.cfg.log_interval * self.cfg.grad_accum)
            writer.add_scalar("train/lexical_loss", row["lexical_loss"], step)
            self.lexical_sum = 0.0
        if self.cfg.contrastive_loss:  # likewise for the contrastive term
            row["contrastive_loss"] = self.contrastive_sum / (self.cfg.log_interval * self.cfg.grad_accum)
            writer.add_scalar("train/contrastive_loss", row["contrastive_loss"], step)
            self.contrastive_sum = 0.0
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


# Keys that may change between an interrupted run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = (
    "train.log_interval",
    "train.eval_interval",
    "train.eval_samples",
    "train.save_interval",
    "train.save_limit",
    "train.compile",  # how fast the steps run, not what they train
    "data.num_workers",
    "data.on_error",
)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _changed_keys(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows after ``step`` (written by an interrupted run after its last checkpoint)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


__all__ = [
    "LoopResult",
    "SCHEDULES",
    "Trainer",
    "compiled_layers",
    "frozen_linear_weights_in_bf16",
    "label_loss_sum",
    "loss_units",
    "split_decay",
]
