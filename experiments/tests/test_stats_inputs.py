"""Input validation: invalid data raises StatsError with a clear message."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from experiments.stats import (
    CupedStats,
    MeanStats,
    ProportionStats,
    RatioStats,
    StatsArrays,
    StatsError,
    bayesian_test,
    frequentist_test,
)


def test_stats_error_is_a_value_error():
    assert issubclass(StatsError, ValueError)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ProportionStats(-1, 0), "n must not be negative"),
        (lambda: ProportionStats(10, 11), "conversions (11) must not exceed n (10)"),
        (lambda: ProportionStats(10, -1), "conversions must not be negative"),
        (lambda: ProportionStats(10.5, 1), "n must be a whole number"),
        (lambda: ProportionStats(math.nan, 1), "n must be finite"),
        (lambda: ProportionStats(10, math.inf), "conversions must be finite"),
        (lambda: ProportionStats(True, 0), "n must be a number"),
        (lambda: ProportionStats("10", 1), "n must be a number"),
        (lambda: MeanStats(10, math.nan, 1.0), "sum must be finite"),
        (lambda: MeanStats(10, 1.0, -1.0), "sum_squares must not be negative"),
        (lambda: MeanStats(10, 1.0, math.inf), "sum_squares must be finite"),
        (lambda: MeanStats(0, 1.0, 1.0), "sum must be 0 when n is 0"),
        (lambda: MeanStats(-3, 1.0, 1.0), "n must not be negative"),
        (lambda: RatioStats(10, 1, 1, 1, -1, 1), "den_sum_squares must not be negative"),
        (lambda: RatioStats(10, 1, 1, 1, 1, math.nan), "num_den_sum_product must be finite"),
        (lambda: CupedStats(10, 1, 1, 1, 1, math.inf), "sum_product must be finite"),
        (lambda: CupedStats(10, 1, 1, 1, -2, 1), "pre_sum_squares must not be negative"),
    ],
)
def test_invalid_stats_raise_with_a_clear_message(make, message):
    with pytest.raises(StatsError, match=_escape(message)):
        make()


def _escape(text: str) -> str:
    return re.escape(text)


def test_stats_are_frozen_and_normalised():
    stats = ProportionStats(np.int64(100), np.float64(7.0))
    assert stats.n == 100 and type(stats.n) is int
    assert stats.conversions == 7 and type(stats.conversions) is int
    assert stats.mean == 0.07
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.n = 5  # type: ignore[misc]
    mean = MeanStats(4, np.float32(2.0), 3)
    assert type(mean.sum) is float and type(mean.sum_squares) is float


def test_mixed_metric_kinds_are_rejected():
    with pytest.raises(StatsError, match="same kind of metric"):
        frequentist_test(ProportionStats(10, 1), MeanStats(10, 1.0, 1.0))
    with pytest.raises(StatsError, match="must be ProportionStats, MeanStats"):
        bayesian_test((10, 1), (10, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, math.nan, "0.05", None])
def test_alpha_must_be_a_probability(alpha):
    with pytest.raises(StatsError, match="alpha"):
        frequentist_test(ProportionStats(10, 1), ProportionStats(10, 2), alpha=alpha)


@pytest.mark.parametrize("tuning", [0, -5, math.nan, math.inf, "5000", True])
def test_sequential_tuning_must_be_positive(tuning):
    with pytest.raises(StatsError, match="sequential_tuning"):
        frequentist_test(ProportionStats(10, 1), ProportionStats(10, 2), sequential_tuning=tuning)


@pytest.mark.parametrize("level", [0, 1, 95, math.nan])
def test_ci_level_must_be_a_probability(level):
    with pytest.raises(StatsError, match="ci_level"):
        bayesian_test(ProportionStats(10, 1), ProportionStats(10, 2), ci_level=level)


def _grid(value: float = 1.0) -> np.ndarray:
    return np.full((2, 3, 4), value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StatsArrays.proportion(np.ones((3, 4)), np.ones((3, 4))), "shaped (metrics"),
        (lambda: StatsArrays.proportion(_grid(10), np.ones((2, 3, 5))), "expected (2, 3, 4)"),
        (lambda: StatsArrays.proportion(_grid(-1), _grid(0)), "n must not be negative"),
        (lambda: StatsArrays.proportion(_grid(1.5), _grid(0)), "n must be a whole number"),
        (lambda: StatsArrays.proportion(_grid(10), _grid(11)), "conversions must be whole"),
        (lambda: StatsArrays.proportion(_grid(10), _grid(math.nan)), "must be finite"),
        (lambda: StatsArrays.mean(_grid(10), _grid(1), _grid(-1)), "sum_squares must not be"),
        (lambda: StatsArrays.mean(_grid(0), _grid(1), _grid(1)), "sums must be 0 where n is 0"),
        (lambda: StatsArrays.proportion(np.ones((2, 1, 4)), np.ones((2, 1, 4))), "two variants"),
        (lambda: StatsArrays.proportion([["a"]], [["b"]]), "must be numeric"),
    ],
)
def test_invalid_arrays_raise(build, message):
    with pytest.raises(StatsError, match=_escape(message)):
        build()


def test_kinds_must_match_the_metric_axis():
    with pytest.raises(StatsError, match="kinds has 1 entries for 2 metric"):
        StatsArrays(("mean",), _grid(5), _grid(1), _grid(1), _grid(0), _grid(0), _grid(0))
    with pytest.raises(ValueError):
        StatsArrays(("median", "mean"), _grid(5), _grid(1), _grid(1), _grid(0), _grid(0), _grid(0))


def test_arrays_are_read_only_copies():
    n = _grid(10.0)
    stats = StatsArrays.proportion(n, _grid(3))
    n[0, 0, 0] = 99  # the caller's array stays writable
    assert stats.n[0, 0, 0] == 10
    with pytest.raises(ValueError):
        stats.n[0, 0, 0] = 5
