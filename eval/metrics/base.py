"""The metric contract and its registry.

A metric is a class with one method, ``compute(predictions, references)``, registered under a
name with ``@register_metric("name")``. Task YAML files list metric names; the runner asks
``get_metric(name)`` for an instance. Nothing dispatches on names anywhere else, so adding a
metric is one class in one file of this folder (the package imports every module in it).

All values are fractions (VQA accuracy 0.62, not 62.0; CIDEr-D 1.05, not 105): the report
layer decides how to print them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from onellm.registry import Registry


@dataclass(frozen=True)
class MetricResult:
    """One named number of a metric run.

    ``value`` is ``None`` exactly when ``available`` is False (e.g. SPICE without its CoreNLP
    jars): a missing metric is reported as missing, never as a made-up number.
    ``comparable`` is False when the number is not comparable to published numbers of the
    same name (lenient scoring, or an approximation of the reference tokenizer); ``note`` says why.
    ``per_sample`` holds one score per prediction, in input order, where the scorer defines one.
    """

    name: str
    value: float | None
    per_sample: list[float] | None = None
    available: bool = True
    comparable: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        if self.available and self.value is None:
            raise ValueError(f"MetricResult {self.name!r}: available results need a value; got None")
        if not self.available and self.value is not None:
            raise ValueError(f"MetricResult {self.name!r}: unavailable results must have value None, got {self.value}")


class Metric(ABC):
    """Scores a list of predictions against per-sample reference lists.

    ``outputs`` lists the result names ``compute`` returns (a caption scorer yields several), so a
    task can check its report columns before spending time on generation.
    """

    name: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, MetricResult]:
        """Return ``{result_name: MetricResult}`` for the whole set, in ``outputs`` order."""


_REGISTRY: Registry[type[Metric]] = Registry("metric")

MetricT = TypeVar("MetricT", bound=type[Metric])


def register_metric(name: str) -> Callable[[MetricT], MetricT]:
    """Class decorator: make ``cls`` available as ``get_metric(name)``.

    A second class under the same name is an error rather than a silent override, so two files
    cannot fight over a name depending on import order.
    """

    def decorate(cls: MetricT) -> MetricT:
        if not (isinstance(cls, type) and issubclass(cls, Metric)):
            raise TypeError(f"register_metric({name!r}) decorates Metric subclasses; got {cls!r}")
        _REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return decorate


def get_metric(name: str, **options: Any) -> Metric:
    """Instantiate the metric registered as ``name``; ``options`` go to its constructor.

    Raises KeyError naming the known metrics when ``name`` is unknown (a typo in a task YAML).
    """
    return _REGISTRY[name](**options)


def metric_names() -> list[str]:
    """Registered metric names, sorted."""
    return _REGISTRY.names()


def check_inputs(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Validate the shared input shape: one prediction string and a non-empty list of non-blank
    reference strings per sample. Errors name the sample index, so a bad row of a task file can be
    found without re-running generation.
    """
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError(f"{metric}: predictions must be a list of strings, got {type(predictions).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"{metric}: references must be a list of lists of strings, got {type(references).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"{metric}: predictions has {len(predictions)} items but references has {len(references)}; "
            "they must be aligned one-to-one"
        )
    if not predictions:
        raise ValueError(f"{metric}: no samples to score (predictions and references are empty)")
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(pred, str):
            raise TypeError(f"{metric}: predictions[{i}] must be a str, got {type(pred).__name__}")
        if isinstance(refs, str):
            raise TypeError(f"{metric}: references[{i}] is a str ({refs!r}); wrap it in a list: [{refs!r}]")
        if not isinstance(refs, Sequence):
            raise TypeError(f"{metric}: references[{i}] must be a list of strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"{metric}: references[{i}] is empty; every sample needs at least one reference")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"{metric}: references[{i}][{j}] must be a str, got {type(ref).__name__}")
            if not ref.strip():
                raise ValueError(f"{metric}: references[{i}][{j}] is blank; references must contain text")


def mean(values: Sequence[float]) -> float:
    """Plain mean as a Python float (inputs are validated non-empty)."""
    return float(sum(values)) / len(values)
