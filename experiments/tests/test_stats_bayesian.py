"""Bayesian test against hand calculations and numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from experiments.stats import MeanStats, ProportionStats, bayesian_test, frequentist_test
from experiments.stats.bayesian import normal_risks

REL = 1e-9


@pytest.mark.parametrize("ci_level", [0.95, 0.9, 0.99])
@pytest.mark.parametrize("relative", [True, False])
def test_posterior_is_normal_on_the_delta_method_effect(ci_level, relative):
    control, treatment = ProportionStats(4000, 300), ProportionStats(4100, 345)
    res = bayesian_test(control, treatment, relative=relative, ci_level=ci_level)
    freq = frequentist_test(control, treatment, relative=relative)
    mu, sigma = freq.estimate, freq.std_error  # same effect and standard error
    assert res.method == "bayesian" and res.p_value is None
    assert res.estimate == pytest.approx(mu, rel=REL)
    assert res.std_error == pytest.approx(sigma, rel=REL)
    assert res.chance_to_win == pytest.approx(sps.norm.cdf(mu / sigma), rel=REL)
    tail = (1 - ci_level) / 2
    assert res.ci_low == pytest.approx(mu + sigma * sps.norm.ppf(tail), rel=REL)
    assert res.ci_high == pytest.approx(mu + sigma * sps.norm.ppf(1 - tail), rel=REL)


@pytest.mark.parametrize(("mu", "sigma"), [(0.05, 0.02), (-0.3, 0.1), (0.0, 1.0), (2.0, 0.4)])
def test_risks_are_expected_losses_by_numerical_integration(mu, sigma):
    def pdf(x: float) -> float:
        return sps.norm.pdf(x, mu, sigma)

    lo, hi = mu - 40 * sigma, mu + 40 * sigma
    loss_keep_control = integrate.quad(lambda x: max(x, 0.0) * pdf(x), lo, hi, points=[0])[0]
    loss_ship_treatment = integrate.quad(lambda x: max(-x, 0.0) * pdf(x), lo, hi, points=[0])[0]
    risk_control, risk_treatment = normal_risks(np.array(mu), np.array(sigma))
    assert float(risk_control) == pytest.approx(loss_keep_control, rel=1e-7, abs=1e-14)
    assert float(risk_treatment) == pytest.approx(loss_ship_treatment, rel=1e-7, abs=1e-14)
    # E[max(X, 0)] - E[max(-X, 0)] = E[X]
    assert float(risk_control - risk_treatment) == pytest.approx(mu, abs=1e-12)


def test_risks_stay_finite_in_the_far_tails():
    mu = np.array([-60.0, -9.0, 0.0, 9.0, 60.0])
    risk_control, risk_treatment = normal_risks(mu, np.ones(5))
    assert np.isfinite(risk_control).all() and np.isfinite(risk_treatment).all()
    assert risk_control[-1] == pytest.approx(60.0) and risk_treatment[0] == pytest.approx(60.0)


def test_a_clear_winner_has_high_chance_to_win_and_low_treatment_risk():
    res = bayesian_test(ProportionStats(10_000, 500), ProportionStats(10_000, 620))
    assert res.chance_to_win > 0.99
    assert res.risk_treatment < 1e-3 < res.risk_control


@pytest.mark.parametrize(
    ("control", "treatment", "relative", "code"),
    [
        (
            ProportionStats(100, 0),
            ProportionStats(100, 5),
            True,
            "ZERO_NEGATIVE_BASELINE_VARIATION",
        ),
        (ProportionStats(0, 0), ProportionStats(100, 5), False, "NO_UNITS_IN_VARIATION"),
        (ProportionStats(100, 5), ProportionStats(0, 0), True, "NO_UNITS_IN_VARIATION"),
        (ProportionStats(100, 0), ProportionStats(100, 5), False, "ZERO_NEGATIVE_VARIANCE"),
        (MeanStats(10, 20.0, 40.0), MeanStats(10, 25.0, 70.0), True, "ZERO_NEGATIVE_VARIANCE"),
    ],
)
def test_degenerate_input_gives_neutral_output(control, treatment, relative, code):
    res = bayesian_test(control, treatment, relative=relative)
    assert res.error_code == code and res.error
    assert (res.estimate, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)
    assert res.chance_to_win == 0.5
    assert (res.risk_control, res.risk_treatment) == (0.0, 0.0)


def test_absolute_effect_with_zero_control_mean_is_computed():
    # gbstats 0.8.0 divides by zero here (prior rescaling); we return the flat-prior answer.
    control, treatment = MeanStats(100, 0.0, 400.0), MeanStats(100, 20.0, 420.0)
    res = bayesian_test(control, treatment, relative=False)
    assert res.ok
    assert res.estimate == pytest.approx(0.2)
    var_a, var_b = 400.0 / 99, (420.0 - 20.0**2 / 100) / 99
    assert res.std_error == pytest.approx(math.sqrt(var_a / 100 + var_b / 100), rel=REL)
    # gbstats' frequentist test flags a zero control mean even for absolute effects; so do we.
    freq = frequentist_test(control, treatment, relative=False)
    assert freq.error_code == "ZERO_NEGATIVE_BASELINE_VARIATION"
    assert math.isfinite(res.chance_to_win)
