"""Frequentist tests: Welch's t-test and always-valid sequential confidence sequences.

Formulas follow gbstats 0.8.0 (``TwoSidedTTest`` and ``SequentialTwoSidedTTest``) operation by
operation, so the numbers agree to rounding:

* estimate: relative ``(mean_b - mean_a) / unadjusted_mean_a`` or absolute ``mean_b - mean_a``;
* variance of the estimate (delta method when relative)::

      relative: var_b / (mu_a^2 n_b) + var_a mu_b^2 / (mu_a^4 n_a)
      absolute: var_b / n_b + var_a / n_a

* Welch-Satterthwaite degrees of freedom, two-sided p-value ``2 (1 - T_dof(|est| / se))`` and
  interval ``est +/- T_dof^-1(1 - alpha/2) se``;
* sequential (Waudby-Smith et al. 2023, eq. 9 and 155) with tuning parameter ``n*``::

      rho = sqrt((-2 ln(alpha) + ln(-2 ln(alpha) + 1)) / n*),  N = n_a + n_b
      half-width = sqrt(N var) sqrt(2 (N rho^2 + 1) ln(sqrt(N rho^2 + 1) / alpha) / (N rho)^2)
      p = min(1, sqrt(N rho^2 + 1) exp(-rho^2 N est^2 / var / (2 (N rho^2 + 1))))
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from experiments.stats.arrays import PairMoments, StatsArrays, pair_moments, stats_arrays_for_arms
from experiments.stats.errors import BASELINE_ZERO, OK, ZERO_VARIANCE, StatsError
from experiments.stats.inputs import Stats, check_same_kind
from experiments.stats.results import ComparisonArrays, FloatArray, TestResult

DEFAULT_ALPHA = 0.05
DEFAULT_SEQUENTIAL_TUNING = 5000.0


def check_alpha(alpha: float, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating):
        raise StatsError(f"{name} must be a number, got {alpha!r}")
    if not (0 < float(alpha) < 1):
        raise StatsError(f"{name} must be strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def _check_tuning(tuning: float | None) -> float | None:
    if tuning is None:
        return None
    if isinstance(tuning, bool) or not isinstance(tuning, int | float | np.number):
        raise StatsError(f"sequential_tuning must be a number or None, got {tuning!r}")
    value = float(tuning)
    if not (math.isfinite(value) and value > 0):
        raise StatsError(f"sequential_tuning must be a positive number, got {tuning!r}")
    return value


def effect_and_variance(pm: PairMoments, relative: bool) -> tuple[FloatArray, FloatArray]:
    """gbstats' ``frequentist_diff`` and ``frequentist_variance`` (shared with Bayesian)."""
    a, b = pm.a, pm.b
    with np.errstate(all="ignore"):
        if relative:
            # frequentist_diff falls back to the adjusted mean when the unadjusted one is 0.
            denom = np.where(a.unadjusted_mean != 0, a.unadjusted_mean, a.mean)
            estimate = (b.mean - a.mean) / denom
            variance = b.variance / (np.power(a.unadjusted_mean, 2) * b.n) + a.variance * np.power(
                b.unadjusted_mean, 2
            ) / (np.power(a.unadjusted_mean, 4) * a.n)
        else:
            estimate = b.mean - a.mean
            variance = b.variance / b.n + a.variance / a.n
    return np.broadcast_to(estimate, pm.shape), np.broadcast_to(variance, pm.shape)


