"""Metrics: registry, input checks, QA rules and parity of the caption metrics with pycocoevalcap."""

from __future__ import annotations

import subprocess

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

import onellm.eval.metrics.base as metrics_base
import onellm.eval.metrics.caption as caption
from onellm.eval.metrics import Metric, MetricResult, get_metric, metric_names, register_metric
from onellm.eval.metrics.caption import (
    JavaRequiredError,
    approximate_ptb_tokenize,
    java_available,
    missing_spice_jars,
    ptb_tokenize,
)
from onellm.eval.metrics.qa import extract_choice_letter, normalize_answer
from onellm.eval.metrics.vqa import normalize_vqa_answer, vqa_soft_accuracy

needs_java = pytest.mark.skipif(not java_available(), reason="pycocoevalcap's PTB tokenizer and METEOR need `java`")

# 20 images, 5 references each, one prediction each: varied wording, case, punctuation, quotes,
# brackets, contractions, numbers, a perfect match, an unrelated caption and an empty prediction.
CAPTION_REFS = [
    [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean.",
        "Man on a surfboard riding a big wave",
        "a person surfing on a blue wave",
        "A surfer in a wetsuit catches a wave.",
    ],
    [
        "Two dogs playing with a frisbee in the park.",
        "A pair of dogs chase a red frisbee on the grass",
        "two dogs run after a flying disc",
        "Dogs are playing fetch in a grassy field.",
        "Two brown dogs play together outside.",
    ],
    [
        "A plate of food with broccoli and rice.",
        "Rice, broccoli and chicken on a white plate.",
        "a dinner plate with vegetables and meat",
        "A healthy meal sits on the table.",
        "Chicken and broccoli served over rice",
    ],
    [
        "A red double-decker bus driving down the street.",
        "A big red bus on a city road.",
        "The double decker bus is red and full of people",
        "a bus drives past some buildings",
        "A London bus travelling along a busy street.",
    ],
    [
        "A cat sleeping on a laptop keyboard.",
        "The cat's lying on top of the computer.",
        "a gray cat naps on an open laptop",
        "A kitten is curled up on a keyboard.",
        "Cat resting on a notebook computer",
    ],
    [
        "A kitchen with wooden cabinets and a stove.",
        "An empty kitchen with a white refrigerator.",
        "a small kitchen (with a window) and cabinets",
        "The kitchen has brown cabinets and a gas oven.",
        "A clean kitchen in a house",
    ],
    [
        "A man holding a tennis racket on a court.",
        "A tennis player gets ready to hit the ball.",
        "man swinging a racquet at a tennis ball",
        "A player in white serves during a match.",
        "Someone is playing tennis outdoors",
    ],
    [
        "Giraffes standing in a field near trees.",
        "Two giraffes eating leaves from a tall tree.",
        "a couple of giraffes in the wild",
        "Giraffes walk across the dry grassland.",
        "Tall giraffes graze next to some trees",
    ],
    [
        "A bathroom with a toilet and a sink.",
        "A white toilet next to a bathtub.",
        "the restroom has a sink, a toilet and a mirror",
        "A small bathroom with blue tiles.",
        "Toilet and sink in a clean bathroom",
    ],
    [
        "A skier going down a snowy slope.",
        "A person skiing down the mountain.",
        "skier racing downhill on fresh snow",
        "A man on skis in the snow.",
        "Someone skis down a steep hill.",
    ],
    [
        'A sign that says "STOP" at an intersection.',
        "A red stop sign on a street corner.",
        "a stop sign next to the road",
        "The stop sign is mounted on a pole.",
        "A traffic sign at a crossroads",
    ],
    [
        "A pizza with cheese and pepperoni on a table.",
        "A large pepperoni pizza cut into slices.",
        "pizza sitting on a wooden board",
        "A hot pizza fresh out of the oven.",
        "Slices of pizza on a pan",
    ],
    [
        "A train pulling into a station.",
        "A yellow and blue train on the tracks.",
        "the commuter train arrives at the platform",
        "A passenger train stopped at a station.",
        "Train traveling on railroad tracks",
    ],
    [
        "A woman holding an umbrella in the rain.",
        "A lady walks with a black umbrella.",
        "woman with umbrella on a rainy day",
        "A person under an umbrella on a wet street.",
        "She's carrying an umbrella while it rains.",
    ],
    [
        "Three elephants walking in a line.",
        "A herd of elephants crossing a river.",
        "elephants walking through the water",
        "A group of 3 elephants in the wild.",
        "Elephants travel together across the plain",
    ],
    [
        "A boy flying a kite on the beach.",
        "A child with a colorful kite near the ocean.",
        "a kid flies a kite at the shore",
        "A young boy plays with a kite on sand.",
        "Kite flying on a windy beach",
    ],
    [
        "A bowl of fruit with bananas and apples.",
        "Bananas, apples and oranges in a bowl.",
        "a fruit bowl on a kitchen counter",
        "Fresh fruit sits in a glass bowl.",
        "A bowl filled with ripe bananas",
    ],
    [
        "A clock tower in the middle of a city.",
        "A tall tower with a clock on it.",
        "the big clock shows 10:30",
        "An old clock tower against a blue sky.",
        "A building with a large clock face",
    ],
    [
        "Two people riding horses on a trail.",
        "A couple rides horses through the woods.",
        "horseback riders on a dirt path",
        "People on horses in the countryside.",
        "Two riders and their horses outdoors",
    ],
    [
        "A laptop and a mouse on a desk.",
        "A computer desk with a keyboard and monitor.",
        "an office desk with a laptop, a mouse and papers",
        "A workspace with a computer on it.",
        "Desk with a notebook computer",
    ],
]
CAPTION_PREDS = [
    "A surfer riding a big wave.",
    "two dogs are playing with a frisbee",
    "A plate of rice and broccoli.",
    "A red bus driving down a street",
    "A cat lying on a laptop.",
    "a kitchen with cabinets and a stove",
    "A man playing tennis on a court.",
    "Two giraffes standing next to trees.",
    "A bathroom with a toilet and a sink.",
    "A person skiing down a snowy hill",
    'A stop sign that says "STOP".',
    "A pizza on a table.",
    "A train at the station",
    "A woman with an umbrella (in the rain).",
    "Elephants walking in the water",
    "A boy doesn't fly a kite on the beach",
    "A bowl of bananas",
    "A clock on a tower",
    "A laptop sitting on a desk",
    "",
]

