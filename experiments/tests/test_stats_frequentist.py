"""Frequentist tests against scipy, statsmodels and hand calculations from raw data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from experiments.stats import (
    DEFAULT_SEQUENTIAL_TUNING,
    CupedStats,
    MeanStats,
    ProportionStats,
    RatioStats,
    frequentist_test,
)

REL = 1e-9


def mean_stats(x: np.ndarray) -> MeanStats:
    return MeanStats(len(x), float(x.sum()), float((x * x).sum()))


def welch_dof(va: float, na: int, vb: float, nb: int) -> float:
    return (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_absolute_mean_test_equals_welch_in_scipy_and_statsmodels(seed, alpha):
    rng = np.random.default_rng(seed)
    a = rng.lognormal(1.0, 0.8, size=rng.integers(5, 400))
    b = rng.lognormal(1.1, 0.9, size=rng.integers(5, 400))
    res = frequentist_test(mean_stats(a), mean_stats(b), relative=False, alpha=alpha)

    assert res.estimate == pytest.approx(b.mean() - a.mean(), rel=REL)
    assert res.p_value == pytest.approx(sps.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-7)
    low, high = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(
        alpha=alpha, usevar="unequal"
    )
    assert (res.ci_low, res.ci_high) == pytest.approx((low, high), rel=REL)
    assert res.control_mean == pytest.approx(a.mean(), rel=REL)
    assert res.std_error == pytest.approx(
        math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)), rel=REL
    )


def test_proportion_uses_p_times_one_minus_p_by_hand():
    control, treatment = ProportionStats(2000, 210), ProportionStats(1900, 250)
    pa, pb = 210 / 2000, 250 / 1900
    va, vb = pa * (1 - pa), pb * (1 - pb)
    se = math.sqrt(va / 2000 + vb / 1900)
    dof = welch_dof(va, 2000, vb, 1900)

    res = frequentist_test(control, treatment, relative=False)
    assert res.estimate == pytest.approx(pb - pa, rel=REL)
    assert res.std_error == pytest.approx(se, rel=REL)
    assert res.p_value == pytest.approx(2 * sps.t.sf(abs(pb - pa) / se, dof), rel=1e-7)
    width = sps.t.ppf(0.975, dof) * se
    assert (res.ci_low, res.ci_high) == pytest.approx((pb - pa - width, pb - pa + width), rel=REL)


def test_relative_lift_uses_the_delta_method_by_hand():
    control, treatment = ProportionStats(5000, 400), ProportionStats(5000, 460)
    pa, pb = 0.08, 0.092
    va, vb = pa * (1 - pa), pb * (1 - pb)
    lift = (pb - pa) / pa
    var = vb / (pa**2 * 5000) + va * pb**2 / (pa**4 * 5000)
    dof = welch_dof(va, 5000, vb, 5000)

    res = frequentist_test(control, treatment)
    assert res.relative is True and res.method == "frequentist"
    assert res.estimate == pytest.approx(lift, rel=REL)
    assert res.std_error == pytest.approx(math.sqrt(var), rel=REL)
    assert res.p_value == pytest.approx(2 * sps.t.sf(lift / math.sqrt(var), dof), rel=1e-7)
    half = sps.t.ppf(0.975, dof) * math.sqrt(var)
    assert res.ci_low == pytest.approx(lift - half, rel=REL)
    assert res.ci_high == pytest.approx(lift + half, rel=REL)


def test_ratio_metric_uses_delta_method_with_covariance_from_raw_data():
    rng = np.random.default_rng(7)

    def arm(n: int, lift: float) -> tuple[RatioStats, np.ndarray, np.ndarray]:
        orders = rng.poisson(2.0, n) + 1.0
        revenue = orders * rng.gamma(4.0, 10.0 * (1 + lift), n)
        stats = RatioStats(
            n,
            revenue.sum(),
            (revenue**2).sum(),
            orders.sum(),
            (orders**2).sum(),
            (revenue * orders).sum(),
        )
        return stats, revenue, orders

    (sa, ra, oa), (sb, rb, ob) = arm(3000, 0.0), arm(2800, 0.05)

    def ratio_var(r: np.ndarray, o: np.ndarray) -> tuple[float, float]:
        ratio = r.mean() / o.mean()
        cov = np.cov(r, o, ddof=1)
        var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / o.mean() ** 2
        return ratio, var

    mean_a, var_a = ratio_var(ra, oa)
    mean_b, var_b = ratio_var(rb, ob)
    res = frequentist_test(sa, sb, relative=False)
    assert res.control_mean == pytest.approx(mean_a, rel=REL)
    assert res.estimate == pytest.approx(mean_b - mean_a, rel=REL)
    assert res.std_error == pytest.approx(math.sqrt(var_a / 3000 + var_b / 2800), rel=1e-7)


def test_cuped_equals_welch_on_covariate_adjusted_values():
    rng = np.random.default_rng(11)
    pre_a, pre_b = rng.gamma(2, 10, 800), rng.gamma(2, 10, 900)
    post_a = 0.8 * pre_a + rng.normal(5, 6, 800)
    post_b = 0.8 * pre_b + rng.normal(6, 6, 900)
    pre, post = np.concatenate([pre_a, pre_b]), np.concatenate([post_a, post_b])
    theta = np.cov(post, pre, ddof=1)[0, 1] / pre.var(ddof=1)

    def cuped(y: np.ndarray, x: np.ndarray) -> CupedStats:
        return CupedStats(len(y), y.sum(), (y**2).sum(), x.sum(), (x**2).sum(), (x * y).sum())

    res = frequentist_test(cuped(post_a, pre_a), cuped(post_b, pre_b), relative=False)
    adj_a, adj_b = post_a - theta * pre_a, post_b - theta * pre_b
    assert res.estimate == pytest.approx(adj_b.mean() - adj_a.mean(), rel=1e-8)
    assert res.p_value == pytest.approx(
        sps.ttest_ind(adj_b, adj_a, equal_var=False).pvalue, rel=1e-6
    )
    # Variance reduction: CUPED's interval is narrower than the plain t-test's.
    plain = frequentist_test(mean_stats(post_a), mean_stats(post_b), relative=False)
    assert res.ci_high - res.ci_low < 0.6 * (plain.ci_high - plain.ci_low)
    # The reported means are the unadjusted ones.
    assert res.control_mean == pytest.approx(post_a.mean(), rel=REL)

    rel = frequentist_test(cuped(post_a, pre_a), cuped(post_b, pre_b))
    assert rel.estimate == pytest.approx((adj_b.mean() - adj_a.mean()) / post_a.mean(), rel=1e-8)


def sequential_by_hand(est: float, var: float, n_total: int, alpha: float, tuning: float):
    """Waudby-Smith et al. (2023) eq. 9 (interval) and eq. 155 (p-value)."""
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning
    a = n_total * rho2 + 1
    half = math.sqrt(var * n_total) * math.sqrt(
        2 * a * math.log(math.sqrt(a) / alpha) / (n_total**2 * rho2)
    )
    evalue = math.exp(rho2 * est**2 * n_total / var / (2 * a)) / math.sqrt(a)
    return est - half, est + half, min(1.0, 1 / evalue)


@pytest.mark.parametrize("tuning", [DEFAULT_SEQUENTIAL_TUNING, 500.0, 50_000.0])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_sequential_confidence_sequence_by_hand(tuning, alpha):
    control, treatment = ProportionStats(20_000, 1000), ProportionStats(21_000, 1150)
    fixed = frequentist_test(control, treatment, alpha=alpha)
    seq = frequentist_test(control, treatment, alpha=alpha, sequential_tuning=tuning)
    low, high, p = sequential_by_hand(fixed.estimate, fixed.std_error**2, 41_000, alpha, tuning)
    assert seq.method == "sequential"
    assert seq.estimate == fixed.estimate
    assert (seq.ci_low, seq.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert seq.p_value == pytest.approx(p, rel=1e-9)
    # Always-valid inference is more conservative than a single look.
    assert seq.ci_low < fixed.ci_low and seq.ci_high > fixed.ci_high
    assert seq.p_value >= fixed.p_value


@pytest.mark.parametrize(
    ("control", "treatment", "code"),
    [
        (ProportionStats(1000, 0), ProportionStats(1000, 10), "ZERO_NEGATIVE_BASELINE_VARIATION"),
        (ProportionStats(1000, 10), ProportionStats(1000, 0), "ZERO_NEGATIVE_VARIANCE"),
        (ProportionStats(1000, 1000), ProportionStats(1000, 990), "ZERO_NEGATIVE_VARIANCE"),
        (ProportionStats(0, 0), ProportionStats(1000, 10), "ZERO_NEGATIVE_BASELINE_VARIATION"),
        (ProportionStats(1000, 10), ProportionStats(0, 0), "ZERO_NEGATIVE_VARIANCE"),
        (MeanStats(10, 50.0, 250.0), MeanStats(10, 60.0, 400.0), "ZERO_NEGATIVE_VARIANCE"),
        (MeanStats(1, 5.0, 25.0), MeanStats(10, 60.0, 400.0), "ZERO_NEGATIVE_VARIANCE"),
        (MeanStats(10, 0.0, 40.0), MeanStats(10, 6.0, 40.0), "ZERO_NEGATIVE_BASELINE_VARIATION"),
        (
            RatioStats(10, 5.0, 9.0, 0.0, 0.0, 0.0),
            RatioStats(10, 5.0, 9.0, 4.0, 6.0, 3.0),
            "ZERO_NEGATIVE_BASELINE_VARIATION",
        ),
    ],
)
@pytest.mark.parametrize("tuning", [None, 5000])
def test_degenerate_input_returns_an_error_and_zeros_never_nan(control, treatment, code, tuning):
    res = frequentist_test(control, treatment, sequential_tuning=tuning)
    assert res.error_code == code
    assert res.error and not res.ok
    assert (res.estimate, res.ci_low, res.ci_high, res.std_error) == (0.0, 0.0, 0.0, 0.0)
    assert res.p_value == 1.0
    assert all(math.isfinite(v) for v in (res.control_mean, res.treatment_mean, res.p_value))


def test_zero_baseline_error_message_is_plain_language():
    res = frequentist_test(ProportionStats(100, 0), ProportionStats(100, 3))
    assert "zero baseline mean" in res.error
    res = frequentist_test(MeanStats(10, 50.0, 250.0), MeanStats(10, 60.0, 400.0))
    assert "zero variance" in res.error


def test_huge_effects_give_tiny_but_finite_p_values():
    res = frequentist_test(
        ProportionStats(10_000_000, 100_000), ProportionStats(10_000_000, 130_000)
    )
    assert 0 <= res.p_value < 1e-12
    seq = frequentist_test(
        ProportionStats(10_000_000, 100_000),
        ProportionStats(10_000_000, 130_000),
        sequential_tuning=5000,
    )
    assert seq.p_value == 0.0 and math.isfinite(seq.ci_low)


def test_identical_arms_give_p_value_one_and_symmetric_interval():
    arm = MeanStats(500, 1000.0, 5000.0)
    res = frequentist_test(arm, arm)
    assert res.estimate == 0.0 and res.p_value == pytest.approx(1.0)
    assert res.ci_low == pytest.approx(-res.ci_high)
