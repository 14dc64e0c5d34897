"""Steps that every recipe takes: load the starting model, reshape the UPM, wrap LoRA, pick what trains, build the
data, save checkpoints. Recipes (:mod:`onellm.train.recipes`) call these in order; nothing here trains."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onellm.instruct_data.collator import Collator, SystemTurns, encode_conversation
from onellm.instruct_data.loader import (
    DataValidationError,
    ManifestDataset,
    Rejection,
    ValidationReport,
    validate_manifest,
)
from onellm.instruct_data.mixture import Mixture, Source, select, with_replay
from onellm.instruct_data.packing import merge_by_input
from onellm.instruct_data.schema import Record, record_problems
from onellm.modeling import OneLLMForConditionalGeneration, build_projector
from onellm.processing import OneLLMProcessor
from onellm.projectors.upm import UniversalProjectionModule, expand_experts
from onellm.train import stage_folder
from onellm.train.checkpoint import write_atomically
from onellm.train.config import ConfigError, LoraSettings, StageConfig
from onellm.train.groups import group_of, parameter_groups, set_trainable

DONE = stage_folder.DONE


def log(message: str) -> None:
    print(f"[onellm train] {message}", file=sys.stderr, flush=True)


def make_accelerator():
    """One accelerate ``Accelerator`` per process: plain, DDP (torchrun / accelerate launch), FSDP or DeepSpeed,
    as the launcher's environment says. DDP tolerates parameters that a batch does not reach (the heads of
    modalities absent from it)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Without a GPU, accelerate only reads torchrun's WORLD_SIZE when told it runs on CPUs (then: gloo).
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


# --- stage bookkeeping ----------------------------------------------------------------------------------------------


def is_done(stage: StageConfig) -> bool:
    return stage_folder.StageFolder(stage.stage_dir, stage.name).done


def mark_done(stage: StageConfig, outputs: dict[str, str], extra: dict[str, Any] | None = None) -> None:
    stage_folder.StageFolder(stage.stage_dir, stage.name).mark_done(outputs, extra)


def init_path(stage: StageConfig) -> Path | None:
    """The checkpoint folder ``init_from`` points at (None for a preset)."""
    init = stage.init_from
    if init.stage is not None:
        return Path(stage.output_dir) / init.stage / "final"
    return Path(init.path) if init.path is not None else None


# --- models ---------------------------------------------------------------------------------------------------------


def missing_start_modalities(stage: StageConfig, has: list[str]) -> str | None:
    """One line naming the modalities ``stage`` reads that its start model (with modalities ``has``) lacks."""
    absent = [m for m in stage.modalities if m not in has]
    if not absent:
        return None
    init = stage.init_from
    start = f"stage {init.stage!r} ({init_path(stage)})" if init.stage else str(init.path or f"preset {init.preset!r}")
    return (
        f"{stage.source}: init_from: {start} has no {', '.join(absent)} (it has {', '.join(has)}); start from a model"
        " built with them, e.g. `onellm build PRESET --modalities all`, or --set init_from.preset_args.modalities=all"
    )


def load_start(
    stage: StageConfig, quantize_llm: bool = False
) -> tuple[OneLLMForConditionalGeneration, OneLLMProcessor]:
    """The model the stage starts from: ``init_from`` (a preset, or a checkpoint folder), with the UPM replaced by a
    fresh one of ``init_from.num_experts`` experts when set. ``quantize_llm`` loads the LLM's linear layers in 4-bit
    nf4 through bitsandbytes (QLoRA); encoder, tokenizers, UPM and LM head stay in full precision.

    Deterministic for a stage (seeded), so a restart rebuilds exactly the frozen weights the run started with.
    """
    from onellm.presets import build_preset

    init = stage.init_from
    torch.manual_seed(stage.seed)
    path = init_path(stage)
    if path is None:
        model, processor = build_preset(init.preset, **init.preset_args)
        if quantize_llm:  # quantisation happens while loading: go through a temporary checkpoint
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                model = _load_model(Path(folder), quantize_llm, stage)
    else:
        if not (path / "config.json").is_file():
            where = f"stage {init.stage!r} has not finished" if init.stage else "no checkpoint there"
            raise FileNotFoundError(f"{stage.source}: init_from: {path} holds no checkpoint ({where})")
        processor = OneLLMProcessor.from_pretrained(str(path))
        model = _load_model(path, quantize_llm, stage)
    problem = missing_start_modalities(stage, model.config.modalities)
    if problem:
        raise ConfigError(problem)
    if init.num_experts is not None and model.config.projector_config["num_experts"] != init.num_experts:
        torch.manual_seed(stage.seed)
        set_projector(model, fresh_projector(model, init.num_experts))
    return model, processor