def frequentist_from_moments(
    pm: PairMoments,
    *,
    relative: bool = True,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float | None = None,
) -> ComparisonArrays:
    """Run the t-test (or the sequential test) on precomputed pair moments."""
    alpha = check_alpha(alpha)
    tuning = _check_tuning(sequential_tuning)
    a, b = pm.a, pm.b
    shape = pm.shape

    baseline_zero = (a.mean == 0) | (a.unadjusted_mean == 0)
    zero_variance = (a.variance <= 0) | (b.variance <= 0)
    error_code = np.broadcast_to(
        np.where(baseline_zero, BASELINE_ZERO, np.where(zero_variance, ZERO_VARIANCE, OK)), shape
    ).astype(np.int8)
    ok = error_code == OK

    estimate, variance = effect_and_variance(pm, relative)
    with np.errstate(all="ignore"):
        safe_var = np.where(ok, variance, 1.0)
        safe_est = np.where(ok, estimate, 0.0)
        se = np.sqrt(safe_var)
        if tuning is None:
            va = np.broadcast_to(a.variance, shape)
            vb = np.broadcast_to(b.variance, shape)
            na = np.broadcast_to(a.n, shape)
            nb = np.broadcast_to(b.n, shape)
            dof = np.power(vb / nb + va / na, 2) / (
                np.power(vb, 2) / (np.power(nb, 2) * (nb - 1))
                + np.power(va, 2) / (np.power(na, 2) * (na - 1))
            )
            dof = np.where(ok, dof, 1.0)
            critical = (safe_est - 0) / se
            p_value = 2 * (1 - sps.t.cdf(np.abs(critical), dof))
            width = sps.t.ppf(1 - alpha / 2, dof) * se
            method = "frequentist"
        else:
            total_n = np.broadcast_to(a.n + b.n, shape)
            rho = np.sqrt((-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / tuning)
            s2 = safe_var * total_n
            width = np.sqrt(s2) * np.sqrt(
                (2 * (total_n * np.power(rho, 2) + 1))
                * np.log(np.sqrt(total_n * np.power(rho, 2) + 1) / alpha)
                / np.power(total_n * rho, 2)
            )
            st2 = np.power(safe_est - 0, 2) * total_n / safe_var
            tr2p1 = total_n * np.power(rho, 2) + 1
            evalue = np.exp(np.power(rho, 2) * st2 / (2 * tr2p1)) / np.sqrt(tr2p1)
            p_value = np.minimum(1 / evalue, 1)
            method = "sequential"

    zero = np.zeros(shape)
    return ComparisonArrays(
        method=method,
        relative=relative,
        control_mean=np.broadcast_to(a.unadjusted_mean, shape).copy(),
        treatment_mean=np.broadcast_to(b.unadjusted_mean, shape).copy(),
        estimate=np.where(ok, safe_est, zero),
        ci_low=np.where(ok, safe_est - width, zero),
        ci_high=np.where(ok, safe_est + width, zero),
        std_error=np.where(ok, se, zero),
        error_code=error_code,
        p_value=np.where(ok, p_value, 1.0),
    )


def frequentist_arrays(
    stats: StatsArrays,
    *,
    relative: bool = True,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float | None = None,
) -> ComparisonArrays:
    """Vectorized :func:`frequentist_test`: every treatment against the control.

    ``stats`` holds arrays shaped (metrics, variants, segments); the result arrays are shaped
    (metrics, variants - 1, segments).
    """
    return frequentist_from_moments(
        pair_moments(stats),
        relative=relative,
        alpha=alpha,
        sequential_tuning=sequential_tuning,
    )


def frequentist_test(
    control: Stats,
    treatment: Stats,
    *,
    relative: bool = True,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float | None = None,
) -> TestResult:
    """Welch's two-sided t-test of treatment against control (gbstats ``TwoSidedTTest``).

    With ``sequential_tuning`` (e.g. :data:`DEFAULT_SEQUENTIAL_TUNING`, 5,000) the result is an
    always-valid confidence sequence and p-value (gbstats ``SequentialTwoSidedTTest``), safe to
    look at every day.
    """
    check_same_kind([control, treatment])
    return frequentist_arrays(
        stats_arrays_for_arms([control, treatment]),
        relative=relative,
        alpha=alpha,
        sequential_tuning=sequential_tuning,
    ).result()
