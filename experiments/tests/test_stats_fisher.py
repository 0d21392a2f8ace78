"""Fisher's exact test against scipy, and the expected-count rule that selects it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from scipy.stats.contingency import expected_freq

from experiments.stats import (
    FISHER_MIN_EXPECTED,
    MeanStats,
    ProportionStats,
    StatsError,
    expected_cell_counts,
    fisher_exact_test,
    needs_fisher_exact,
)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize(
    ("control", "treatment"),
    [((40, 3), (38, 9)), ((12, 0), (15, 4)), ((200, 20), (210, 35)), ((7, 7), (9, 2))],
)
def test_matches_scipy_fisher_exact(control, treatment, alternative):
    c, t = ProportionStats(*control), ProportionStats(*treatment)
    res = fisher_exact_test(c, t, alternative=alternative)
    table = [[t.conversions, t.n - t.conversions], [c.conversions, c.n - c.conversions]]
    want = sps.fisher_exact(table, alternative=alternative)
    assert res.p_value == pytest.approx(want.pvalue, rel=1e-12)
    if np.isfinite(want.statistic):
        assert res.odds_ratio == pytest.approx(want.statistic, rel=1e-12)
    else:
        assert res.odds_ratio is None and res.error
    assert res.control_rate == c.mean and res.treatment_rate == t.mean


def test_two_sided_p_value_does_not_depend_on_row_order():
    c, t = ProportionStats(40, 3), ProportionStats(38, 9)
    table = [[3, 37], [9, 29]]
    assert fisher_exact_test(c, t).p_value == pytest.approx(sps.fisher_exact(table).pvalue)


def test_expected_counts_match_scipy_and_drive_the_fallback():
    c, t = ProportionStats(40, 3), ProportionStats(38, 9)
    want = expected_freq([[3, 37], [9, 29]])
    np.testing.assert_allclose(expected_cell_counts(c, t), want)
    assert fisher_exact_test(c, t).min_expected_count == pytest.approx(want.min())
    assert FISHER_MIN_EXPECTED == 5.0
    # 12 conversions in 78 units: expected conversions 6.15 and 5.85, all cells >= 5.
    assert not needs_fisher_exact(c, t)
    # 6 conversions in 78 units: expected 3.08 and 2.92 -> below 5 -> Fisher.
    assert needs_fisher_exact(ProportionStats(40, 2), ProportionStats(38, 4))
    assert not needs_fisher_exact(ProportionStats(1000, 100), ProportionStats(1000, 120))
    assert needs_fisher_exact(ProportionStats(0, 0), ProportionStats(0, 0))
    assert needs_fisher_exact(ProportionStats(40, 2), ProportionStats(38, 4), min_expected=3.0)
    assert not needs_fisher_exact(ProportionStats(40, 2), ProportionStats(38, 4), min_expected=2.9)


def test_empty_arm_gives_p_value_one_and_no_odds_ratio():
    res = fisher_exact_test(ProportionStats(0, 0), ProportionStats(10, 2))
    assert res.p_value == 1.0 and res.odds_ratio is None and res.error


def test_only_proportions_are_accepted():
    with pytest.raises(StatsError, match="ProportionStats"):
        fisher_exact_test(MeanStats(10, 1.0, 1.0), ProportionStats(10, 1))  # type: ignore[arg-type]
    with pytest.raises(StatsError, match="alternative"):
        fisher_exact_test(ProportionStats(10, 1), ProportionStats(10, 1), alternative="up")  # type: ignore[arg-type]