BLEU_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")


@pytest.fixture(scope="module")
def caption_runs() -> tuple[dict[str, MetricResult], dict[str, tuple[float, list[float]]]]:
    """Our coco_caption results, and pycocoevalcap driven the way its COCOEvalCap does.

    Both sides use one METEOR JVM (its start-up costs ~10 CPU-seconds; answers do not depend on
    earlier requests): the reference side scores first, then ours is handed the same process,
    keeps it for the next caption task, and stops it at ``_stop_meteor`` (also run at exit).
    """
    meteor = Meteor()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(CAPTION_REFS)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(CAPTION_PREDS)})
    direct: dict[str, tuple[float, list[float]]] = {}
    bleu, bleu_per_sample = Bleu(4).compute_score(gts, res, verbose=0)
    for name, value, per_sample in zip(BLEU_NAMES, bleu, bleu_per_sample, strict=True):
        direct[name] = (value, list(per_sample))
    value, per_sample = meteor.compute_score(gts, res)
    direct["meteor"] = (value, list(per_sample))
    value, per_sample = Rouge().compute_score(gts, res)
    direct["rouge_l"] = (value, list(per_sample))
    value, per_sample = Cider().compute_score(gts, res)
    direct["cider"] = (value, list(per_sample))
    caption._stop_meteor()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caption, "Meteor", lambda: meteor)
        ours = get_metric("coco_caption").compute(CAPTION_PREDS, CAPTION_REFS)
        assert caption._shared_meteor is meteor and meteor.meteor_p.poll() is None, "the JVM is kept for reuse"
        again = get_metric("coco_caption").compute(CAPTION_PREDS[:2], CAPTION_REFS[:2])
        assert caption._shared_meteor is meteor, "a second caption task must reuse the running METEOR JVM"
        assert again["meteor"].per_sample == ours["meteor"].per_sample[:2]
    caption._stop_meteor()
    assert meteor.meteor_p.poll() is not None, "_stop_meteor must stop the METEOR JVM"
    return ours, direct


@pytest.fixture(scope="module")
def our_scores(caption_runs) -> dict[str, MetricResult]:
    return caption_runs[0]


