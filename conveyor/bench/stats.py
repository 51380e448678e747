"""Latency percentiles as load testers report them.

A reported p99 must be a latency that some request actually saw, and at least 99% of the
requests must have seen no more: that is the nearest-rank percentile (the smallest sample
whose rank is at least ``ceil(p / 100 * n)``), what HdrHistogram and wrk2 print. Linear
interpolation between samples would invent latencies nobody observed and, on the tail,
understate p99.9 whenever fewer than 1,000 samples were taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


def percentile_key(p: float) -> str:
    """The report's field name for percentile ``p``: 50 -> ``p50_ms``, 99.9 -> ``p999_ms``."""
    return "p" + f"{p:g}".replace(".", "") + "_ms"


def nearest_rank(
    samples: Sequence[float] | np.ndarray, percentiles: Sequence[float]
) -> list[float]:
    """The nearest-rank ``percentiles`` (0 < p <= 100) of ``samples``; NaN for no samples."""
    values = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(values)
    out = []
    for p in percentiles:
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        if n == 0:
            out.append(float("nan"))
            continue
        # The tiny epsilon keeps 99.9 / 100 * 1000 = 999.0000000000001 at rank 999.
        rank = int(np.ceil(p / 100.0 * n - 1e-9))
        out.append(float(values[max(rank, 1) - 1]))
    return out


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``p50_ms``, ``p90_ms``, ``p99_ms``, ``p999_ms``, ``mean_ms``, ``max_ms`` of the samples.

    Every field is NaN when there is no sample (no request answered); the report's files
    write that as null (JSON) or an empty cell (CSV), see :mod:`conveyor.bench.report`.
    """
    values = np.asarray(latencies_ms, dtype=np.float64)
    summary = dict(
        zip(map(percentile_key, PERCENTILES), nearest_rank(values, PERCENTILES), strict=True)
    )
    summary["mean_ms"] = float(values.mean()) if len(values) else float("nan")
    summary["max_ms"] = float(values.max()) if len(values) else float("nan")
    return summary
