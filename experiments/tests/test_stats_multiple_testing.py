"""Adjusted p-values identical to statsmodels' multipletests (holm, fdr_bh)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from experiments.stats import StatsError, adjust_p_values

STATSMODELS = {"holm": "holm", "bh": "fdr_bh"}


@pytest.mark.parametrize("method", ["holm", "bh"])
@pytest.mark.parametrize("seed", range(25))
def test_matches_statsmodels(method, seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 60))
    p = rng.choice([rng.uniform(0, 1, size), rng.beta(0.3, 4, size), rng.uniform(0, 0.05, size)])
    if seed % 3 == 0:  # ties and exact 0 / 1
        p = np.round(p, 2)
        p[: size // 4] = p[0]
        p[-1:] = 1.0
    want = multipletests(p, method=STATSMODELS[method])[1]
    got = adjust_p_values(p.tolist(), method)
    assert isinstance(got, list) and len(got) == size
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_small_example_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> cummax
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 -> 0.02, 0.02, 0.04, 0.04 -> cummin from the top
    assert adjust_p_values(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_aliases_and_empty_input():
    assert adjust_p_values([], "holm") == []
    assert adjust_p_values([0.2, 0.01], "fdr_bh") == adjust_p_values([0.2, 0.01], "bh")


@pytest.mark.parametrize(
    ("p", "method", "message"),
    [
        ([0.1], "bonferroni", "method must be 'holm' or 'bh'"),
        ([0.1, math.nan], "holm", "finite"),
        ([0.1, 1.2], "bh", "between 0 and 1"),
        ([-0.1], "bh", "between 0 and 1"),
        ([[0.1, 0.2]], "bh", "flat sequence"),
        (["a"], "bh", "numbers"),
    ],
)
def test_invalid_input_raises(p, method, message):
    with pytest.raises(StatsError, match=message):
        adjust_p_values(p, method)