@pytest.fixture(scope="module")
def direct_scores(caption_runs) -> dict[str, tuple[float, list[float]]]:
    return caption_runs[1]


# --- caption metrics: parity with pycocoevalcap -------------------------------------------


@needs_java
@pytest.mark.slow
@pytest.mark.parametrize("name", [*BLEU_NAMES, "meteor", "rouge_l", "cider"])
def test_caption_metric_matches_pycocoevalcap(name, our_scores, direct_scores):
    value, per_sample = direct_scores[name]
    ours = our_scores[name]
    assert ours.available and ours.comparable
    assert ours.value == pytest.approx(value, abs=1e-9, rel=0)
    assert ours.per_sample == pytest.approx(per_sample, abs=1e-9, rel=0)
    assert len(ours.per_sample) == len(CAPTION_PREDS)


@needs_java
@pytest.mark.slow
def test_caption_results_are_sensible(our_scores):
    assert list(our_scores) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "spice"]
    # An exact copy of a reference (item 8) beats the empty prediction (item 19) on every metric.
    for name in (*BLEU_NAMES, "meteor", "rouge_l", "cider"):
        assert our_scores[name].per_sample[8] > our_scores[name].per_sample[19], name
    assert our_scores["bleu_1"].per_sample[8] == pytest.approx(1.0)
    assert our_scores["rouge_l"].per_sample[19] == 0.0


@needs_java
@pytest.mark.slow
def test_spice_reported_unavailable_without_corenlp(our_scores):
    spice = our_scores["spice"]
    if missing_spice_jars():
        assert not spice.available and spice.value is None and spice.per_sample is None
        assert "stanford-corenlp-3.6.0" in spice.note and "offline" in spice.note
    else:  # someone installed the jars: then it either scored or says why it failed
        assert spice.available or spice.note.startswith("SPICE failed")


def test_spice_missing_jars_detected(tmp_path):
    assert missing_spice_jars(tmp_path) == ["stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"]
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    (tmp_path / "stanford-corenlp-3.6.0-models.jar").write_bytes(b"")
    assert missing_spice_jars(tmp_path) == []


def test_spice_failure_is_reported_not_raised(monkeypatch):
    class FailingSpice:
        def compute_score(self, gts, res):
            raise subprocess.CalledProcessError(1, ["java", "-jar", "spice-1.0.jar"])

    monkeypatch.setattr(caption, "missing_spice_jars", lambda lib_dir=None: [])
    monkeypatch.setattr(caption, "Spice", FailingSpice)
    result = caption._spice_result({0: ["a dog"]}, {0: ["a dog"]})
    assert not result.available and result.value is None
    assert result.note.startswith("SPICE failed: CalledProcessError")


def test_spice_scores_used_when_it_runs(monkeypatch):
    class WorkingSpice:
        def compute_score(self, gts, res):
            return 0.25, [{"All": {"f": 0.5, "pr": 0.5, "re": 0.5}}, {"All": {"f": 0.0, "pr": 0.0, "re": 0.0}}]

    monkeypatch.setattr(caption, "missing_spice_jars", lambda lib_dir=None: [])
    monkeypatch.setattr(caption, "Spice", WorkingSpice)
    result = caption._spice_result({0: ["a"], 1: ["b"]}, {0: ["a"], 1: ["c"]})
    assert result.available and result.value == 0.25 and result.per_sample == [0.5, 0.0]


@needs_java
def test_ptb_tokenize_keeps_samples_aligned_across_line_breaks():
    # Raw pycocoevalcap would split "a dog\rruns" into two lines and shift every later caption.
    gts, res = ptb_tokenize(["A dog\rruns.", "A cat\u2028sits", ""], [["x\ny z"], ["Cat's (big)"], ["end"]])
    assert res == {0: ["a dog runs"], 1: ["a cat sits"], 2: [""]}
    assert gts == {0: ["x y z"], 1: ["cat 's -lrb- big -rrb-"], 2: ["end"]}


@needs_java
def test_approximate_tokenizer_agrees_with_ptb_on_plain_captions():
    captions = [
        "A man riding a wave on top of a surfboard.",
        "The cat's lying on top of the computer.",
        "a small kitchen (with a window) and cabinets",
        "Rice, broccoli and chicken on a white plate!",
        'A sign that says "STOP" at an intersection.',
        "A boy doesn't fly a kite; it's windy -- really...",
        "Three elephants: 2 adults and 1 baby?",
        "A double-decker bus costs 1,000 dollars or 2.5 cents",
    ]
    _, res = ptb_tokenize(captions, [["x"]] * len(captions))
    assert [approximate_ptb_tokenize(c) for c in captions] == [res[i][0] for i in range(len(captions))]