def _load_model(path: Path, quantize_llm: bool, stage: StageConfig) -> OneLLMForConditionalGeneration:
    if not quantize_llm:
        return OneLLMForConditionalGeneration.from_pretrained(str(path))
    from transformers import BitsAndBytesConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute = torch.bfloat16 if stage.train and stage.train.resolved_precision(device) == "bf16" else torch.float32
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        # Only the LLM's blocks are quantised: the parts that train or feed the UPM keep full precision.
        llm_int8_skip_modules=["encoder", "mm_tokenizers", "projector", "lm_head"],
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return OneLLMForConditionalGeneration.from_pretrained(
        str(path), quantization_config=quantization, device_map=device
    )


def fresh_projector(model: OneLLMForConditionalGeneration, num_experts: int) -> UniversalProjectionModule:
    """A randomly initialised UPM of the model's shape with ``num_experts`` experts (stage 1 uses one)."""
    return build_projector(model.config, model.encoder, num_experts=num_experts)


def set_projector(model: OneLLMForConditionalGeneration, projector: UniversalProjectionModule) -> None:
    """Install ``projector`` and record its expert count in the config, so ``save_pretrained`` round-trips."""
    model.projector = projector
    model.config.projector_config = {**model.config.projector_config, "num_experts": projector.num_experts}


def upm_from_heads(projector: UniversalProjectionModule, source: str, num_experts: int, modalities: list[str]):
    """OneLLM's stage-1 -> 2 step: the trained one-expert projector of ``source`` (e.g. image) copied into
    ``num_experts`` experts and into every modality's head (heads of other modalities are not carried over:
    they were never trained)."""
    trained = copy.deepcopy(projector)
    trained.heads = nn.ModuleDict({source: trained.heads[source]})
    return expand_experts(trained, num_experts, modalities)


