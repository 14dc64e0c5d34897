"""Seconds per optimizer step and samples/s of the training recipes, beside transformers' LLaVA at matched size.

    .venv/bin/python bench/train_step.py [--presets tiny small] [--steps 5] [--warmup 2] [--json out.json]

For each preset and each of two stages, on image records of a small synthetic corpus:

- ``align_image``: ours = the recipe's model (one-expert UPM; LLM and encoder frozen) through ``Trainer.step``,
  with the frozen-feature cache on (steady state: every image already cached, as from the second epoch on) and off,
  both with the LLM's decoder layers compiled (``train.compile``), and eagerly with the cache on ("ours eager");
  "padded rows" = cache on, compiled, one padded row per sample instead of the stage's ``train.pack_rows``
  ("packing speedup" = padded / packed; ~1.0x for a stage that does not pack: tiny, small instruct);
  LLaVA = ``LlavaForConditionalGeneration`` with the same LLM and vision weights, its 2-layer MLP projector trains.
- ``instruct``: ours = LoRA (the stage's r and targets) on the LLM + the K-expert UPM trainable; LLaVA = the same
  LoRA on its LLM + its projector trainable.

Both sides see the same samples, batch size, precision (the stage's: bf16 autocast where native, the LLM's frozen
linear weights held in bf16), attention kernel in the LLM and the vision model (``train.attention``: eager on a CPU) and
optimizer (AdamW); LLaVA runs eagerly, so "LLaVA/ours-eager" compares like with like and "compile speedup" is
ours eager / ours compiled (cache on). The difference in work: our
UPM hands the LLM N+2 tokens per image (tiny: 6, small: 10), LLaVA hands it one token per patch (tiny: 16,
small: 64). Data loading is outside the timed step for both (batches are built beforehand) and timed on its own:
"batch build" = dataset + collator for one batch in the steady state; with the cache on, inputs whose features are
cached are not decoded at all. Timings are medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from onellm.train.common import add_lora, build_data, freeze, load_start, make_accelerator
from onellm.train.config import load_stage
from onellm.train.loop import Trainer, frozen_linear_weights_in_bf16
from onellm.train.recipes import build_trainer

REPO = Path(__file__).resolve().parents[1]


def timed(step, batches, warmup: int, steps: int) -> float:
    """Median seconds of ``step(batch)`` over ``steps`` calls after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        tick = time.perf_counter()
        step(batches[i % len(batches)])
        if i >= warmup:
            times.append(time.perf_counter() - tick)
    return statistics.median(times)


def stage_config(preset: str, name: str, corpus: Path, out: Path, cache: bool, compiled: bool, padded: bool = False):
    overrides = {
        "data.root": str(corpus),
        "output_dir": str(out),
        "train.cache_features": cache,
        "train.compile": compiled,
        **({"train.pack_rows": 0} if padded else {}),
        # image records only: the LLaVA side takes images and nothing else
        "data.sources": [{"modalities": ["image"]}],
        "data.replay": {"modalities": [], "fraction": 0.0},
    }
    if name == "instruct":  # start from the preset (K experts) instead of a finished align_rest
        overrides.update({"init_from.stage": None, "init_from.preset": preset})
    return load_stage(REPO / "configs" / preset / f"{name}.yaml", overrides)


def recipe_trainer(stage, accelerator):
    """(the :class:`Trainer` the recipe builds for ``stage``: its own model, LoRA and freezing, in training mode,
    without a validation set; the stage's data)."""
    model, processor = load_start(stage)
    wrapped = add_lora(model, stage.lora, stage.seed) if stage.lora else model
    _, groups = freeze(wrapped, stage.trainable)
    data = build_data(stage, processor, accelerator)
    trainer = build_trainer(stage, accelerator, wrapped, model, processor, replace(data, val=None), groups, False)
    trainer._train_mode()
    return trainer, data


def ours(stage, accelerator, warmup: int, steps: int) -> tuple[float, float, int, Trainer]:
    """The recipe's own model, freezing and Trainer.step; returns (seconds per step, seconds to build one batch
    (dataset + collator) in the steady state, batch size, trainer)."""
    trainer, data = recipe_trainer(stage, accelerator)
    size = stage.train.batch_size
    rows = [[(i * size + j) % len(data.train) for j in range(size)] for i in range(3)]
    batches = [trainer.collator([data.train[k] for k in row]) for row in rows]
    # warm the cache with every batch first: the timed steps are the steady state (all hits; compiled, if so)
    with trainer.training_setup():  # as the training loop runs them
        seconds = timed(lambda b: trainer.step([b]), batches, max(warmup, len(batches)), steps)
    # building a batch: with the cache on, the dataset skips decoding what the cache holds (issue 14)
    loading = timed(lambda row: trainer.collator([data.train[k] for k in row]), rows, warmup, steps)
    return seconds, loading, size, trainer