# --- Java missing ----------------------------------------------------------------------------


def test_missing_java_raises_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not java_available()
    with pytest.raises(JavaRequiredError, match="Java") as info:
        get_metric("coco_caption")
    message = str(info.value)
    assert "apt-get install default-jre-headless" in message and "no_java=True" in message
    assert "METEOR" in message and "PTB" in message


def test_no_java_mode_scores_without_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    results = get_metric("coco_caption", no_java=True).compute(CAPTION_PREDS, CAPTION_REFS)
    assert list(results) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "spice"]
    assert all(not r.comparable and r.note for r in results.values())
    for name in ("meteor", "spice"):
        assert not results[name].available and results[name].value is None
    for name in (*BLEU_NAMES, "rouge_l", "cider"):
        assert results[name].available and len(results[name].per_sample) == len(CAPTION_PREDS)
    assert 0.0 < results["bleu_4"].value < results["bleu_1"].value <= 1.0
    assert results["rouge_l"].per_sample[8] == pytest.approx(1.0)  # prediction 8 copies a reference
    assert results["cider"].value > 0.5


def test_approximate_tokenizer_rules():
    assert approximate_ptb_tokenize("The dog's ball isn't red.") == "the dog 's ball is n't red"
    assert approximate_ptb_tokenize('He said "hi" (twice)!') == "he said hi -lrb- twice -rrb-"
    assert approximate_ptb_tokenize("1,000 red-and-white cars; 2.5 km...") == "1,000 red-and-white cars 2.5 km"


# --- registry and input checks ---------------------------------------------------------------


def test_registry_lists_and_builds_metrics():
    assert {"coco_caption", "vqa_accuracy", "exact_match", "mc_letter", "onellm_substring_match"} <= set(metric_names())
    assert metric_names() == sorted(metric_names())
    for name in ("vqa_accuracy", "exact_match", "mc_letter", "onellm_substring_match"):
        metric = get_metric(name)
        assert isinstance(metric, Metric) and metric.name == name
        assert metric.outputs == (name,)


def test_unknown_metric_lists_known_names():
    with pytest.raises(KeyError, match="unknown metric 'cidre'.*coco_caption.*vqa_accuracy"):
        get_metric("cidre")


def test_register_metric_rejects_duplicates_and_non_metrics(monkeypatch):
    monkeypatch.setattr(metrics_base, "_REGISTRY", metrics_base._REGISTRY.copy())

    @register_metric("always_one")
    class AlwaysOne(Metric):
        outputs = ("always_one",)

        def compute(self, predictions, references):
            return {"always_one": MetricResult("always_one", 1.0, [1.0] * len(predictions))}

    assert get_metric("always_one").compute(["x"], [["y"]])["always_one"].value == 1.0
    with pytest.raises(ValueError, match="already registered"):

        @register_metric("exact_match")
        class Other(Metric):
            def compute(self, predictions, references):
                return {}

    with pytest.raises(TypeError, match="Metric subclasses"):
        register_metric("not_a_metric")(dict)


def test_metric_result_rejects_inconsistent_availability():
    with pytest.raises(ValueError, match="need a value"):
        MetricResult("x", None)
    with pytest.raises(ValueError, match="must have value None"):
        MetricResult("x", 0.5, available=False)


@pytest.mark.parametrize(
    ("predictions", "references", "error", "match"),
    [
        (["a", "b"], [["a"]], ValueError, r"predictions has 2 items but references has 1"),
        ([], [], ValueError, "no samples"),
        (["a", "b"], [["a"], []], ValueError, r"references\[1\] is empty"),
        (["a", "b"], [["a"], "b"], TypeError, r"references\[1\] is a str"),
        (["a", None], [["a"], ["b"]], TypeError, r"predictions\[1\] must be a str"),
        (["a", "b"], [["a"], ["b", "  "]], ValueError, r"references\[1\]\[1\] is blank"),
        (["a", "b"], [["a"], ["b", 3]], TypeError, r"references\[1\]\[1\] must be a str"),
        ("ab", [["a"], ["b"]], TypeError, "predictions must be a list"),
    ],
)
@pytest.mark.parametrize("metric", ["exact_match", "vqa_accuracy", "mc_letter", "onellm_substring_match"])
def test_inputs_are_validated(metric, predictions, references, error, match):
    with pytest.raises(error, match=match):
        get_metric(metric).compute(predictions, references)


