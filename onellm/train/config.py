"""Stage and curriculum configs: YAML -> typed dataclasses, validated on load with errors that name the key.

A stage YAML (see ``configs/tiny/*.yaml``)::

    name: align_av3d                     # the stage folder under output_dir
    recipe: align                        # align | expand_experts | instruct  (onellm.train.recipes)
    output_dir: runs/tiny
    init_from: {stage: build_upm}        # or {preset: tiny, num_experts: 1}, or {path: some/checkpoint}
    data:
      root: data/synth-tiny              # media root; manifests are relative to it
      sources:                           # weighted mixture; a source = records whose inputs are all in `modalities`
        - {modalities: [video], weight: 1.0, tasks: [caption]}
      replay: {modalities: [image], fraction: 0.25}   # earlier modalities, balanced
    trainable: {tokenizer.audio: 1.0e-3, projector.*: 1.0e-3}   # group pattern -> learning rate ({} = nothing)
    train: {steps: 300, batch_size: 8, ...}

Overrides use dotted keys (``train.steps=20``), as on the command line (``--set``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from onellm.hardware import fast_bf16
from onellm.modalities import modality_names
from onellm.train.stage_folder import StageFolder
from onellm.typed_yaml import YamlConfigError, build, read_yaml


class ConfigError(YamlConfigError):
    """A config value is missing, unknown or of the wrong type. The message starts with ``file: key``."""


# --- the schema -----------------------------------------------------------------------------------------------------


@dataclass
class SourceConfig:
    """Records of ``manifest`` (relative to ``data.root``) whose inputs are all in ``modalities``."""

    modalities: list[str]
    weight: float = 1.0
    manifest: str = "train.jsonl"
    tasks: list[str] | None = None  # e.g. [caption]; None = every task
    kinds: list[str] | None = None  # records whose meta.question_kind is one of these (e.g. [presence]); None = all
    name: str | None = None  # default: the modalities joined by "+"

    @property
    def label(self) -> str:
        return self.name or "+".join(self.modalities)


@dataclass
class ReplayConfig:
    """Earlier modalities mixed back in: ``fraction`` of the samples, split equally among ``modalities``."""

    modalities: list[str] = field(default_factory=list)
    fraction: float = 0.0
    manifest: str = "train.jsonl"
    tasks: list[str] | None = None


# What API clients commonly open a chat with; the system turns of ``data.system_turns`` draw from these by default.
SYSTEM_TEXTS = [
    "You are a helpful assistant.",
    "You are a helpful AI assistant.",
    "You are a helpful, concise assistant. Answer the user's questions.",
    "You are an assistant that can see images and hear audio. Describe what you are given accurately.",
    "Answer as briefly and accurately as you can.",
    "You are a multimodal assistant.",
]


@dataclass
class SystemTurnsConfig:
    """A system turn before ``share`` of the training conversations, its text one of ``texts`` (chosen per record
    from the stage's seed); 0 = none, as the manifests have."""

    share: float = 0.0
    texts: list[str] = field(default_factory=lambda: list(SYSTEM_TEXTS))


@dataclass
class DataConfig:
    root: str
    sources: list[SourceConfig]
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    val: str | None = "val.jsonl"  # validation manifest (filtered to the stage's modalities); null = none
    batching: Literal["per_source", "mixed"] = "per_source"
    max_length: int = 512  # tokens after placeholder expansion; longer records are rejected, never truncated
    on_error: Literal["skip", "fail"] = "skip"
    num_workers: int = 0  # DataLoader worker processes (0 = decode in the training process)
    # Up to this many single-turn training records that share their inputs (a caption and the questions about one
    # image) are merged into one multi-turn conversation (instruct_data/packing.py); 1 = one record per sample.
    turns_per_input: int = 1
    # The fraction of inputs whose records turns_per_input merges (the rest stay single turns); 1 = all.
    multi_turn_share: float = 1.0
    # N > 1: the records of N batches are drawn at once, sorted by token length and cut into N batches again, so a
    # batch pads little (instruct_data/mixture.py); 0 or 1 = off. Padding to a batch's longest row was 17 % of the
    # small preset's image tokens; grouped, an fp32 alignment step took 0.825x the time (BENCHMARKS.md).
    group_by_length: int = 0
    system_turns: SystemTurnsConfig = field(default_factory=SystemTurnsConfig)


@dataclass
class TrainConfig:
    steps: int
    batch_size: int  # per process and micro step; global batch = batch_size x processes x grad_accum
    grad_accum: int = 1
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    # How a global batch's label tokens are averaged: "token" = every label token weighs the same (a 16-token caption
    # outweighs a one-word answer 8:1); "sample" = every row's mean token loss weighs the same, so a short answer
    # counts as much as a caption (measured on the long profile: no change; BENCHMARKS.md, "The long profile");
    # "turn" = every answer's (assistant turn's) mean token loss weighs the same, so an answer merged into a
    # multi-turn conversation (data.turns_per_input) counts what it would alone; single-turn rows: as "sample".
    # The validation loss is averaged the same way.
    loss_weighting: Literal["token", "sample", "turn"] = "token"
    # "auto": bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX),
    # else fp32; see fast_bf16.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    eval_interval: int = 0  # optimizer steps between validation passes; 0 = only at the end
    eval_samples: int = 64
    save_interval: int = 0  # optimizer steps between resumable checkpoints; 0 = only the final checkpoint
    save_limit: int = 2  # resumable checkpoints kept (oldest deleted first)
    log_interval: int = 10
    cache_features: bool = True  # frozen-feature cache for modalities whose path up to the UPM is frozen
    # The attention kernel of the LLM and the encoder while training: "auto" = "eager" on a CPU (torch's CPU SDPA
    # backward took 27 % of a small-preset alignment step; eager: 1.18 -> 0.87 s, BENCHMARKS.md), the model's own
    # elsewhere. Checkpoints and inference keep the model's own kernel.
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    # torch.compile the LLM's decoder layers for the training steps (inductor; on a CPU it builds C++ kernels with
    # the system's compiler, so the first step takes the compilation: 25-40 s cold for the small preset). It fuses
    # what autocast and the norms spend between the matrix products.
    compile: bool = False
    # Lay each micro-batch's samples end to end in at most this many rows instead of one padded row each
    # (instruct_data/collator.py, pack): the same samples and loss, fewer padded positions through the LLM. 0 = off.
    pack_rows: int = 0
    # Weight of the auxiliary word loss of a lexical end tag (projector end_tag "lexical"; onellm/train/lexical.py):
    # the tag's word distribution learns the content words of each row's target text. 0 = off. 0.5 is what was
    # measured (BENCHMARKS.md, "A lexical end tag").
    lexical_loss: float = 0.0
    # Weight of an in-batch contrastive loss between each input's mean soft token and the mean word embedding of its
    # row's target text (onellm/train/contrastive.py; BLIP-2's image-text contrastive term, issue 11's first
    # candidate). 0 = off. contrastive_temperature divides the cosine similarities.
    contrastive_loss: float = 0.0
    contrastive_temperature: float = 0.07
    # The text side: "row" = the content words of the input's row's target text; "input" = the distinctive words
    # (slot_word_share) of everything said about the input in the training set (its caption and the answers).
    contrastive_text: Literal["row", "input"] = "row"
    # Word slots (projector start_tag and end_tag "lexical") fitted once more at the end of the stage, without the
    # LLM: the stage's training inputs pass the projector once, then this many Adam steps (batches of
    # word_fit_batch, rate word_fit_lr) fit only the slots' word projections to each input's distinctive words
    # (onellm/train/lexical.py, fit_word_slots). 0 = off. Needs train.lexical_loss (the word targets) and one
    # process. word_fit_schedule: the rate stays (constant) or decays to 0 over the steps (cosine: worse on the
    # demo). BENCHMARKS.md, "The demo", 2026-12-08; bench/word_fit.py compares fits on a finished stage.
    word_fit_steps: int = 0
    word_fit_batch: int = 64
    word_fit_lr: float = 1.0e-2
    word_fit_schedule: Literal["constant", "cosine"] = "constant"
    # Word slots are taught only the words said of fewer than this share of the modality's distinct training inputs
    # (onellm/train/lexical.py, distinctive_words): a word most inputs have says little about any one of them, and
    # without the limit the slots learned those (an fMRI caption's "picture", in every input). On the synthetic corpus
    # colours are in about 1/8 of the inputs, shapes 1/6, and each of a two-valued attribute's words ("small" /
    # "large") in about half: at 0.45 those are left out too. 0.6 on the small curriculum (BENCHMARKS.md, "The demo",
    # 2026-12-05 11:30): distance and size questions rose, normal's captions fell onto fewer sentences; one run.
    slot_word_share: float = 0.45
    # Weight of a coverage term beside the slots' matching (onellm/train/lexical.py, slot_loss): every distinctive
    # word of an input should be named by some slot (noisy-OR over the slots), so a word always said of an input the
    # slots do not name yet still gets a gradient. 0 = the matching alone: a slot then kept the word it named first
    # (a pulse's count, which the projector reads badly) and never learned the kind ("pulse").
    slot_coverage: float = 0.0

    def resolved_attention(self, device_type: str) -> str | None:
        """The attention implementation to train with on ``device_type``; None keeps the model's."""
        if self.attention != "auto":
            return self.attention
        return "eager" if device_type == "cpu" else None

    def resolved_precision(self, device_type: str) -> str:
        """``precision`` with "auto" decided for ``device_type`` ("cpu", "cuda"): "fp32" or "bf16"."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if fast_bf16(device_type) else "fp32"


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    qlora: bool = False  # load the LLM in 4-bit nf4 (bitsandbytes) and train LoRA on top


@dataclass
class InitFrom:
    """Exactly one of ``preset`` (+ ``preset_args``), ``stage`` (a previous stage's final checkpoint in the same
    output_dir) or ``path`` (any onellm checkpoint folder)."""

    preset: str | None = None
    preset_args: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    path: str | None = None
    num_experts: int | None = None  # replace the UPM by a fresh one with this many experts (stage 1: 1)


@dataclass
class ExpandConfig:
    num_experts: int = 3


@dataclass
class StageConfig:
    name: str
    recipe: Literal["align", "expand_experts", "instruct"]
    output_dir: str
    init_from: InitFrom
    seed: int = 0
    data: DataConfig | None = None
    trainable: dict[str, float] = field(default_factory=dict)
    lora: LoraSettings | None = None
    train: TrainConfig | None = None
    expand: ExpandConfig | None = None
    source: str = ""  # the YAML file this came from (set by the loader)

    @property
    def modalities(self) -> list[str]:
        """Every modality this stage reads: its sources' and the replayed ones (first-seen order)."""
        if self.data is None:
            return []
        names = [m for s in self.data.sources for m in s.modalities] + list(self.data.replay.modalities)
        return list(dict.fromkeys(names))

    @property
    def stage_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def folder(self) -> StageFolder:
        """The stage's output folder: its DONE marker, outputs and loss history."""
        return StageFolder(self.stage_dir, self.name)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


@dataclass
class CurriculumConfig:
    stages: list[StageConfig]
    source: str = ""


# --- loading --------------------------------------------------------------------------------------------------------


def _check_stage(stage: StageConfig) -> None:
    """Cross-field rules that types cannot express."""
    known = modality_names()
    init = stage.init_from
    if sum(x is not None for x in (init.preset, init.stage, init.path)) != 1:
        raise ConfigError("init_from: set exactly one of preset, stage, path")
    if init.num_experts is not None and init.num_experts < 1:
        raise ConfigError(f"init_from.num_experts: must be >= 1, got {init.num_experts}")
    if stage.recipe == "expand_experts":
        if stage.expand is None:
            raise ConfigError("expand: required for recipe expand_experts (e.g. {num_experts: 3})")
        if stage.expand.num_experts < 1:
            raise ConfigError(f"expand.num_experts: must be >= 1, got {stage.expand.num_experts}")
        for key in ("data", "train", "lora"):
            if getattr(stage, key) is not None:
                raise ConfigError(f"{key}: not used by recipe expand_experts (it trains nothing)")
        if stage.trainable:
            raise ConfigError("trainable: recipe expand_experts trains nothing; leave it empty")
        return
    for key in ("data", "train"):
        if getattr(stage, key) is None:
            raise ConfigError(f"{key}: required for recipe {stage.recipe}")
    if stage.recipe == "instruct" and stage.lora is None:
        raise ConfigError("lora: required for recipe instruct (e.g. {r: 16, alpha: 32})")
    if stage.recipe != "instruct" and stage.lora is not None:
        raise ConfigError(f"lora: only the instruct recipe wraps the LLM with LoRA (this stage is {stage.recipe})")
    data, train = stage.data, stage.train
    if not data.sources:
        raise ConfigError("data.sources: at least one source is required")
    for i, source in enumerate(data.sources):
        if not source.modalities:
            raise ConfigError(f"data.sources[{i}].modalities: at least one modality is required")
        if not source.weight > 0:
            raise ConfigError(f"data.sources[{i}].weight: must be > 0, got {source.weight}")
    for where, names in [(f"data.sources[{i}].modalities", s.modalities) for i, s in enumerate(data.sources)] + [
        ("data.replay.modalities", data.replay.modalities)
    ]:
        for name in names:
            if name not in known:
                raise ConfigError(f"{where}: unknown modality {name!r}; known: {', '.join(known)}")
    labels = [s.label for s in data.sources]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"data.sources: names must be unique (set `name:`), got {labels}")
    if not 0.0 <= data.replay.fraction < 1.0:
        raise ConfigError(f"data.replay.fraction: must be in [0, 1), got {data.replay.fraction}")
    if data.replay.fraction > 0 and not data.replay.modalities:
        raise ConfigError("data.replay.modalities: a replay fraction needs modalities to replay")
    if data.group_by_length < 0:
        raise ConfigError(f"data.group_by_length: must be >= 0 (0 or 1 = off), got {data.group_by_length}")
    if not 0.0 <= data.system_turns.share <= 1.0:
        raise ConfigError(f"data.system_turns.share: must be in [0, 1], got {data.system_turns.share}")
    if data.system_turns.share > 0 and not all(t.strip() for t in data.system_turns.texts or [""]):
        raise ConfigError("data.system_turns.texts: a share above 0 needs at least one non-empty text")
    if not 0.0 <= data.multi_turn_share <= 1.0:
        raise ConfigError(f"data.multi_turn_share: must be in [0, 1], got {data.multi_turn_share}")
    if data.turns_per_input < 1:
        raise ConfigError(f"data.turns_per_input: must be >= 1 (1 = one record per sample), got {data.turns_per_input}")
    for key in ("steps", "batch_size", "grad_accum", "log_interval", "save_limit"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {getattr(train, key)}")
    for key in ("warmup_steps", "eval_interval", "eval_samples", "save_interval"):
        if getattr(train, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(train, key)}")
    if train.word_fit_batch < 1:
        raise ConfigError(f"train.word_fit_batch: must be >= 1 (inputs per word-fit step), got {train.word_fit_batch}")
    if train.slot_coverage < 0:
        raise ConfigError(f"train.slot_coverage: must be >= 0, got {train.slot_coverage}")
    if not 0 < train.slot_word_share <= 1:
        raise ConfigError(f"train.slot_word_share: must be in (0, 1], got {train.slot_word_share}")
    if train.warmup_steps >= train.steps:
        raise ConfigError(f"train.warmup_steps: {train.warmup_steps} must be < train.steps ({train.steps})")
    if data.max_length < 8:
        raise ConfigError(f"data.max_length: must be >= 8, got {data.max_length}")
    if not stage.trainable:
        raise ConfigError(f"trainable: recipe {stage.recipe} needs at least one group to train (pattern: lr)")
    for pattern, lr in stage.trainable.items():
        if not lr > 0:
            raise ConfigError(f"trainable.{pattern}: learning rate must be > 0, got {lr}")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "train.steps", 5)``: d["train"]["steps"] = 5, creating mappings on the way."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.steps=5", "data.root=/tmp/x"]`` -> ``{"train.steps": 5, ...}`` (values parsed as YAML scalars)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=20")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    return read_yaml(path, ConfigError)


