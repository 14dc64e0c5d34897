"""Short-answer QA asked the ways chat clients ask it, beside the input-blind baseline.

    .venv/bin/python bench/chat_turns.py --checkpoint runs/demo/train/instruct/merged --data runs/demo/data \
        [--modalities image audio] [--limit 150] [--system "You are a helpful assistant."]

`onellm eval` asks every question alone: the input, then the question, in one user turn. Chat clients also ask
about an input in later turns (`onellm ui`, an OpenAI client keeping its history) and open with a system turn. For
each modality this scores the first ``--limit`` test questions (exact match, as the ``synth_<modality>_qa`` task):

- ``alone``: as `onellm eval` asks them;
- ``system``: after the system turn ``--system``;
- ``follow-up``: as the second question of a conversation about the same input, the first user turn holding the
  input and another test question about it, the assistant turn that question's reference answer.

Greedy, in bf16 where the CPU has it (the hf backend). A follow-up below ``alone`` means the model reads its input
less once a conversation has begun; at or below ``blind`` it no longer reads it (BENCHMARKS.md, "Chat turns").
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onellm.diagnose import blind_predictions, input_key, of_modality, read_split
from onellm.eval.backends.base import MediaItem, Request, cut_at_stop
from onellm.eval.backends.hf import HFBackend
from onellm.eval.metrics.qa import normalize_answer
from onellm.eval.task import load_task, question_text
from onellm.instruct_data.loader import resolve_input
from onellm.modalities import marker, modality_names


@dataclass(frozen=True)
class FollowUp(Request):
    """A request whose question is the second user turn: ``earlier`` (question, answer) comes first, with the inputs."""

    earlier: tuple[str, str] = ("", "")

    def messages(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"type": item.modality} for item in self.media]
        parts.append({"type": "text", "text": self.earlier[0]})
        return [
            *self.system_turn(),
            {"role": "user", "content": parts},
            {"role": "assistant", "content": self.earlier[1]},
            {"role": "user", "content": self.text},
        ]


def score(backend: HFBackend, requests: list[Request], references: list[str], task, batch: int) -> float:
    answers: list[str] = []
    for start in range(0, len(requests), batch):
        answers += backend.generate(requests[start : start + batch], task.generation)
    cut = [cut_at_stop(answer, task.generation.stop).strip() for answer in answers]  # as `onellm eval` cuts them
    return sum(normalize_answer(a) == normalize_answer(r) for a, r in zip(cut, references, strict=True)) / len(cut)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, type=Path, help="corpus folder with train.jsonl and test.jsonl")
    parser.add_argument("--modalities", nargs="+", default=["image", "audio", "video", "point"])
    parser.add_argument("--limit", type=int, default=150, help="questions per modality (default 150)")
    parser.add_argument("--system", default="You are a helpful assistant.", help="the system turn's text")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    backend = HFBackend(args.checkpoint, dtype="auto")
    markers = [marker(m) for m in modality_names()]
    test, train = read_split(args.data, "test"), read_split(args.data, "train")
    print(f"{args.checkpoint} ({backend.model.dtype}); system turn: {args.system!r}")
    print(f"{'modality':<9} {'n':>4} {'blind':>6} {'alone':>6} {'system':>7} {'follow-up':>10}")
    for modality in args.modalities:
        task = load_task(f"synth_{modality}_qa")
        questions = [r for r in of_modality(test, modality) if r.task == "qa"]
        by_input: dict[str, list] = defaultdict(list)
        for record in questions:
            by_input[input_key(record)].append(record)
        # each question, and another question about the same input to ask before it
        pairs = [(r, group[i - 1]) for group in by_input.values() if len(group) > 1 for i, r in enumerate(group)]
        pairs = pairs[: args.limit]
        chosen = [record for record, _ in pairs]
        references = [record.conversation[1].content for record in chosen]
        blind = blind_predictions([r for r in of_modality(train, modality) if r.task == "qa"], chosen)
        alone, system, follow = [], [], []
        for record, earlier in pairs:
            source, extras = resolve_input(record.inputs[0], args.data)
            media = (MediaItem(modality, str(source) if isinstance(source, Path) else source, extras),)
            text = task.render_prompt(question_text(record.conversation[0].content, markers))
            before = task.render_prompt(question_text(earlier.conversation[0].content, markers))
            alone.append(Request(record.id, text, media))
            system.append(Request(record.id, text, media, args.system))
            follow.append(FollowUp(record.id, text, media, None, (before, earlier.conversation[1].content)))
        hits = [normalize_answer(b) == normalize_answer(r) for b, r in zip(blind, references, strict=True)]
        blind_score = sum(hits) / len(pairs)
        scores = [score(backend, requests, references, task, args.batch_size) for requests in (alone, system, follow)]
        print(
            f"{modality:<9} {len(pairs):>4} {blind_score:>6.3f} {scores[0]:>6.3f} {scores[1]:>7.3f} {scores[2]:>10.3f}"
        )


if __name__ == "__main__":
    main()
