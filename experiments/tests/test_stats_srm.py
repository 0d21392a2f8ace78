"""Sample-ratio mismatch against scipy's chi-square goodness of fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments.stats import SRM_THRESHOLD, StatsError, has_srm, srm_p_value, srm_p_values


@pytest.mark.parametrize("seed", range(10))
def test_matches_scipy_chisquare(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    weights = rng.uniform(0.1, 3.0, k)
    observed = rng.multinomial(int(rng.integers(50, 1_000_000)), weights / weights.sum())
    expected = weights / weights.sum() * observed.sum()
    want = sps.chisquare(observed, expected).pvalue
    assert srm_p_value(observed.tolist(), weights.tolist()) == pytest.approx(want, rel=1e-9)


def test_even_split_by_hand():
    # 5000 vs 5600 on 50/50: X^2 = 2 * 300^2 / 5300
    x2 = 2 * 300**2 / 5300
    assert srm_p_value([5000, 5600], [0.5, 0.5]) == pytest.approx(sps.chi2.sf(x2, 1), rel=1e-12)
    assert has_srm([5000, 5600], [0.5, 0.5])
    assert not has_srm([5000, 5050], [1, 1])
    assert SRM_THRESHOLD == 0.001


def test_zero_weight_arms_are_skipped_but_count_in_degrees_of_freedom():
    # As gbstats' check_srm: the zero-weight arm adds nothing to X^2, dof stays k - 1.
    observed, weights = [1000, 1100, 7], [1.0, 1.0, 0.0]
    total = sum(observed)
    x2 = sum((o - total / 2) ** 2 / (total / 2) for o in observed[:2])
    assert srm_p_value(observed, weights) == pytest.approx(sps.chi2.sf(x2, 2), rel=1e-12)


def test_no_units_gives_one():
    assert srm_p_value([0, 0, 0], [1, 1, 1]) == 1.0


def test_vectorized_over_segments_equals_scalar():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 5000, size=(4, 5, 3))
    counts[0, 0] = 0
    got = srm_p_values(counts, [0.2, 0.3, 0.5])
    assert got.shape == (4, 5)
    for idx in np.ndindex(4, 5):
        assert got[idx] == pytest.approx(srm_p_value(counts[idx].tolist(), [0.2, 0.3, 0.5]))
    assert not np.isnan(got).any()


@pytest.mark.parametrize(
    ("observed", "weights", "message"),
    [
        ([10, 20], [1.0], "2 observed counts but 1 weights"),
        ([10], [1.0], "at least two variants"),
        ([10, -1], [1, 1], "non-negative whole numbers"),
        ([10, 2.5], [1, 1], "non-negative whole numbers"),
        ([10, math.nan], [1, 1], "finite"),
        ([10, 20], [1, math.nan], "weights must be finite"),
        ([10, 20], [1, -1], "weights must not be negative"),
        ([10, 20], [0, 0], "sum to a positive number"),
        ([[1, 2], [3, 4]], [1, 1], "flat sequence"),
        ([], [], "at least two variants"),
    ],
)
def test_invalid_input_raises(observed, weights, message):
    with pytest.raises(StatsError, match=message):
        srm_p_value(observed, weights)