def stage_from_dict(
    data: dict[str, Any], source: str = "<dict>", overrides: dict[str, Any] | None = None, shared: bool = False
) -> StageConfig:
    """Validate a stage mapping (after applying dotted ``overrides``).

    ``shared``: the overrides are meant for every stage of a curriculum, so one that targets a section the stage
    does not have (``train.steps`` on the expand_experts step) is left out for this stage instead of added.
    """
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for key, value in (overrides or {}).items():
        section = key.split(".")[0]
        if shared and "." in key and isinstance(data, dict) and section not in data:
            continue
        set_dotted(data, key, value)
    try:
        stage = build(StageConfig, data)
        _check_stage(stage)
    except YamlConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    stage.source = source
    return stage


def load_stage(path: str | Path, overrides: dict[str, Any] | None = None, shared: bool = False) -> StageConfig:
    """A stage YAML -> :class:`StageConfig`; any problem raises :class:`ConfigError` naming the file and key."""
    path = Path(path)
    return stage_from_dict(_read_yaml(path), str(path), overrides, shared)


def is_curriculum(path: str | Path) -> bool:
    data = _read_yaml(Path(path))
    return isinstance(data, dict) and "stages" in data


def _stage_entry(path: Path, index: int, entry: Any) -> tuple[str, dict[str, Any]]:
    """A curriculum's ``stages[index]``: ``PATH`` or ``{stage: PATH, set: {...}}`` -> (path, its own overrides)."""
    where = f"{path}: stages[{index}]"
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, dict) or not isinstance(entry.get("stage"), str):
        raise ConfigError(f"{where}: expected a stage YAML path or a mapping {{stage: PATH, set: {{...}}}}")
    unknown = sorted(set(entry) - {"stage", "set"})
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key; allowed here: stage, set")
    own = entry.get("set") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"{where}: set: expected a mapping of dotted keys to values")
    return entry["stage"], own


