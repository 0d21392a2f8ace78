"""Probability to be best and Thompson-sampling weights: seeded, bounded, analytically sane."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from experiments.stats import (
    CupedStats,
    MeanStats,
    ProportionStats,
    StatsError,
    probability_to_be_best,
    thompson_weights,
)


def test_two_arms_match_the_normal_posterior_analytically():
    a, b = MeanStats(400, 4000.0, 80_000.0), MeanStats(420, 4300.0, 86_000.0)
    probs = probability_to_be_best([a, b], n_samples=200_000, seed=1)
    var_a = (80_000 - 4000**2 / 400) / 399 / 400
    var_b = (86_000 - 4300**2 / 420) / 419 / 420
    want = sps.norm.cdf((4300 / 420 - 10.0) / math.sqrt(var_a + var_b))
    assert probs[1] == pytest.approx(want, abs=0.005)  # Monte Carlo error ~0.001
    assert sum(probs) == pytest.approx(1.0)


def test_seeded_and_order_preserving():
    arms = [ProportionStats(1000, 100), ProportionStats(1000, 115), ProportionStats(1000, 90)]
    first = probability_to_be_best(arms, seed=42)
    assert first == probability_to_be_best(arms, seed=42)
    assert first != probability_to_be_best(arms, seed=43)
    assert max(range(3), key=first.__getitem__) == 1
    lower = probability_to_be_best(arms, seed=42, higher_is_better=False)
    assert max(range(3), key=lower.__getitem__) == 2


def test_cuped_arms_use_adjusted_means():
    arms = [
        CupedStats(1000, 10_000.0, 150_000.0, 9_000.0, 120_000.0, 130_000.0),
        CupedStats(1000, 10_200.0, 155_000.0, 9_300.0, 125_000.0, 135_000.0),
    ]
    probs = probability_to_be_best(arms, seed=0)
    assert sum(probs) == pytest.approx(1.0) and all(0 <= p <= 1 for p in probs)


def test_empty_arms_cannot_be_best():
    assert probability_to_be_best([MeanStats(0, 0, 0), MeanStats(10, 5.0, 5.0)]) == [0.0, 1.0]
    assert probability_to_be_best([MeanStats(0, 0, 0), MeanStats(0, 0, 0)]) == [0.5, 0.5]


def test_thompson_weights_are_seeded_floored_and_sum_to_one():
    arms = [ProportionStats(5000, 250), ProportionStats(5000, 400), ProportionStats(5000, 240)]
    weights = thompson_weights(arms, seed=7)
    assert weights == thompson_weights(arms, seed=7)
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    assert min(weights) >= 0.01 - 1e-12
    assert weights[1] > 0.95
    assert weights[0] == pytest.approx(0.01) and weights[2] == pytest.approx(0.01)


def test_thompson_two_beta_arms_match_integration():
    a, b = ProportionStats(200, 20), ProportionStats(200, 26)
    alpha_a, beta_a, alpha_b, beta_b = 21, 181, 27, 175

    def integrand(x: float) -> float:
        return sps.beta.pdf(x, alpha_b, beta_b) * sps.beta.cdf(x, alpha_a, beta_a)

    p_b_best = integrate.quad(integrand, 0, 1)[0]
    weights = thompson_weights([a, b], n_samples=200_000, seed=3)
    assert weights[1] == pytest.approx(p_b_best, abs=0.005)


def test_new_arms_without_data_still_get_explored():
    arms = [ProportionStats(10_000, 500), ProportionStats(0, 0)]
    weights = thompson_weights(arms, seed=0)
    assert weights[1] >= 0.01
    mean_arms = [MeanStats(500, 5000.0, 100_000.0), MeanStats(0, 0.0, 0.0)]
    w = thompson_weights(mean_arms, seed=0)
    assert min(w) >= 0.01 - 1e-12 and sum(w) == pytest.approx(1.0)


def test_floor_is_exact_with_many_arms():
    arms = [ProportionStats(10_000, 2000)] + [ProportionStats(10_000, 100)] * 9
    weights = thompson_weights(arms, min_weight=0.05, seed=0)
    assert np.allclose(weights[1:], 0.05) and weights[0] == pytest.approx(0.55)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: thompson_weights([ProportionStats(1, 0)]), "at least two arms"),
        (lambda: probability_to_be_best([ProportionStats(1, 0)]), "at least two arms"),
        (
            lambda: thompson_weights([ProportionStats(1, 0)] * 3, min_weight=0.4),
            "min_weight must be between 0 and 1/3",
        ),
        (
            lambda: thompson_weights([ProportionStats(1, 0), MeanStats(1, 1.0, 1.0)]),
            "same kind",
        ),
        (
            lambda: probability_to_be_best([ProportionStats(1, 0)] * 2, n_samples=0),
            "n_samples",
        ),
    ],
)
def test_invalid_input_raises(call, message):
    with pytest.raises(StatsError, match=message):
        call()
