"""95 % intervals for evaluation scores: Wilson for accuracies (k of n), a percentile bootstrap over items otherwise.

Wilson rather than the normal approximation because the synthetic test splits are small (150 questions) and the
scores of interest sit near 0 or 1, where ``p ± 1.96 sqrt(p(1-p)/n)`` leaves [0, 1] or collapses to a point.
CIDEr-D is the mean of per-item scores once the document frequencies are fixed by the references, so resampling the
per-item scores (the references stay as they are) is the usual bootstrap for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z_95 = 1.959964  # two-sided 95 % quantile of the standard normal
BOOTSTRAP_SAMPLES = 2000  # resamples; the 2.5/97.5 % quantiles move by < 0.01 CIDEr between seeds at n = 50


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``; ``(0.0, 1.0)`` when ``n == 0``."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (the formula leaves ~1e-18 there)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_interval(
    values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling items with replacement)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"bootstrap_interval: need a non-empty list of numbers, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("bootstrap_interval: values hold NaN or infinity")
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(samples, array.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


__all__ = ["BOOTSTRAP_SAMPLES", "Z_95", "bootstrap_interval", "wilson_interval"]
