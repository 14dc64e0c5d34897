"""Captioning metrics by the reference implementation, pycocoevalcap 1.2.

Published COCO-style numbers come from pycocoevalcap's scorers on PTB-tokenised text, so we call
exactly those scorers and differ from ``COCOEvalCap.evaluate`` only where it wastes time or can
silently misalign samples:

* one PTB tokenizer run (a JVM start, ~0.5 s) covers references and predictions together, where
  COCOEvalCap runs it twice;
* the METEOR JVM is started first, so its start-up (loading a 60 MB paraphrase table) overlaps
  tokenisation and the pure-Python BLEU/ROUGE-L/CIDEr-D, and then kept for the next caption task of
  the process (one start per evaluation run instead of one per task; stopped at exit, restarted if
  it died);
* line breaks inside a caption (``\\r``, ``\\u2028``, ...) are turned into spaces before the
  line-based Java tokenizer sees them, and the tokenizer's output is counted, because an extra
  line would shift every later caption onto the wrong sample without an error.

The ``Cider`` scorer of pycocoevalcap is CIDEr-D (clipped counts, Gaussian length penalty,
sigma 6), the variant papers report as "CIDEr". SPICE needs Stanford CoreNLP 3.6.0, which
pycocoevalcap downloads on first use; offline it is reported unavailable, never guessed.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import pycocoevalcap.spice.spice as _spice_module
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

from onellm.eval.metrics.base import Metric, MetricResult, check_inputs, register_metric

# The jars pycocoevalcap's get_stanford_models() would download into spice/lib.
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

BLEU_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")

# Characters the Java tokenizer (or Python's splitlines) treats as line ends: one would split a
# caption into two output lines and shift all later captions by one.
_LINE_BREAKS = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class JavaRequiredError(RuntimeError):
    """Raised when ``java`` is not on PATH and the caller did not opt into ``no_java=True``."""


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (pycocoevalcap runs it by that bare name)."""
    return shutil.which("java") is not None


def require_java() -> None:
    """Fail early, with the fix, instead of a FileNotFoundError from deep inside pycocoevalcap."""
    if not java_available():
        raise JavaRequiredError(
            "coco_caption needs Java: pycocoevalcap runs the PTB tokenizer (stanford-corenlp-3.4.1.jar) and "
            "METEOR (meteor-1.5.jar) with `java`, which was not found on PATH. Install a Java runtime "
            "(Debian/Ubuntu: `apt-get install default-jre-headless`; Java 17 works) or pass no_java=True to get "
            "approximate BLEU/ROUGE-L/CIDEr-D marked comparable=False, without METEOR and SPICE."
        )


def spice_lib_dir() -> Path:
    """The folder of the installed pycocoevalcap where SPICE looks for the CoreNLP jars."""
    return Path(_spice_module.__file__).resolve().parent / "lib"


def missing_spice_jars(lib_dir: Path | None = None) -> list[str]:
    """Names of the CoreNLP jars SPICE needs that are absent from ``lib_dir`` (default: the installed one).

    Checked before constructing ``Spice``, whose constructor would otherwise try to download them.
    """
    folder = spice_lib_dir() if lib_dir is None else lib_dir
    return [jar for jar in SPICE_CORENLP_JARS if not (folder / jar).is_file()]


def one_line(text: str) -> str:
    """``text`` with every line break replaced by a space, for the line-based Java tokenizer."""
    return _LINE_BREAKS.sub(" ", text)