def add_lora(model: nn.Module, settings: LoraSettings, seed: int):
    """Wrap the model with PEFT LoRA on the LLM's linear layers named in ``settings.target_modules``.

    The regex anchors at ``language_model.``, so the encoder, tokenizers and UPM never get adapters. The adapter's
    parameter names are those of the whole OneLLM model (``base_model.model.language_model.model.layers...``).
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = rf"^language_model\..*\.({'|'.join(settings.target_modules)})$"
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets)
    return get_peft_model(model, config)


def freeze(model: nn.Module, trainable: dict[str, float]) -> tuple[dict[str, int], list]:
    """Train exactly the groups matching ``trainable``'s patterns; returns (counts per group, optimizer groups).

    Optimizer groups are ``(pattern, lr, [(name, param)])``: a parameter takes the learning rate of the first
    pattern its group matches.
    """
    counts = set_trainable(model, list(trainable))
    groups: dict[str, list] = {pattern: [] for pattern in trainable}
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = group_of(name)
            pattern = next(p for p in trainable if fnmatch.fnmatchcase(group, p))
            groups[pattern].append((name, param))
    return counts, [(pattern, trainable[pattern], params) for pattern, params in groups.items() if params]


def trainable_table(model: nn.Module, counts: dict[str, int]) -> str:
    """What trains, per group, and what is frozen: printed at the start of every stage."""
    numel = {name: p.numel() for name, p in model.named_parameters()}
    sizes = {group: sum(numel[n] for n in names) for group, names in parameter_groups(model).items()}
    total = sum(sizes.values())
    lines = [f"{'group':<20}{'trainable':>14}{'of':>14}"]
    for group in sorted(sizes):
        lines.append(f"{group:<20}{counts.get(group, 0):>14,}{sizes[group]:>14,}")
    trained = sum(counts.values())
    lines.append(f"{'total':<20}{trained:>14,}{total:>14,}  ({100 * trained / max(total, 1):.2f}% trainable)")
    return "\n".join(lines)


def save_checkpoint(model: nn.Module, processor: OneLLMProcessor, target: Path, state_dict: dict | None = None) -> Path:
    """A full ``from_pretrained``-loadable checkpoint, written to a temp dir and renamed into place.

    ``state_dict``: the gathered weights when the model is sharded (FSDP / DeepSpeed), see :func:`gathered_state`.
    """

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder), state_dict=state_dict)
        processor.save_pretrained(str(folder))

    return write_atomically(target, write)


def gathered_state(accelerator, prepared: nn.Module) -> dict | None:
    """The full state dict of a model sharded by FSDP / DeepSpeed (a collective: every process calls it; the main
    process gets the tensors). None for plain and DDP runs, where every process holds the whole model."""
    if accelerator.distributed_type.name not in ("FSDP", "DEEPSPEED"):
        return None
    return accelerator.get_state_dict(prepared)


# --- data -----------------------------------------------------------------------------------------------------------


@dataclass
class StageData:
    train: ManifestDataset
    val: ManifestDataset | None
    mixture: Mixture
    reports: list[ValidationReport] = field(default_factory=list)


def _validation_key(manifest: Path, stage: StageConfig, processor: OneLLMProcessor) -> str:
    digest = hashlib.sha256(manifest.read_bytes())
    options = {m: processor.options(m) for m in stage.modalities}
    facts = [str(Path(stage.data.root).resolve()), sorted(stage.modalities), options, stage.data.max_length]
    digest.update(json.dumps(facts + [processor.num_placeholder_tokens], sort_keys=True, default=list).encode())
    return digest.hexdigest()[:20]


def validated(manifest: Path, stage: StageConfig, processor: OneLLMProcessor, accelerator) -> ValidationReport:
    """Validate ``manifest`` for this stage once (cached under ``output_dir/.validation`` by manifest content, media
    root, the stage's modalities, their options and max_length); every process gets the same report. Media files
    changed after validation are not noticed (the dataset then raises naming the record).

    Rejected records are listed in the report (and the stage summary); with ``data.on_error: fail`` any rejection
    stops the stage with the full list.
    """
    cache = (
        Path(stage.output_dir) / ".validation" / f"{manifest.stem}-{_validation_key(manifest, stage, processor)}.json"
    )
    if accelerator.is_main_process and not cache.is_file():
        report = validate_manifest(
            manifest, stage.data.root, processor, "skip", max_length=stage.data.max_length, modalities=stage.modalities
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(report.to_dict()), encoding="utf-8")
        tmp.replace(cache)
    accelerator.wait_for_everyone()
    saved = json.loads(cache.read_text(encoding="utf-8"))
    keep = set(saved["kept_ids"])
    kept = []
    for record in _parsable_records(manifest):
        if record.id in keep:
            kept.append(record)
            keep.discard(record.id)  # a duplicate id later in the file was rejected
    report = ValidationReport(manifest=str(manifest), kept=kept, rejected=[Rejection(**r) for r in saved["rejected"]])
    if stage.data.on_error == "fail" and report.rejected:
        raise DataValidationError(report)
    return report


def _parsable_records(manifest: Path) -> list[Record]:
    """Records of a manifest whose line parses and passes the schema (the others are validation's rejections)."""
    records = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not record_problems(data):
            records.append(Record.from_dict(data, f"{manifest.name}:{number}"))
    return records


def drawn_by(record: Record, modalities: list[str], tasks: list[str] | None, kinds: list[str] | None) -> bool:
    """Whether a data source (or replay) of these ``modalities``, ``tasks`` and question ``kinds`` takes the record:
    all its inputs in ``modalities``, its task and its ``meta.question_kind`` listed (None: any)."""
    mods = {item.modality for item in record.inputs}
    return (
        bool(mods)
        and mods <= set(modalities)
        and (tasks is None or record.task in tasks)
        and (kinds is None or (record.meta or {}).get("question_kind") in kinds)
    )


def stage_collator(stage: StageConfig, processor: OneLLMProcessor) -> Collator:
    """The collator of the stage's rows: ``data.max_length``, and ``data.system_turns`` when its share is above 0."""
    cfg = stage.data.system_turns
    turns = SystemTurns(tuple(cfg.texts), cfg.share, stage.seed) if cfg.share > 0 else None
    return Collator(processor, max_length=stage.data.max_length, system_turns=turns)


def build_data(stage: StageConfig, processor: OneLLMProcessor, accelerator) -> StageData:
    """Validated records of the stage's manifests -> dataset + weighted mixture (with balanced replay) + val set."""
    cfg = stage.data
    root = Path(cfg.root)
    manifests = list(
        dict.fromkeys([s.manifest for s in cfg.sources] + ([cfg.replay.manifest] if cfg.replay.modalities else []))
    )
    reports, records, origin = [], [], []
    for name in manifests:
        report = validated(root / name, stage, processor, accelerator)
        reports.append(report)
        records += report.kept
        origin += [name] * len(report.kept)
    merged: list[Record] = []  # records of the sources' multi-turn conversations (data.turns_per_input)

    def fits(record: Record) -> bool:
        return len(encode_conversation(processor, record.conversation)[0]) <= cfg.max_length

    def source(
        label: str,
        manifest: str,
        modalities: list[str],
        tasks: list[str] | None,
        weight: float,
        kinds: list[str] | None = None,
    ) -> Source:
        indices = select(
            len(records), lambda i: origin[i] == manifest and drawn_by(records[i], modalities, tasks, kinds)
        )
        if not indices:
            raise ValueError(f"{stage.source}: data source {label!r} matched no valid record in {root / manifest}")
        if cfg.turns_per_input > 1:
            start = len(records) + len(merged)
            chosen = [records[i] for i in indices]
            merged.extend(merge_by_input(chosen, cfg.turns_per_input, stage.seed, fits, cfg.multi_turn_share))
            indices = list(range(start, len(records) + len(merged)))
        return Source(label, indices, weight)

    main = [source(s.label, s.manifest, s.modalities, s.tasks, s.weight, s.kinds) for s in cfg.sources]
    replay_cfg = cfg.replay
    replay = [source(m, replay_cfg.manifest, [m], replay_cfg.tasks, 1.0) for m in replay_cfg.modalities]
    lengths = None
    if cfg.group_by_length > 1:  # token counts after placeholder expansion (and system turns), what the collator pads
        collator = stage_collator(stage, processor)
        lengths = [len(collator.tokens(r.id, r.conversation)[0]) for r in records + merged]
    sources = with_replay(main, replay, replay_cfg.fraction)
    mixture = Mixture(sources, stage.seed, cfg.batching, lengths, cfg.group_by_length)
    dataset = ManifestDataset(records + merged, root, processor)

    val = None
    if cfg.val is not None and (root / cfg.val).is_file():
        val_report = validated(root / cfg.val, stage, processor, accelerator)
        reports.append(val_report)
        # the validation records that some training source (or replay) would draw: same modalities, tasks, kinds
        specs = [(s.modalities, s.tasks, s.kinds) for s in cfg.sources]
        specs += [([m], replay_cfg.tasks, None) for m in replay_cfg.modalities]

        def wanted(record: Record) -> bool:
            return any(drawn_by(record, *spec) for spec in specs)

        val = ManifestDataset([r for r in val_report.kept if wanted(r)], root, processor)
    return StageData(train=dataset, val=val, mixture=mixture, reports=reports)


__all__ = [
    "StageData",
    "add_lora",
    "build_data",
    "stage_collator",
    "fresh_projector",
    "freeze",
    "gathered_state",
    "init_path",
    "is_done",
    "load_start",
    "log",
    "make_accelerator",
    "mark_done",
    "save_checkpoint",
    "set_projector",
    "trainable_table",
    "upm_from_heads",
    "validated",
]