def llava(stage, trainer: Trainer, warmup: int, steps: int) -> float:
    """LLaVA with our LLM and vision weights, fed the same samples (each image = one token per patch)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    core = trainer.core
    processor = trainer.collator.processor
    image_id = processor.token_id("image")
    size = processor.options("image")["image_size"]
    patches = (size // core.encoder.patch_size) ** 2
    config = LlavaConfig(
        vision_config=core.config.vision_config.to_dict(),
        text_config=core.config.text_config.to_dict(),
        image_token_id=image_id,
        image_seq_length=patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",  # patch tokens only (the class token dropped)
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)

    def plain(module):  # our LLM's weights without LoRA layers (the instruct side wraps them)
        return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if "lora_" not in k}

    model.model.language_model.load_state_dict(plain(core.language_model.model))
    model.lm_head.load_state_dict(plain(core.language_model.lm_head))
    model.model.vision_tower.load_state_dict(core.encoder.model.state_dict())
    attention = stage.train.resolved_attention(trainer.acc.device.type)
    if attention is not None:  # the same attention kernel as our side, in the LLM and the vision tower
        model.model.language_model.set_attn_implementation(attention)
        model.model.vision_tower.set_attn_implementation(attention)
    model.requires_grad_(False)
    frozen_llm = (model.model.language_model, model.lm_head)  # before LoRA wraps the model (it adapts them in place)
    if stage.lora is not None:
        from peft import LoraConfig, get_peft_model

        targets = rf"^model\.language_model\..*\.({'|'.join(stage.lora.target_modules)})$"
        model = get_peft_model(model, LoraConfig(r=stage.lora.r, lora_alpha=stage.lora.alpha, target_modules=targets))
    for p in (model.base_model.model if stage.lora else model).model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def convert(batch):
        """Our batch -> LLaVA's: each run of N+2 placeholder ids becomes `patches` image ids."""
        rows, labels = [], []
        n = processor.num_placeholder_tokens
        for ids, lab, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            ids, lab = ids[mask.bool()].tolist(), lab[mask.bool()].tolist()
            out_ids, out_lab, i = [], [], 0
            while i < len(ids):
                if ids[i] == image_id:
                    out_ids += [image_id] * patches
                    out_lab += [-100] * patches
                    i += n
                else:
                    out_ids.append(ids[i])
                    out_lab.append(lab[i])
                    i += 1
            rows.append(out_ids)
            labels.append(out_lab)
        width = max(map(len, rows))
        pad = processor.tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels]),
            "pixel_values": batch["mm_inputs"]["image"],
        }

    size = stage.train.batch_size
    batches = [
        convert(trainer.collator([trainer.train_set[(i * size + j) % len(trainer.train_set)] for j in range(size)]))
        for i in range(3)
    ]

    def step(batch):
        with trainer._autocast():  # the same precision as our side (bf16 autocast where native)
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    bf16 = stage.train.resolved_precision(trainer.acc.device.type) == "bf16"
    held = frozen_linear_weights_in_bf16(*frozen_llm)  # as ours: the LLM's frozen linear weights
    with held if bf16 else contextlib.nullcontext():
        return timed(step, batches, warmup, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--stages", nargs="+", default=["align_image", "instruct"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    from onellm.instruct_data.synth import synthesize

    accelerator = make_accelerator()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        synthesize(corpus, per_modality=12, seed=0, modalities=["image"], workers=1)
        for preset in args.presets:
            for name in args.stages:
                row = {"preset": preset, "stage": name}
                # eager with the cache on, then compiled (train.compile) with the cache on and off (the first warm-up
                # step of a compiled run compiles); LLaVA takes the last run's batches, whose images are decoded
                for key, cache, compiled in (
                    ("eager", True, False),
                    ("padded", True, True),
                    ("cache_on", True, True),
                    ("cache_off", False, True),
                ):
                    out = Path(tmp) / f"{preset}-{name}-{key}"
                    stage = stage_config(preset, name, corpus, out, cache, compiled, padded=key == "padded")
                    seconds, loading, batch, trainer = ours(stage, accelerator, args.warmup, args.steps)
                    row[key], row["batch"] = seconds, batch
                    if key in ("cache_on", "cache_off"):
                        row["load_on" if cache else "load_off"] = loading
                row["llava"] = llava(stage, trainer, args.warmup, args.steps)  # eager
                rows.append(row)
                print(format_row(row), flush=True)
                del trainer

    print()
    print(
        f"# bench/train_step.py  {time.strftime('%Y-%m-%d')}  torch {torch.__version__}  {platform.machine()}  "
        f"threads {torch.get_num_threads()}  cpus {os.cpu_count()}  load {os.getloadavg()[0]:.1f}"
    )
    print(header())
    for row in rows:
        print(format_row(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def header() -> str:
    return (
        f"{'preset':<7}{'stage':<13}{'batch':>6}{'ours cache on':>16}{'ours cache off':>16}{'ours eager':>13}"
        f"{'LLaVA':>14}{'samples/s (on/off/eager/LLaVA)':>33}{'compile speedup':>17}{'LLaVA/ours-eager':>18}"
        f"{'cache speedup':>15}{'batch build on':>16}{'batch build off':>17}{'build speedup':>15}"
        f"{'padded rows':>14}{'packing speedup':>17}"
    )


def format_row(row: dict) -> str:
    b, on, off, eager, ll = row["batch"], row["cache_on"], row["cache_off"], row["eager"], row["llava"]
    rates = f"{b / on:.1f} / {b / off:.1f} / {b / eager:.1f} / {b / ll:.1f}"
    return (
        f"{row['preset']:<7}{row['stage']:<13}{b:>6}{on:>14.3f} s{off:>14.3f} s{eager:>11.3f} s{ll:>12.3f} s"
        f"{rates:>33}{eager / on:>16.2f}x{ll / eager:>17.2f}x{off / on:>14.2f}x"
        f"{row['load_on']:>14.4f} s{row['load_off']:>15.4f} s{row['load_off'] / row['load_on']:>14.1f}x"
        f"{row['padded']:>12.3f} s{row['padded'] / on:>16.2f}x"
    )


if __name__ == "__main__":
    main()