def test_caption_inputs_are_validated_before_java_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match=r"coco_caption: references\[0\] is empty"):
        get_metric("coco_caption", no_java=True).compute(["a dog"], [[]])


# --- VQA accuracy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("  yes\n", "yes"),  # whitespace: strip, newline
        ("red\tcar", "red car"),  # tab becomes a space
        ("Yes", "yes"),  # lower-case
        ("dont", "don't"),  # contractions restored
        ("isnt", "isn't"),
        ("whats up", "what's up"),
        ("youre", "you're"),
        ("im", "im"),  # the official table's key is "Im", never matched after lower-casing
        ("two", "2"),  # number words
        ("none", "0"),
        ("Ten", "10"),
        ("a dog", "dog"),  # articles
        ("the red car", "red car"),
        ("an apple", "apple"),
        ("hot-dog", "hot dog"),  # mark not touching a space: replaced by a space
        ("ice-cream -", "icecream"),  # the mark touches a space somewhere: every such mark deleted
        ("yes!", "yes"),
        ("what?", "what"),
        ("(left)", "left"),
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not spaced
        ("1,000 hot-dogs", "1000 hotdogs"),
        ("2.5", "2.5"),  # period kept before a digit
        ("yes.", "yes"),  # otherwise deleted
        ("2.", "2"),
        ("e.g.", "eg"),
        ("10:30", "10:30"),  # colon and apostrophe are not in the official list
        ("man's", "man's"),
    ],
)
def test_vqa_normalisation_rules(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # k of the 10 answers equal the prediction. Leaving out a matching answer leaves k-1
        # matches, leaving out another leaves k; each term is min(1, matches / 3).
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        (4, (4 * 1 + 6 * 1) / 10),  # 1.0
        (10, 1.0),
    ],
)
def test_vqa_soft_accuracy_leave_one_out(matches, expected):
    answers = ["2"] * matches + ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"][: 10 - matches]
    assert vqa_soft_accuracy("two", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_soft_accuracy_with_fewer_answers():
    # 3 answers, prediction equals two: leave out a "cat" -> 1 match (1/3), twice; leave out "dog" -> 2 (2/3).
    assert vqa_soft_accuracy("Cat", ["cat", "cat", "dog"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="at least 2 ground-truth answers"):
        vqa_soft_accuracy("cat", ["cat"])


def test_vqa_ground_truth_processed_only_when_answers_disagree():
    # Official behaviour: unanimous answers are compared as stored ...
    assert vqa_soft_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    # ... while disagreeing ones get the punctuation rules too.
    assert vqa_soft_accuracy("T-shirt", ["t-shirt"] * 9 + ["shirt"]) == pytest.approx(1.0)


def test_vqa_accuracy_metric():
    results = get_metric("vqa_accuracy").compute(
        ["Two.", "no", "a red car"], [["2"] * 10, ["yes"] * 9 + ["no"], ["red car"] * 2 + ["blue car"] * 8]
    )
    result = results["vqa_accuracy"]
    assert result.per_sample == pytest.approx([1.0, 0.3, 0.6])
    assert result.value == pytest.approx((1.0 + 0.3 + 0.6) / 3)
    assert result.comparable


def test_lmms_eval_style_also_normalises_disagreeing_ground_truths():
    # lmms-eval difference (a): the number/article step reaches the ground truths when they disagree
    answers = ["two"] * 3 + ["2"] * 7
    assert vqa_soft_accuracy("2", answers) == pytest.approx(1.0)  # seven "2" are enough officially too
    assert vqa_soft_accuracy("two", answers) == pytest.approx(1.0)  # "two" -> "2" on the prediction side
    answers = ["two"] * 8 + ["three"] * 2
    assert vqa_soft_accuracy("2", answers) == 0.0  # official: "two" stays "two" in the ground truths
    assert vqa_soft_accuracy("2", answers, style="lmms_eval") == pytest.approx(1.0)
    assert vqa_soft_accuracy("the dog", ["a dog"] * 9 + ["cat"], style="lmms_eval") == pytest.approx(1.0)
    assert vqa_soft_accuracy("the dog", ["a dog"] * 9 + ["cat"]) == 0.0


def test_lmms_eval_style_splits_the_possessive_of_the_prediction():
    # lmms-eval difference (b): EvalAI's word step turns "man's" into "man 's" on the prediction only
    answers = ["man's"] * 10
    assert vqa_soft_accuracy("man's", answers) == pytest.approx(1.0)
    assert vqa_soft_accuracy("man's", answers, style="lmms_eval") == 0.0
    # and it deletes "?" and "," before the punctuation rules
    assert vqa_soft_accuracy("yes?", ["yes"] * 10, style="lmms_eval") == pytest.approx(1.0)


def test_vqa_accuracy_style_option():
    lmms = get_metric("vqa_accuracy", style="lmms_eval")
    result = lmms.compute(["2", "man's"], [["two"] * 8 + ["three"] * 2, ["man's"] * 10])["vqa_accuracy"]
    assert result.per_sample == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match=r"option style='lmms' is not one of \('official', 'lmms_eval'\)"):
        get_metric("vqa_accuracy", style="lmms")


def test_vqa_accuracy_names_the_sample_with_one_answer():
    with pytest.raises(ValueError, match=r"references\[1\]: vqa_accuracy needs at least 2"):
        get_metric("vqa_accuracy").compute(["a", "b"], [["a", "a"], ["b"]])


# --- exact match, multiple choice, OneLLM substring ------------------------------------------


def test_exact_match():
    assert normalize_answer("  The  Cat, sat. ") == "cat sat"
    result = get_metric("exact_match").compute(
        ["The Cat.", "a dog", "cats", "blue"], [["cat"], ["cat", "Dog"], ["cat"], ["Blue!"]]
    )
    assert result["exact_match"].per_sample == [1.0, 1.0, 0.0, 1.0]
    assert result["exact_match"].value == 0.75


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        (" B) cat", "B"),
        ("B. a cat on a mat", "B"),
        ("(C) a dog", "C"),
        ("Answer: B", "B"),
        ("answer: (D)", "D"),
        ("The answer is B.", "B"),
        ("I think the correct answer is (A) because of the stripes.", "A"),
        ("Option C", "C"),
        ("A cat", None),  # an article, not option A
        ("the answer is a dog", None),
        ("I'm not sure", None),
        ("b", None),
        ("", None),
    ],
)
def test_mc_letter_extraction(text, letter):
    assert extract_choice_letter(text) == letter


