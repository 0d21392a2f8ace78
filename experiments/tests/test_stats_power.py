"""Sample size and minimum detectable effect against the formula written out by hand."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from experiments.stats import (
    StatsError,
    minimum_detectable_effect,
    sample_size_per_arm,
    sample_size_per_arm_mean,
)

Z = NormalDist().inv_cdf


def by_hand(p1: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> float:
    p2 = p1 * (1 + mde)
    pbar = (p1 + p2) / 2
    top = Z(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar)) + Z(power) * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2)
    )
    return top**2 / (p2 - p1) ** 2


@pytest.mark.parametrize(
    ("p1", "mde", "alpha", "power"),
    [
        (0.05, 0.10, 0.05, 0.8),
        (0.10, 0.05, 0.05, 0.9),
        (0.20, -0.10, 0.01, 0.8),
        (0.01, 0.50, 0.10, 0.8),
        (0.50, 0.02, 0.05, 0.95),
        (0.03, 1.00, 0.05, 0.8),
    ],
)
def test_matches_the_classic_two_proportion_formula(p1, mde, alpha, power):
    got = sample_size_per_arm(baseline_rate=p1, relative_mde=mde, alpha=alpha, power=power)
    assert isinstance(got, int)
    assert got == math.ceil(by_hand(p1, mde, alpha, power))


def test_known_textbook_value():
    # 5% -> 6% at alpha 0.05 (two-sided) and 80% power: 8,158 per arm.
    assert sample_size_per_arm(baseline_rate=0.05, relative_mde=0.2) == 8158


@pytest.mark.parametrize(("p1", "n"), [(0.05, 8158), (0.1, 1000), (0.3, 50_000), (0.02, 200)])
def test_minimum_detectable_effect_inverts_sample_size(p1, n):
    mde = minimum_detectable_effect(baseline_rate=p1, n_per_arm=n)
    assert mde > 0
    assert by_hand(p1, mde) == pytest.approx(n, rel=1e-9)
    assert sample_size_per_arm(baseline_rate=p1, relative_mde=mde * 1.001) <= n
    assert minimum_detectable_effect(baseline_rate=p1, n_per_arm=4 * n) < mde


def test_mean_metric_sample_size_by_hand():
    n = sample_size_per_arm_mean(baseline_mean=20.0, baseline_std=35.0, relative_mde=0.05)
    z = Z(0.975) + Z(0.8)
    assert n == math.ceil(2 * z**2 * 35.0**2 / (20.0 * 0.05) ** 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline_rate": 0.0, "relative_mde": 0.1}, "baseline_rate must be strictly between"),
        ({"baseline_rate": 1.0, "relative_mde": 0.1}, "baseline_rate must be strictly between"),
        ({"baseline_rate": 0.1, "relative_mde": 0.0}, "relative_mde must not be 0"),
        ({"baseline_rate": 0.6, "relative_mde": 1.0}, "must be strictly between 0 and 1"),
        ({"baseline_rate": 0.1, "relative_mde": -1.0}, "must be strictly between 0 and 1"),
        ({"baseline_rate": 0.1, "relative_mde": 0.1, "alpha": 0}, "alpha"),
        ({"baseline_rate": 0.1, "relative_mde": 0.1, "power": 1}, "power"),
        ({"baseline_rate": math.nan, "relative_mde": 0.1}, "finite"),
    ],
)
def test_invalid_input_raises(kwargs, message):
    with pytest.raises(StatsError, match=message):
        sample_size_per_arm(**kwargs)


def test_too_few_units_for_any_lift():
    with pytest.raises(StatsError, match="cannot detect any lift"):
        minimum_detectable_effect(baseline_rate=0.9, n_per_arm=1)
    with pytest.raises(StatsError, match="n_per_arm"):
        minimum_detectable_effect(baseline_rate=0.1, n_per_arm=-5)
