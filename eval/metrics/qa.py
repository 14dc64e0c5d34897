"""Short-answer metrics: exact match, multiple-choice letter, OneLLM's lenient MSVD-QA match."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from onellm.eval.metrics.base import Metric, MetricResult, check_inputs, mean, register_metric

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower-case, ASCII punctuation and articles removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLE.sub(" ", text).split())


@register_metric("exact_match")
class ExactMatch(Metric):
    """1 when the normalised prediction equals any normalised reference, else 0."""

    outputs = ("exact_match",)

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, MetricResult]:
        check_inputs(self.name, predictions, references)
        per_sample = [
            float(normalize_answer(pred) in {normalize_answer(ref) for ref in refs})
            for pred, refs in zip(predictions, references, strict=True)
        ]
        return {"exact_match": MetricResult("exact_match", mean(per_sample), per_sample)}


# Tried in order; the first pattern that matches wins. Choice letters are capitals only, so the
# article in "a cat" or "the answer is a dog" is never read as option A; a letter must end its
# word ("I'm not sure" names no option).
_LETTER_END = r"(?=[\s.,;:!?)]|$)"
_LETTER_PATTERNS = (
    re.compile(r"^\s*\(?([A-Z])\)?[\s.:)]*$"),  # "B", "(B)", "B.", "B)"
    re.compile(r"^\s*\(([A-Z])\)"),  # "(B) a cat"
    re.compile(r"^\s*([A-Z])[.:)](?:\s|$)"),  # "B. a cat", "B) cat", "B: cat"
    re.compile(r"\b(?i:answer)(?:\s+(?i:is))?\s*[:-]?\s*\(?([A-Z])" + _LETTER_END),  # "Answer: B", "answer is (B)"
    re.compile(r"\b(?i:option|choice)\s*\(?([A-Z])" + _LETTER_END),  # "Option B"
)


def extract_choice_letter(text: str) -> str | None:
    """The multiple-choice letter a model's answer names, or None when it names none unambiguously."""
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


@register_metric("mc_letter")
class MultipleChoiceLetter(Metric):
    """Multiple-choice accuracy: the letter extracted from the prediction equals the reference letter.

    References hold the correct letter ("B" or "(B)"); a prediction without an extractable letter
    scores 0, which is what a human grader would give an answer that picks no option.
    """

    outputs = ("mc_letter",)

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, MetricResult]:
        check_inputs(self.name, predictions, references)
        per_sample = []
        for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
            letters = set()
            for j, ref in enumerate(refs):
                letter = extract_choice_letter(ref)
                if letter is None:
                    raise ValueError(
                        f"mc_letter: references[{i}][{j}] is {ref!r}, not an option letter; expected e.g. 'B' or '(B)'"
                    )
                letters.add(letter)
            per_sample.append(float(extract_choice_letter(pred) in letters))
        return {"mc_letter": MetricResult("mc_letter", mean(per_sample), per_sample)}


@register_metric("onellm_substring_match")
class OneLLMSubstringMatch(Metric):
    """OneLLM's MSVD-QA scoring, reproduced to compare with the paper's number, not to rank models.

    OneLLM's ``eval/video_qa_msvd.py`` lower-cases and strips both strings and counts a hit when
    either contains the other as a character substring: "a man is cooking" is right for "man",
    "cat" is right for "cats", and "dog" is right for "hotdog". Kept as it is (an empty prediction
    is a substring of every answer, so it counts as right too), hence ``comparable=False``.
    """

    outputs = ("onellm_substring_match",)
    NOTE = (
        "lenient: OneLLM's MSVD-QA rule (either string contains the other after lower-casing); "
        "not comparable to exact-match or VQA accuracy numbers"
    )

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, MetricResult]:
        check_inputs(self.name, predictions, references)
        per_sample = []
        for pred, refs in zip(predictions, references, strict=True):
            p = pred.strip().lower()
            per_sample.append(float(any(p in r or r in p for r in (ref.strip().lower() for ref in refs))))
        result = MetricResult("onellm_substring_match", mean(per_sample), per_sample, comparable=False, note=self.NOTE)
        return {"onellm_substring_match": result}
