"""Time coco_caption against calling pycocoevalcap directly, the way its COCOEvalCap does.

    .venv/bin/python bench/eval_metrics.py [--items 5000] [--repeats 1]

Both sides score the same 5,000 synthetic items (5 references each, templated sentences from a
fixed seed) with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D; SPICE is left out of the direct side
because it is unavailable offline (ours only checks for its jars). The direct side tokenises twice
(references, predictions) and starts METEOR's JVM when it gets to it, as COCOEvalCap does; ours
tokenises once and lets METEOR's ~10 s start-up overlap the rest. The script also checks that
both sides produce the same numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import resource
import time

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from onellm.eval.metrics import caption as caption_metric
from onellm.eval.metrics import get_metric

SUBJECTS = [
    ("a man", "a person", "a guy"),
    ("a woman", "a lady", "a person"),
    ("a dog", "a puppy", "a brown dog"),
    ("two children", "a couple of kids", "two young kids"),
    ("a cat", "a kitten", "a small cat"),
    ("a group of people", "several people", "a crowd"),
    ("a skier", "a person on skis", "a skiing man"),
    ("a bus", "a large bus", "a city bus"),
]
ACTIONS = [
    ("is riding", "rides", "is sitting on"),
    ("is holding", "holds", "is carrying"),
    ("is standing next to", "stands near", "is waiting beside"),
    ("is looking at", "watches", "is staring at"),
    ("is playing with", "plays with", "is having fun with"),
]
OBJECTS = [
    ("a bicycle", "a bike", "a red bicycle"),
    ("a frisbee", "a white frisbee", "a flying disc"),
    ("a surfboard", "a surf board", "a long board"),
    ("an umbrella", "a black umbrella", "a large umbrella"),
    ("a laptop", "a computer", "an open laptop"),
    ("a pizza", "a large pizza", "a slice of pizza"),
]
PLACES = [
    ("on a street", "in the city", "on a busy road"),
    ("in a park", "on the grass", "in a green field"),
    ("at the beach", "near the ocean", "on the sand"),
    ("in a kitchen", "inside a house", "in a small room"),
    ("on a snowy hill", "in the snow", "on a mountain"),
]
ENDINGS = ("", ".", " .", "!", " today.")


def synthetic_items(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``n`` predictions and 5 references each, deterministic for a seed."""
    rng = random.Random(seed)

    def sentence(scene: tuple[int, int, int, int]) -> str:
        parts = [rng.choice(group[i]) for group, i in zip((SUBJECTS, ACTIONS, OBJECTS, PLACES), scene, strict=True)]
        text = " ".join(parts) + rng.choice(ENDINGS)
        return text[0].upper() + text[1:] if rng.random() < 0.5 else text

    predictions, references = [], []
    for _ in range(n):
        scene = (
            rng.randrange(len(SUBJECTS)),
            rng.randrange(len(ACTIONS)),
            rng.randrange(len(OBJECTS)),
            rng.randrange(len(PLACES)),
        )
        references.append([sentence(scene) for _ in range(5)])
        # One prediction in four gets one part of the scene wrong, so scores spread out.
        if rng.random() < 0.25:
            wrong = list(scene)
            part = rng.randrange(4)
            wrong[part] = (wrong[part] + 1) % len((SUBJECTS, ACTIONS, OBJECTS, PLACES)[part])
            scene = (wrong[0], wrong[1], wrong[2], wrong[3])
        predictions.append(sentence(scene))
    return predictions, references


def score_direct(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """pycocoevalcap as COCOEvalCap.evaluate drives it (without SPICE)."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    meteor = Meteor()
    out["meteor"] = float(meteor.compute_score(gts, res)[0])
    del meteor  # its __del__ stops the JVM
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


def score_ours(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """One task's scoring from a cold start: the shared METEOR JVM is stopped after, so each run pays its start-up
    like the direct side does (a real evaluation run pays it once for all its caption tasks)."""
    try:
        results = get_metric("coco_caption").compute(predictions, references)
    finally:
        caption_metric._stop_meteor()
    return {name: r.value for name, r in results.items() if r.value is not None}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the JVMs), user + system."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs per side, order alternating")
    args = parser.parse_args()

    predictions, references = synthetic_items(args.items)
    times: dict[str, list[float]] = {"direct": [], "ours": []}
    cpu: dict[str, list[float]] = {"direct": [], "ours": []}
    load_before = os.getloadavg()[0]
    values: dict[str, dict[str, float]] = {}
    sides = {"direct": score_direct, "ours": score_ours}
    for repeat in range(args.repeats):
        for side in ("direct", "ours") if repeat % 2 == 0 else ("ours", "direct"):
            cpu_start = _cpu_seconds()
            start = time.perf_counter()
            values[side] = sides[side](predictions, references)
            times[side].append(time.perf_counter() - start)
            cpu[side].append(_cpu_seconds() - cpu_start)

    direct, ours = min(times["direct"]), min(times["ours"])
    diff = max(abs(values["ours"][k] - values["direct"][k]) for k in values["direct"])
    print(f"items: {args.items} x 5 references; metrics: bleu_1..4, meteor, rouge_l, cider; best of {args.repeats}")
    print(f"direct pycocoevalcap: {direct:.2f} s wall, {min(cpu['direct']):.1f} s CPU (Python + Java children)")
    print(f"onellm coco_caption:  {ours:.2f} s wall, {min(cpu['ours']):.1f} s CPU (Python + Java children)")
    print(f"ratio ours/direct:    {ours / direct:.3f} (wall)")
    print(f"max |ours - direct| over metric values: {diff:.3g}")
    print("values: " + ", ".join(f"{k}={v:.4f}" for k, v in values["ours"].items()))
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )


if __name__ == "__main__":
    main()
