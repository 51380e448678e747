"""Nearest-rank percentiles on samples whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conveyor.bench.stats import latency_summary, nearest_rank, percentile_key


def test_one_to_a_thousand() -> None:
    samples = np.random.default_rng(0).permutation(np.arange(1, 1001, dtype=float))
    assert nearest_rank(samples, [50, 90, 99, 99.9, 100]) == [500, 900, 990, 999, 1000]


def test_few_samples_take_an_observed_value_not_an_interpolation() -> None:
    samples = [1.0, 2.0, 3.0, 4.0, 100.0]
    # ceil(0.5 * 5) = 3rd; ceil(0.9 * 5) = 5th: p90 is the outlier, which linear
    # interpolation (np.percentile's default: 61.6) would understate.
    assert nearest_rank(samples, [50, 90, 99.9]) == [3.0, 100.0, 100.0]
    assert nearest_rank([7.0], [50, 99.9]) == [7.0, 7.0]


def test_matches_numpy_inverted_cdf() -> None:
    samples = np.random.default_rng(1).exponential(2.0, 12_345)
    ps = [50, 90, 99, 99.9]
    expected = np.percentile(samples, ps, method="inverted_cdf")
    assert nearest_rank(samples, ps) == pytest.approx(list(expected))


def test_empty_and_invalid() -> None:
    assert all(math.isnan(v) for v in nearest_rank([], [50, 99]))
    with pytest.raises(ValueError, match="percentile"):
        nearest_rank([1.0], [0])


def test_summary_fields() -> None:
    summary = latency_summary(np.arange(1, 101, dtype=float))
    assert summary == {
        "p50_ms": 50.0,
        "p90_ms": 90.0,
        "p99_ms": 99.0,
        "p999_ms": 100.0,
        "mean_ms": 50.5,
        "max_ms": 100.0,
    }
    assert percentile_key(99.9) == "p999_ms"