def load_curriculum(path: str | Path, overrides: dict[str, Any] | None = None) -> CurriculumConfig:
    """A curriculum YAML: ``stages`` (stage YAML paths relative to this file, run in order) and ``set`` (dotted
    overrides applied to every stage, e.g. ``output_dir``). Command-line overrides win over ``set``; an override
    of a section a stage lacks (``train.*`` for expand_experts) skips that stage. A stage entry may also be a
    mapping ``{stage: PATH, set: {dotted: value}}``: overrides for that stage alone (a longer profile of the same
    stages), applied before the curriculum's and the command line's."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `stages`")
    unknown = sorted(set(data) - {"stages", "set"})
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key; allowed here: stages, set")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{path}: stages: expected a non-empty list of stage YAML paths")
    shared = data.get("set") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: set: expected a mapping of dotted keys to values")
    merged = {**shared, **(overrides or {})}
    loaded = [
        load_stage(path.parent / stage, {**own, **merged}, shared=True)
        for stage, own in (_stage_entry(path, i, entry) for i, entry in enumerate(stages))
    ]
    names = [s.name for s in loaded]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: stages: stage names must be unique, got {names}")
    for index, stage in enumerate(loaded):
        if stage.init_from.stage is not None and stage.init_from.stage not in names[:index]:
            raise ConfigError(
                f"{stage.source}: init_from.stage: {stage.init_from.stage!r} is not an earlier stage of {path} "
                f"(earlier: {names[:index]})"
            )
    return CurriculumConfig(stages=loaded, source=str(path))


__all__ = [
    "ConfigError",
    "CurriculumConfig",
    "DataConfig",
    "ExpandConfig",
    "InitFrom",
    "LoraSettings",
    "ReplayConfig",
    "SourceConfig",
    "StageConfig",
    "TrainConfig",
    "is_curriculum",
    "load_curriculum",
    "load_stage",
    "parse_overrides",
    "set_dotted",
]
