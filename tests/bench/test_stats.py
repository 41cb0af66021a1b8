"""Percentiles and summaries on known inputs (numpy's default linear interpolation)."""

from __future__ import annotations

import numpy as np
import pytest

from sana_deploy.bench.stats import STATISTICS, percentile, summarize
from sana_deploy.errors import SanaDeployError


def test_percentile_known_values():
    xs = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(xs, 0) == 15.0
    assert percentile(xs, 100) == 50.0
    assert percentile(xs, 50) == 35.0
    assert percentile(xs, 40) == pytest.approx(29.0)  # rank 1.6: 20 + 0.6 * 15
    assert percentile(xs, 90) == pytest.approx(46.0)  # rank 3.6: 40 + 0.6 * 10
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [1, 10, 25, 50, 90, 99])
def test_percentile_matches_numpy_on_unsorted(q):
    rng = np.random.default_rng(q)
    xs = rng.exponential(10.0, size=37).tolist()
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)


def test_summarize_fields_and_values():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert set(s) == set(STATISTICS)
    assert s["median_ms"] == 2.5 and s["min_ms"] == 1.0 and s["max_ms"] == 4.0 and s["mean_ms"] == 2.5
    assert s["p90_ms"] == pytest.approx(3.7)
    assert s["p99_ms"] == pytest.approx(3.97)
    assert s["std_ms"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(SanaDeployError, match="runs >= 1"):
        percentile([], 50)
    with pytest.raises(SanaDeployError, match="outside"):
        percentile([1.0], 101)
