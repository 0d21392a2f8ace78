"""Bayesian test: gbstats' ``EffectBayesianABTest`` with its default flat (improper) prior.

The posterior on the effect (relative lift or absolute difference) is normal, centred on the
observed effect with the delta-method variance of :mod:`experiments.stats.frequentist`::

    effect ~ Normal(mu, sigma^2),  mu = estimate,  sigma = sqrt(1 / (1 / variance))
    chance to win   = P(effect > 0)
    credible bounds = Normal quantiles at (1 - level) / 2 and (1 + level) / 2
    risk_control    = E[max(effect, 0)]   expected loss of keeping the control
    risk_treatment  = E[max(-effect, 0)]  expected loss of shipping the treatment

The risks are computed as gbstats does, P(side) times the truncated-normal mean of that side,
in closed form (``scipy.stats.truncnorm`` is far too slow when vectorized).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from experiments.stats.arrays import PairMoments, StatsArrays, pair_moments, stats_arrays_for_arms
from experiments.stats.errors import BASELINE_ZERO, NO_UNITS, OK, ZERO_VARIANCE, StatsError
from experiments.stats.frequentist import effect_and_variance
from experiments.stats.inputs import Stats, check_same_kind
from experiments.stats.results import ComparisonArrays, FloatArray, TestResult

DEFAULT_CI_LEVEL = 0.95


def check_ci_level(ci_level: float) -> float:
    if isinstance(ci_level, bool) or not isinstance(ci_level, int | float | np.floating):
        raise StatsError(f"ci_level must be a number, got {ci_level!r}")
    if not (0 < float(ci_level) < 1):
        raise StatsError(f"ci_level must be strictly between 0 and 1, got {ci_level!r}")
    return float(ci_level)


def normal_risks(mu: FloatArray, sigma: FloatArray) -> tuple[FloatArray, FloatArray]:
    """gbstats' ``get_risk``: (risk of keeping control, risk of shipping treatment)."""
    with np.errstate(all="ignore"):
        z = mu / sigma
        prob_ctrl_better = sps.norm.cdf(0.0, loc=mu, scale=sigma)
        # Truncated-normal means E[X | X < 0] and E[X | X > 0], via log-space Mills ratios.
        mean_neg = mu - sigma * np.exp(sps.norm.logpdf(z) - sps.norm.logsf(z))
        mean_pos = mu + sigma * np.exp(sps.norm.logpdf(z) - sps.norm.logcdf(z))
        risk_control = (1.0 - prob_ctrl_better) * mean_pos
        risk_treatment = -(prob_ctrl_better * mean_neg)
    return risk_control, risk_treatment


def bayesian_from_moments(
    pm: PairMoments, *, relative: bool = True, ci_level: float = DEFAULT_CI_LEVEL
) -> ComparisonArrays:
    """Run the Bayesian test on precomputed pair moments."""
    ci_level = check_ci_level(ci_level)
    # gbstats is configured with alpha; round so that ci_level=0.95 gives exactly alpha=0.05.
    alpha = round(1.0 - ci_level, 12)
    a, b = pm.a, pm.b
    shape = pm.shape

    baseline_zero = ((a.mean == 0) | (a.unadjusted_mean == 0)) & relative
    no_units = (a.n == 0) | (b.n == 0)
    zero_variance = (a.variance <= 0) | (b.variance <= 0)
    code = np.where(
        baseline_zero,
        BASELINE_ZERO,
        np.where(no_units, NO_UNITS, np.where(zero_variance, ZERO_VARIANCE, OK)),
    )
    error_code = np.broadcast_to(code, shape).astype(np.int8)
    ok = error_code == OK

    estimate, variance = effect_and_variance(pm, relative)
    with np.errstate(all="ignore"):
        mu = np.where(ok, estimate, 0.0)
        # Flat prior: posterior precision = 1 / variance (+ 0 from the improper prior).
        sigma = np.sqrt(1 / (1 / np.where(ok, variance, 1.0)))
        chance = sps.norm.sf(0, mu, sigma)
        low = sps.norm.ppf(alpha / 2, mu, sigma)
        high = sps.norm.ppf(1 - alpha / 2, mu, sigma)
    risk_control, risk_treatment = normal_risks(mu, sigma)

    zero = np.zeros(shape)
    return ComparisonArrays(
        method="bayesian",
        relative=relative,
        control_mean=np.broadcast_to(a.unadjusted_mean, shape).copy(),
        treatment_mean=np.broadcast_to(b.unadjusted_mean, shape).copy(),
        estimate=np.where(ok, mu, zero),
        ci_low=np.where(ok, low, zero),
        ci_high=np.where(ok, high, zero),
        std_error=np.where(ok, sigma, zero),
        error_code=error_code,
        chance_to_win=np.where(ok, chance, 0.5),
        risk_control=np.where(ok, risk_control, zero),
        risk_treatment=np.where(ok, risk_treatment, zero),
    )


def bayesian_arrays(
    stats: StatsArrays, *, relative: bool = True, ci_level: float = DEFAULT_CI_LEVEL
) -> ComparisonArrays:
    """Vectorized :func:`bayesian_test`: every treatment against the control."""
    return bayesian_from_moments(pair_moments(stats), relative=relative, ci_level=ci_level)


def bayesian_test(
    control: Stats,
    treatment: Stats,
    *,
    relative: bool = True,
    ci_level: float = DEFAULT_CI_LEVEL,
) -> TestResult:
    """Bayesian comparison of treatment against control (gbstats ``EffectBayesianABTest``)."""
    check_same_kind([control, treatment])
    return bayesian_arrays(
        stats_arrays_for_arms([control, treatment]), relative=relative, ci_level=ci_level
    ).result()
