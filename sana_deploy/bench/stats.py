"""Summary statistics of timed runs: median, p90, p99, min, mean, std (all in milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sana_deploy.errors import fail

STATISTICS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "mean_ms", "std_ms")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between order statistics.

    This is numpy's default ("linear", Hyndman & Fan type 7): rank ``(n - 1) * q / 100`` in the sorted
    values, interpolated between its two neighbours.
    """
    if not values:
        fail("percentile of no values: at least one timed run is needed (--runs >= 1).")
    if not 0 <= q <= 100:
        fail(f"percentile {q} is outside 0..100.")
    xs = sorted(values)
    rank = (len(xs) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    """Every statistic in :data:`STATISTICS` of one stage's timed runs."""
    n = len(times_ms)
    mean = sum(times_ms) / n if n else float("nan")
    var = sum((t - mean) ** 2 for t in times_ms) / (n - 1) if n > 1 else 0.0
    return {
        "median_ms": percentile(times_ms, 50),
        "p90_ms": percentile(times_ms, 90),
        "p99_ms": percentile(times_ms, 99),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
        "mean_ms": mean,
        "std_ms": math.sqrt(var),
    }
