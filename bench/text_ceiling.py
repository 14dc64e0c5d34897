"""Can the checkpoint's LLM answer from a perfect description? Short-answer QA ranked with the input, with its
reference caption as text instead, and with nothing, beside the input-blind baseline.

    .venv/bin/python bench/text_ceiling.py --checkpoint runs/demo/train/align_image/final --data runs/demo/data \
        [--modalities image] [--per-kind 60] [--json out.json]

For each modality, the first ``--per-kind`` test questions of each question kind whose input also has a test caption.
Each question's candidate answers are the distinct training answers of its kind (the answers the blind baseline
chooses among); the model ranks them by log-probability, teacher-forced, answer then end of turn, in three contexts:

- ``input``: the input's soft tokens, then the question (as `onellm eval` asks it);
- ``caption``: the input's reference caption as plain text in its place: what a projector that delivered a perfect
  caption would hand the LLM, so this column is a ceiling on what the LLM reads from words;
- ``none``: the question alone (the LLM's own prior).

Ranking instead of generating keeps the answer format out of the comparison: a frozen chat LLM asked about a text
starts its answers with "The ..." where a trained projector has taught it one word. ``input`` well above ``caption``
means the soft tokens steer the answer more directly than words could; ``caption`` above ``input``, that the LLM
could read the answer from words the projector does not yet deliver (BENCHMARKS.md, "What the LLM reads from words").
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from onellm.diagnose import blind_predictions, of_modality, question_template, read_split
from onellm.eval.backends.base import MediaItem, Request
from onellm.eval.backends.hf import HFBackend
from onellm.eval.metrics.qa import normalize_answer
from onellm.eval.task import load_task, question_text
from onellm.instruct_data.loader import resolve_input
from onellm.modalities import marker, modality_names

CONTEXTS = ("input", "caption", "none")


@torch.inference_mode()
def answer_log_probs(backend: HFBackend, request: Request, answers: list[str]) -> list[float]:
    """log P(answer, then the end of the turn | the request's prompt) for each of ``answers``, teacher-forced."""
    processor, model = backend.processor, backend.model
    prompt = processor.apply_chat_template(request.messages())
    end = processor.tokenizer.eos_token  # "<|im_end|>": the chat template closes a turn with it
    media: dict[str, list] = {}
    for item in request.media:
        media.setdefault(item.modality, []).extend([item.processor_item()] * len(answers))
    batch = processor(text=[prompt + a + end for a in answers], padding_side="right", **media)
    # the prompt's length as the processor expands it (each marker to its placeholders), without preprocessing again
    start = len(processor.expand_placeholders(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]))
    mm_inputs = {m: t.to(backend.device, model.dtype) for m, t in batch["mm_inputs"].items()}
    logits = model(
        input_ids=batch["input_ids"].to(backend.device),
        attention_mask=batch["attention_mask"].to(backend.device),
        mm_features={m: backend.features(m, values) for m, values in mm_inputs.items()},
    ).logits.float()
    log_p = logits[:, start - 1 : -1].log_softmax(-1)
    targets = batch["input_ids"][:, start:].to(log_p.device)
    mask = batch["attention_mask"][:, start:].to(log_p.device).bool()
    picked = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return [float(v) for v in (picked * mask).sum(dim=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, type=Path, help="corpus folder with train.jsonl and test.jsonl")
    parser.add_argument("--modalities", nargs="+", default=["image"])
    parser.add_argument("--per-kind", type=int, default=60, help="questions per question kind (default 60)")
    parser.add_argument("--dtype", default="float32", help="hf backend dtype (default float32: rankings, not speed)")
    parser.add_argument("--json", type=Path, help="also write the accuracies here")
    args = parser.parse_args()

    backend = HFBackend(args.checkpoint, dtype=args.dtype)
    markers = [marker(m) for m in modality_names()]
    test, train = read_split(args.data, "test"), read_split(args.data, "train")
    print(f"{args.checkpoint} ({backend.model.dtype}); answers ranked among each kind's training answers")
    print(f"{'kind':<20} {'n':>4} {'blind':>6} {'input':>6} {'caption':>8} {'none':>6}")
    report: dict[str, dict] = {}
    for modality in args.modalities:
        task = load_task(f"synth_{modality}_qa")
        qa_train = [r for r in of_modality(train, modality) if r.task == "qa"]
        choices: dict[str, set[str]] = defaultdict(set)
        for record in qa_train:
            choices[question_template(record)].add(record.answer)
        captions = {r.inputs[0].path: r.answer for r in of_modality(test, modality) if r.task == "caption"}
        kinds: dict[str, list] = defaultdict(list)
        for record in of_modality(test, modality):
            kind = question_template(record)
            if record.task == "qa" and record.inputs[0].path in captions and len(kinds[kind]) < args.per_kind:
                kinds[kind].append(record)
        if not kinds:
            raise SystemExit(f"{args.data}: no {modality} test question whose input has a test caption")
        hits: dict[str, dict[str, list[bool]]] = {}
        for kind, records in sorted(kinds.items()):
            hits[kind] = {c: [] for c in ("blind", *CONTEXTS)}
            for record, blind in zip(records, blind_predictions(qa_train, records), strict=True):
                answers = sorted(choices[kind] | {record.answer})
                question = task.render_prompt(question_text(record.conversation[0].content, markers))
                source, extras = resolve_input(record.inputs[0], args.data)
                media = (MediaItem(modality, str(source) if isinstance(source, Path) else source, extras),)
                requests = {
                    "input": Request(record.id, question, media),
                    "caption": Request(record.id, f"{captions[record.inputs[0].path]}\n{question}"),
                    "none": Request(record.id, question),
                }
                truth = normalize_answer(record.answer)
                hits[kind]["blind"].append(normalize_answer(blind) == truth)
                for context, request in requests.items():
                    scores = answer_log_probs(backend, request, answers)
                    best = answers[max(range(len(answers)), key=scores.__getitem__)]
                    hits[kind][context].append(normalize_answer(best) == truth)
        overall = {c: [h for kind in hits.values() for h in kind[c]] for c in ("blind", *CONTEXTS)}
        for kind, row in [*hits.items(), (f"{modality}:all", overall)]:
            rates = {c: sum(v) / len(v) for c, v in row.items()}
            report[kind] = {"n": len(row["blind"]), **{c: round(r, 4) for c, r in rates.items()}}
            cells = " ".join(f"{rates[c]:>{w}.3f}" for c, w in zip(("blind", *CONTEXTS), (6, 6, 8, 6), strict=True))
            print(f"{kind:<20} {len(row['blind']):>4} {cells}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
