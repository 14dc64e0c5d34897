"""Can LoRA learn "Is this a cube?" from a modality's tokens, and in what form must the attribute reach the LLM?

    .venv/bin/python bench/verify_word_tokens.py --checkpoint runs/demo-long/train/align_rest/final \
        --data runs/demo-long/data [--modes tags blend word two_words] [--steps 150] [--json out.json]

The synthetic corpus asks yes/no questions that name an attribute (point: "Is this a cube?", fMRI: "Is the shape
pink?"), and after the long profile they sit at their input-blind answer while "What shape is it?" is answered
(BENCHMARKS.md, "Verification questions"). ``bench/verify_in_words.py`` showed that LoRA learns the comparison in
about 50 steps when the attribute is given in words. This bench asks which form of the attribute, placed in the
soft-token sequence of a trained checkpoint, lets LoRA learn it. For each mode it trains the instruct stage's LoRA
(configs/small/instruct.yaml: r 8, lr 2e-4, the UPM frozen) on the point and fMRI presence questions of the corpus's
training split, alternating batches of 8, and scores the test split's presence questions by the next-token logits of
"yes" against "no" before and after.

- ``tags``: the checkpoint's own start and end tags (what the curriculum trains).
- ``blend``: the end tag replaced by the mean of the embeddings of the input's colour word and shape word (what one
  tag naming two words at 50/50 hands the LLM).
- ``word``: the end tag replaced by the embedding of the asked attribute's word (point: its shape, fMRI: its colour).
- ``two_words``: the start tag replaced by the colour word and the end tag by the shape word.

The words come from the corpus's generator attributes (``meta.attributes``): an upper bound for what learned word
tags could hand over, not a model. Prints one line per mode and, with ``--json``, writes them.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from onellm.diagnose import read_split
from onellm.instruct_data.loader import ManifestDataset
from onellm.train.common import add_lora, build_data, freeze, load_start, make_accelerator
from onellm.train.config import load_stage
from onellm.train.recipes import build_trainer

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("point", "fmri")
ASKED = {"point": "shape", "fmri": "colour"}  # the attribute each modality's presence question names
MODES = ("tags", "blend", "word", "two_words")


def presence_corpus(data: Path, out: Path) -> None:
    """``out``: the corpus's point and fMRI presence questions (train and test manifests; media linked)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "media").symlink_to((data / "media").resolve())
    for split in ("train", "test"):
        with (data / f"{split}.jsonl").open() as src, (out / f"{split}.jsonl").open("w") as dst:
            for line in src:
                row = json.loads(line)
                if (
                    row["inputs"][0]["modality"] in MODALITIES
                    and row.get("meta", {}).get("question_kind") == "presence"
                ):
                    dst.write(line)


def word_vector(tokenizer, table: torch.Tensor, word: str) -> torch.Tensor:
    """The mean input embedding of ``word``'s tokens (with its leading space, as in a sentence)."""
    return table[tokenizer(" " + word, add_special_tokens=False)["input_ids"]].mean(0)


def run(mode: str, checkpoint: Path, corpus: Path, steps: int, seed: int) -> dict:
    stage = load_stage(
        REPO / "configs" / "small" / "instruct.yaml",
        {
            "data.root": str(corpus),
            "output_dir": str(corpus / f"out-{mode}"),
            "init_from.stage": None,
            "init_from.path": str(checkpoint),
            "data.sources": [{"modalities": [m]} for m in MODALITIES],
            "data.val": None,
            "train.steps": steps,
            "train.warmup_steps": min(4, steps - 1),
        },
    )
    accelerator = make_accelerator()
    model, processor = load_start(stage)
    wrapped = add_lora(model, stage.lora, stage.seed)
    _, groups = freeze(wrapped, stage.trainable)
    data = build_data(stage, processor, accelerator)
    trainer = build_trainer(stage, accelerator, wrapped, model, processor, replace(data, val=None), groups, False)
    tokenizer = processor.tokenizer
    table = model.get_input_embeddings().weight.detach()
    shown: dict[str, list[dict]] = {}  # modality -> the attributes of the batch's inputs, in batch order

    projector = model.projector
    plain = projector.forward

    def forward(features, modality, vocab=None):
        out = plain(features, modality, vocab)
        if mode == "tags" or modality not in shown:
            return out
        out = out.clone()
        for i, attributes in enumerate(shown[modality]):
            colour, shape = (word_vector(tokenizer, table, attributes[k]).to(out.dtype) for k in ("colour", "shape"))
            if mode == "two_words":
                out[i, 0], out[i, -1] = colour, shape
            elif mode == "blend":
                out[i, -1] = (colour + shape) / 2
            else:
                out[i, -1] = shape if ASKED[modality] == "shape" else colour
        return out

    projector.forward = forward
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    test = read_split(corpus, "test")
    test_set = ManifestDataset(test, corpus, processor)

    @torch.no_grad()
    def score() -> dict[str, float]:
        wrapped.eval()
        result = {}
        for m in MODALITIES:
            indices = [i for i, r in enumerate(test) if r.inputs[0].modality == m]
            right = 0
            for start in range(0, len(indices), 16):
                chunk = indices[start : start + 16]
                shown.clear()
                shown[m] = [test[k].meta["attributes"] for k in chunk]
                inputs = trainer._forward_inputs(trainer.collator([test_set[k] for k in chunk]))
                labels = inputs.pop("labels")
                with trainer._autocast():
                    logits = wrapped(**inputs).logits.float()
                for j, k in enumerate(chunk):
                    at = int((labels[j] != -100).nonzero()[0]) - 1  # the position that predicts the answer
                    said = "yes" if logits[j, at, yes] > logits[j, at, no] else "no"
                    right += said == test[k].conversation[-1].content.strip()
            result[m] = round(right / len(indices), 3)
        trainer._train_mode()
        return result

    before = score()
    records = data.train.records
    by_modality = {m: [i for i, r in enumerate(records) if r.inputs[0].modality == m] for m in MODALITIES}
    rng = random.Random(seed)
    tick, losses = time.perf_counter(), []
    with trainer.training_attention(), trainer.frozen_llm_in_bf16():
        for step in range(steps):
            m = MODALITIES[step % len(MODALITIES)]
            batch = rng.sample(by_modality[m], stage.train.batch_size)
            shown.clear()
            shown[m] = [records[k].meta["attributes"] for k in batch]
            losses.append(trainer.step([trainer.collator([data.train[k] for k in batch])]))
    seconds = time.perf_counter() - tick
    after = score()
    tail = losses[-min(30, len(losses)) :]
    return {
        "mode": mode,
        "steps": steps,
        "before": before,
        "after": after,
        "loss_last": round(sum(tail) / len(tail), 3),
        "train_s": round(seconds, 1),
        "test_questions": {m: sum(r.inputs[0].modality == m for r in test) for m in MODALITIES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained checkpoint with point and fMRI heads")
    parser.add_argument("--data", type=Path, required=True, help="the synthetic corpus it was trained on")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "presence"
        presence_corpus(args.data, corpus)
        for mode in args.modes:
            row = run(mode, args.checkpoint, corpus, args.steps, args.seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
