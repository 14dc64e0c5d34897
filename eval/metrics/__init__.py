"""Metrics registered by name.

Every module in this folder is imported here, so a metric registers itself by existing: adding
one is a class with ``@register_metric("name")`` in a new file, nothing else changes.

    from onellm.eval.metrics import get_metric
    results = get_metric("coco_caption").compute(predictions, references)
    results["cider"].value, results["spice"].available

Registered names: ``coco_caption`` (bleu_1..bleu_4, meteor, rouge_l, cider, spice through
pycocoevalcap), ``vqa_accuracy``, ``exact_match``, ``mc_letter``, ``onellm_substring_match``.
"""

import importlib
import pkgutil

from onellm.eval.metrics.base import Metric, MetricResult, check_inputs, get_metric, metric_names, register_metric

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Metric", "MetricResult", "check_inputs", "get_metric", "metric_names", "register_metric"]
