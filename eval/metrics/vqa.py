"""VQAv2 soft accuracy with the official answer normalisation.

The rules follow the official evaluation script (GT-Vision-Lab/VQA ``vqaEval.py``, also run by
the EvalAI challenge server and by lmms-eval), so numbers are comparable with published ones:

1. newlines and tabs become spaces, then surrounding whitespace is stripped;
2. punctuation: each mark of ``PUNCTUATION_MARKS`` is deleted when it touches a space ("dog ,
   cat") or when the answer has a digit-comma-digit group anywhere ("1,000"); otherwise it is
   replaced by a space ("hot-dog" -> "hot dog");
3. a period is deleted unless a digit follows it ("2.5" stays, "yes." -> "yes");
4. lower-case, then word by word: number words "none"/"zero".."ten" -> digits, articles
   (a, an, the) dropped, contractions written without their apostrophe restored ("dont" ->
   "don't"), words re-joined with single spaces.

Accuracy of one question: for each ground-truth answer left out in turn, min(1, (number of the
other answers equal to the prediction) / 3), averaged. With 10 answers, a prediction given by
1, 2, 3, 4+ annotators scores 0.3, 0.6, 0.9, 1.0. With fewer answers the same leave-one-out
formula runs over the answers given.

One asymmetry is kept on purpose, because the official script has it: the prediction always
goes through rules 2-4, the ground-truth answers only through rules 2-3 and only when they are
not all identical. VQAv2 stores its answers already normalised, so this changes nothing there;
for other data store answers normalised (``normalize_vqa_answer``) or use ``exact_match``.

``style="lmms_eval"`` (metric option) reproduces lmms-eval's VQAv2 scoring instead, which differs on two points
(docs/eval.md has an example of each):

a. when the ground-truth answers are not all identical, they also go through rule 4 (numbers, articles,
   contractions), so a prediction "2" matches a ground truth "two";
b. the prediction first goes through EvalAI's word step: lower-cased, every "," and "?" deleted, and "'s" split
   off as its own word ("man's" -> "man 's"), which the ground truths never get.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from onellm.eval.metrics.base import Metric, MetricResult, check_inputs, mean, register_metric

PUNCTUATION_MARKS = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table. Its capitalised keys ("Im", "Ive", "Id've", "I'dve") are left
# out: the lookup happens after lower-casing, so the official script never matches them either
# ("im" stays "im"). Odd entries such as "somebody'd" -> "somebodyd" are kept as they are.
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a mistyped look-behind that
# always succeeds, so in effect a period goes unless a digit follows ("2.5" keeps it, ".5" too).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def strip_vqa_punctuation(text: str) -> str:
    """Rules 2-3 of the module docstring (the official ``processPunctuation``)."""
    # Both conditions look at the input, not at the partly processed text.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION_MARKS:
        if mark in text:
            touches_space = f"{mark} " in text or f" {mark}" in text
            out = out.replace(mark, "" if (delete_all or touches_space) else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_words(text: str) -> str:
    """Rule 4 of the module docstring (the official ``processDigitArticle``)."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """Full normalisation applied to predictions: whitespace, punctuation, periods, words."""
    return normalize_words(strip_vqa_punctuation(_clean_whitespace(answer)))


STYLES = ("official", "lmms_eval")


def _evalai_words(text: str) -> str:
    """EvalAI's first step on a prediction (lmms-eval runs it): lower-case, drop "," and "?", split off "'s"."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def vqa_soft_accuracy(prediction: str, answers: Sequence[str], style: str = "official") -> float:
    """Accuracy of one prediction against its ground-truth answers (10 in VQAv2), in [0, 1].

    ``style``: "official" (the VQA script) or "lmms_eval" (see the module docstring, points a and b).
    """
    if style not in STYLES:
        raise ValueError(f"vqa_accuracy style {style!r} is not one of {STYLES}")
    if len(answers) < 2:
        raise ValueError(
            f"vqa_accuracy needs at least 2 ground-truth answers per question (VQAv2 has 10), got {len(answers)}: "
            "with one answer the leave-one-out formula always gives 0; use exact_match for single-answer data"
        )
    lmms = style == "lmms_eval"
    pred = normalize_vqa_answer(_evalai_words(prediction) if lmms else prediction)
    gts = [_clean_whitespace(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [strip_vqa_punctuation(a) for a in gts]
        if lmms:
            gts = [normalize_words(a) for a in gts]
            pred = normalize_words(strip_vqa_punctuation(pred))
    matches = sum(gt == pred for gt in gts)
    # Leaving out answer j removes one match exactly when answer j itself matches.
    return mean([min(1.0, (matches - (gt == pred)) / 3) for gt in gts])


@register_metric("vqa_accuracy")
class VQAAccuracy(Metric):
    """VQAv2 soft accuracy (a fraction; the official script prints 100x this, rounded to 2 decimals)."""

    outputs = ("vqa_accuracy",)

    def __init__(self, style: str = "official") -> None:
        if style not in STYLES:
            raise ValueError(f"vqa_accuracy: option style={style!r} is not one of {STYLES}")
        self.style = style

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, MetricResult]:
        check_inputs(self.name, predictions, references)
        per_sample = []
        for i, (pred, answers) in enumerate(zip(predictions, references, strict=True)):
            try:
                per_sample.append(vqa_soft_accuracy(pred, answers, self.style))
            except ValueError as exc:
                raise ValueError(f"references[{i}]: {exc}") from None
        return {"vqa_accuracy": MetricResult("vqa_accuracy", mean(per_sample), per_sample)}
