"""95 % intervals: Wilson against known values, the bootstrap against the normal approximation for a large sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onellm.eval.intervals import bootstrap_interval, wilson_interval


def test_wilson_interval_known_values_and_edges():
    low, high = wilson_interval(75, 150)  # p = 0.5, n = 150
    assert (low, high) == pytest.approx((0.4210, 0.5790), abs=1e-4)
    assert wilson_interval(0, 150)[0] == 0.0 and 0.0 < wilson_interval(0, 150)[1] < 0.03  # never a point at 0
    assert wilson_interval(150, 150)[1] == 1.0 and wilson_interval(150, 150)[0] > 0.97
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes=5, n=3"):
        wilson_interval(5, 3)


def test_bootstrap_interval_matches_the_normal_approximation_on_a_large_sample():
    values = np.random.default_rng(1).normal(1.0, 0.5, size=400)
    low, high = bootstrap_interval(values)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.01) and high == pytest.approx(
        values.mean() + half, abs=0.01
    )
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_interval(values, seed=3) != (low, high)  # seeded, and the seed matters
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_interval([1.0, float("nan")])
