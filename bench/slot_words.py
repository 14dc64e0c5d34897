"""What a checkpoint's word tags name on held-out inputs, against the synthetic generator's attributes.

    .venv/bin/python bench/slot_words.py --checkpoint runs/demo/train/align_rest/final --data runs/demo/data \
        [--modalities fmri point] [--limit 50]

For each modality, the first ``--limit`` distinct inputs of the test split pass the projector; each word tag (a
lexical start tag, the lexical end tag: ``projectors/upm.py``, ``LexicalTag``) names its most probable word. Printed
per modality: the mean top probability of each tag, for each attribute of the corpus's generator (``meta.attributes``:
colour, shape, side, ...) the fraction of inputs where some tag's word is that attribute's value, and each tag's most
frequent words. A tag that names the same word for every input, or a blend (low top probability), hands the LLM
nothing to check a question against (BENCHMARKS.md, "Two word slots").
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

from onellm.diagnose import input_values, of_modality, read_split
from onellm.eval.backends.hf import HFBackend
from onellm.train.lexical import captured_word_logits

WORD_STARTS = "\u0120\u2581"


def attribute_values(attributes, out: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """``{key: values}`` of every string leaf of a generator's attributes (objects' colours, shapes, ...)."""
    out = {} if out is None else out
    items = attributes.items() if isinstance(attributes, dict) else enumerate(attributes)
    for key, value in items:
        if isinstance(value, (dict, list)):
            attribute_values(value, out)
        elif isinstance(value, str) and isinstance(key, str):
            out.setdefault(key, set()).add(value.lower())
    return out


def named_words(model, processor, records, data: Path, modality: str) -> dict[int, tuple[list[str], float]]:
    """``{tag index: (each input's top word, mean top probability)}``."""
    values = input_values(processor, records, data)
    with torch.no_grad(), captured_word_logits(model) as captured:
        for chunk in values.split(32):
            model.embed_modality(modality, chunk.to(model.device, model.dtype))
    out = {}
    for (m, i), chunks in sorted(captured.items()):
        if m != modality:
            continue
        probs = torch.cat(chunks).float().softmax(-1)
        if probs.dim() != 2:  # region words: one distribution per soft token, not a tag
            continue
        tokens = processor.tokenizer.convert_ids_to_tokens(probs.argmax(-1).tolist())
        out[i] = ([t.lstrip(WORD_STARTS).lower() for t in tokens], float(probs.max(-1).values.mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint with lexical word tags")
    parser.add_argument("--data", type=Path, required=True, help="the synthetic corpus (its test split is read)")
    parser.add_argument("--modalities", nargs="+", help="default: every modality of the test split the model takes")
    parser.add_argument("--limit", type=int, default=50, help="distinct inputs per modality")
    args = parser.parse_args()
    test = read_split(args.data, "test")
    backend = HFBackend(str(args.checkpoint))
    model, processor = backend.model, backend.processor
    present = dict.fromkeys(item.modality for record in test for item in record.inputs)
    for modality in args.modalities or [m for m in present if m in processor.modalities]:
        seen, records = set(), []
        for record in of_modality(test, modality):
            if record.inputs[0].path not in seen and len(records) < args.limit:
                seen.add(record.inputs[0].path)
                records.append(record)
        tags = named_words(model, processor, records, args.data, modality)
        if not tags:
            print(f"{modality}: no word tags")
            continue
        hits, totals = Counter(), Counter()
        for n, record in enumerate(records):
            said = {words[n] for words, _ in tags.values()}
            for key, values in attribute_values((record.meta or {}).get("attributes", {})).items():
                totals[key] += 1
                hits[key] += bool(said & values)
        top = ", ".join(f"tag {i} {p:.2f}" for i, (_, p) in tags.items())
        named = ", ".join(f"{key} {hits[key] / totals[key]:.2f}" for key in totals)
        print(f"{modality}: {len(records)} inputs; top probability {top}; named: {named}")
        for i, (words, _) in tags.items():
            print(f"    tag {i}: {Counter(words).most_common(6)}")


if __name__ == "__main__":
    main()