def ptb_tokenize(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Tokenise references and predictions in one PTBTokenizer run.

    Returns ``(gts, res)`` in pycocoevalcap's shape: ``{i: [tokenised refs]}``, ``{i: [tokenised prediction]}``,
    keys 0..N-1 in input order.
    """
    # PTBTokenizer writes one line per caption, grouped by key in dict order: references first,
    # so their input (and the tokenizer's state) is the same as in COCOEvalCap's separate runs.
    captions: dict[tuple[str, int], list[dict[str, str]]] = {}
    for i, refs in enumerate(references):
        captions[("ref", i)] = [{"caption": one_line(ref)} for ref in refs]
    for i, pred in enumerate(predictions):
        captions[("pred", i)] = [{"caption": one_line(pred)}]
    tokenized = PTBTokenizer().tokenize(captions)
    gts: dict[int, list[str]] = {}
    res: dict[int, list[str]] = {}
    for (kind, i), wanted in captions.items():
        got = tokenized.get((kind, i), [])
        if len(got) != len(wanted):
            what = f"references[{i}]" if kind == "ref" else f"predictions[{i}]"
            raise RuntimeError(
                f"PTB tokenizer output does not line up with its input at {what}: expected {len(wanted)} line(s), "
                f"got {len(got)}. The Java tokenizer may have failed (see its stderr above)."
            )
        (gts if kind == "ref" else res)[i] = got
    return gts, res


_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_BRACKET_RE = re.compile(r"[()\[\]{}]")
_NT_CLITIC = re.compile(r"(?<=[a-z])n't\b")
_CLITIC = re.compile(r"(?<=[a-z])'(s|re|ve|ll|d|m)\b")
_APPROX_TOKEN = re.compile(r"-[lr][rsc]b-|n't|'(?:s|re|ve|ll|d|m)\b|[a-z0-9]+(?:[-.,/'][a-z0-9]+)*|\S")
# PTB turns '"' into `` or '' (both dropped by pycocoevalcap); here it stays '"', so drop it too.
_APPROX_DROP = frozenset(PUNCTUATIONS) | {'"'}


def approximate_ptb_tokenize(text: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's PTB tokenisation, used only with ``no_java=True``.

    Lower-cases, splits clitics the way PTB does ("don't" -> "do n't", "dog's" -> "dog 's"),
    spells brackets as the lower-cased PTB escapes pycocoevalcap keeps ("-lrb-"), and drops the
    tokens pycocoevalcap's PUNCTUATIONS list drops. It agrees with the Java tokenizer on plain
    captions but not on abbreviations ("u.s."), units ("3.5kg") and the like, hence comparable=False.
    """
    text = one_line(text).lower()
    text = _BRACKET_RE.sub(lambda m: _BRACKETS[m.group(0)], text)
    text = _NT_CLITIC.sub(" n't", text)
    text = _CLITIC.sub(r" '\1", text)
    return " ".join(tok for tok in _APPROX_TOKEN.findall(text) if tok not in _APPROX_DROP)


def _close_meteor(meteor: Meteor) -> None:
    """Stop METEOR's JVM now rather than at garbage collection.

    pycocoevalcap's ``Meteor.__del__`` takes the scorer's lock; if ``compute_score`` raised while
    holding it, that finaliser would block forever, so the lock is freed first.
    """
    if meteor.lock.locked():
        meteor.lock.release()
    with meteor.lock:
        proc = meteor.meteor_p
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        proc.kill()
        proc.wait()


_shared_meteor: Meteor | None = None
_shared_meteor_lock = threading.Lock()


def _start_meteor() -> Meteor:
    """The process's METEOR scorer, started on first use (its JVM takes seconds to load) and reused after."""
    global _shared_meteor
    with _shared_meteor_lock:
        if _shared_meteor is None or _shared_meteor.meteor_p.poll() is not None:
            _shared_meteor = Meteor()
        return _shared_meteor


def _stop_meteor() -> None:
    """Stop the shared METEOR JVM (at exit, or after it failed so that the next task starts a fresh one)."""
    global _shared_meteor
    with _shared_meteor_lock:
        meteor, _shared_meteor = _shared_meteor, None
    if meteor is not None:
        _close_meteor(meteor)


atexit.register(_stop_meteor)


def _meteor_score(meteor: Meteor, gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    try:
        score, scores = meteor.compute_score(gts, res)
    except (ValueError, OSError) as exc:  # the JVM died: readline() returned b"" or the pipe broke
        exit_code = meteor.meteor_p.poll()
        raise RuntimeError(
            f"METEOR (java -jar meteor-1.5.jar) stopped answering (exit code {exit_code}): {exc}. "
            "It needs about 2 GB of memory for its -Xmx2G heap."
        ) from exc
    return float(score), [float(s) for s in scores]


def _spice_result(gts: dict[int, list[str]], res: dict[int, list[str]]) -> MetricResult:
    missing = missing_spice_jars()
    if missing:
        return MetricResult(
            "spice",
            None,
            available=False,
            note=(
                f"SPICE needs Stanford CoreNLP ({', '.join(missing)}) in {spice_lib_dir()}; pycocoevalcap downloads "
                "it on first use, which is impossible offline. Put the jars there to enable SPICE."
            ),
        )
    try:
        score, scores = Spice().compute_score(gts, res)
        per_sample = [float(s["All"]["f"]) for s in scores]
    except Exception as exc:  # SPICE is optional (it often fails under Java >= 9): report, do not crash
        return MetricResult("spice", None, available=False, note=f"SPICE failed: {type(exc).__name__}: {exc}")
    value = float(score)
    note = "some samples had no SPICE score (NaN)" if math.isnan(value) else ""
    return MetricResult("spice", value, per_sample, note=note)


def _python_scores(
    gts: dict[int, list[str]], res: dict[int, list[str]], comparable: bool, note: str
) -> dict[str, MetricResult]:
    """BLEU-1..4 (corpus level, 'closest' reference length), ROUGE-L and CIDEr-D, exactly as COCOEvalCap calls them."""
    results: dict[str, MetricResult] = {}
    bleu, bleu_per_sample = Bleu(4).compute_score(gts, res, verbose=0)
    for name, value, per_sample in zip(BLEU_NAMES, bleu, bleu_per_sample, strict=True):
        results[name] = MetricResult(
            name, float(value), [float(s) for s in per_sample], comparable=comparable, note=note
        )
    rouge, rouge_per_sample = Rouge().compute_score(gts, res)
    results["rouge_l"] = MetricResult(
        "rouge_l", float(rouge), [float(s) for s in rouge_per_sample], comparable=comparable, note=note
    )
    cider, cider_per_sample = Cider().compute_score(gts, res)
    results["cider"] = MetricResult(
        "cider", float(cider), [float(s) for s in cider_per_sample], comparable=comparable, note=note
    )
    return results


@register_metric("coco_caption")
class CocoCaption(Metric):
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and SPICE of captions, through pycocoevalcap.

    ``no_java=True`` never starts Java: text is tokenised by ``approximate_ptb_tokenize``, METEOR
    and SPICE are reported unavailable and every result is marked ``comparable=False``. Without
    it, a missing ``java`` raises JavaRequiredError already at construction, before a task spends
    time generating.
    """

    outputs = (*BLEU_NAMES, "meteor", "rouge_l", "cider", "spice")

    def __init__(self, no_java: bool = False) -> None:
        self.no_java = no_java
        if not no_java:
            require_java()

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, MetricResult]:
        check_inputs(self.name, predictions, references)
        if self.no_java:
            results = self._compute_without_java(predictions, references)
        else:
            results = self._compute_with_java(predictions, references)
        return {name: results[name] for name in self.outputs}

    def _compute_with_java(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> dict[str, MetricResult]:
        require_java()
        meteor = _start_meteor()  # a new JVM loads while we tokenise and run the Python scorers
        try:
            gts, res = ptb_tokenize(predictions, references)
            results = _python_scores(gts, res, comparable=True, note="")
            value, per_sample = _meteor_score(meteor, gts, res)
        except BaseException:
            _stop_meteor()
            raise
        results["meteor"] = MetricResult("meteor", value, per_sample)
        results["spice"] = _spice_result(gts, res)
        return results

    def _compute_without_java(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> dict[str, MetricResult]:
        gts = {i: [approximate_ptb_tokenize(ref) for ref in refs] for i, refs in enumerate(references)}
        res = {i: [approximate_ptb_tokenize(pred)] for i, pred in enumerate(predictions)}
        note = (
            "no_java=True: tokenised with a pure-Python approximation of the PTB tokenizer, "
            "not comparable to pycocoevalcap numbers"
        )
        results = _python_scores(gts, res, comparable=False, note=note)
        for name, jar in (("meteor", "meteor-1.5.jar"), ("spice", "spice-1.0.jar")):
            results[name] = MetricResult(
                name, None, available=False, comparable=False, note=f"needs Java ({jar}); skipped because no_java=True"
            )
        return results