def test_mc_letter_metric():
    results = get_metric("mc_letter").compute(["B", "The answer is C.", "A cat", "(D)"], [["B"], ["(B)"], ["A"], ["D"]])
    assert results["mc_letter"].per_sample == [1.0, 0.0, 0.0, 1.0]
    assert results["mc_letter"].value == 0.5
    with pytest.raises(ValueError, match=r"references\[0\]\[0\] is 'cat', not an option letter"):
        get_metric("mc_letter").compute(["B"], [["cat"]])


def test_onellm_substring_match_is_lenient_and_flagged():
    results = get_metric("onellm_substring_match").compute(
        ["A man is cooking.", "cat", "dog", "Hotdog", "bird"], [["man"], ["cats"], ["cat"], ["dog"], ["a bird flies"]]
    )
    result = results["onellm_substring_match"]
    assert result.per_sample == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert result.value == pytest.approx(0.8)
    assert result.comparable is False
    assert "lenient" in result.note and "not comparable" in result.note
    # The other QA metrics stay comparable.
    assert get_metric("exact_match").compute(["man"], [["man"]])["exact_match"].comparable


def test_dead_meteor_jvm_is_replaced_by_the_next_caption_task():
    caption._stop_meteor()
    first = get_metric("coco_caption").compute(CAPTION_PREDS[:2], CAPTION_REFS[:2])
    dead = caption._shared_meteor
    dead.meteor_p.kill()
    dead.meteor_p.wait()
    second = get_metric("coco_caption").compute(CAPTION_PREDS[:2], CAPTION_REFS[:2])
    assert caption._shared_meteor is not dead and caption._shared_meteor.meteor_p.poll() is None
    assert second["meteor"].value == first["meteor"].value
    caption._stop_meteor()
