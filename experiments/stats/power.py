"""Sample size and minimum detectable effect for planning a two-sided test.

Two proportions (the classic formula), with p1 = baseline, p2 = baseline (1 + relative MDE),
pbar = (p1 + p2) / 2::

    n = ceil( (z(1 - alpha/2) sqrt(2 pbar (1 - pbar)) + z(power) sqrt(p1 (1 - p1) + p2 (1 - p2)))^2
              / (p2 - p1)^2 )

Means (normal approximation, equal variance sigma^2 in both arms, delta = mean x relative MDE)::

    n = ceil( 2 (z(1 - alpha/2) + z(power))^2 sigma^2 / delta^2 )
"""

from __future__ import annotations

import math

from scipy import optimize
from scipy import stats as sps

from experiments.stats.errors import StatsError
from experiments.stats.frequentist import check_alpha
from experiments.stats.inputs import check_count, check_real


def _check_rate(rate: float) -> float:
    value = check_real(rate, "baseline_rate")
    if not (0 < value < 1):
        raise StatsError(f"baseline_rate must be strictly between 0 and 1, got {rate!r}")
    return value


def _raw_sample_size(p1: float, relative_mde: float, alpha: float, power: float) -> float:
    p2 = p1 * (1 + relative_mde)
    pbar = (p1 + p2) / 2
    z_alpha = sps.norm.ppf(1 - alpha / 2)
    z_power = sps.norm.ppf(power)
    numerator = (
        z_alpha * math.sqrt(2 * pbar * (1 - pbar))
        + z_power * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    ) ** 2
    return float(numerator / (p2 - p1) ** 2)


def sample_size_per_arm(
    *, baseline_rate: float, relative_mde: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Units needed in each arm to detect ``relative_mde`` (e.g. 0.1 for +10%) on a conversion
    rate of ``baseline_rate`` with a two-sided test at ``alpha`` and the given ``power``."""
    p1 = _check_rate(baseline_rate)
    mde = check_real(relative_mde, "relative_mde")
    alpha = check_alpha(alpha)
    power = check_alpha(power, "power")
    if mde == 0:
        raise StatsError("relative_mde must not be 0")
    p2 = p1 * (1 + mde)
    if not (0 < p2 < 1):
        raise StatsError(
            f"baseline_rate x (1 + relative_mde) = {p2!r} must be strictly between 0 and 1"
        )
    return math.ceil(_raw_sample_size(p1, mde, alpha, power))


def minimum_detectable_effect(
    *, baseline_rate: float, n_per_arm: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest relative lift (positive) detectable with ``n_per_arm`` units per arm.

    The inverse of :func:`sample_size_per_arm` (solved numerically on the continuous formula).
    """
    p1 = _check_rate(baseline_rate)
    n = check_count(n_per_arm, "n_per_arm")
    alpha = check_alpha(alpha)
    power = check_alpha(power, "power")
    if n < 1:
        raise StatsError("n_per_arm must be at least 1")
    upper = (1 - p1) / p1 * (1 - 1e-9)  # largest lift keeping p2 below 1

    def gap(mde: float) -> float:
        return _raw_sample_size(p1, mde, alpha, power) - n

    if gap(upper) > 0:
        raise StatsError(
            f"{n} units per arm cannot detect any lift on a baseline of {p1!r} "
            f"at alpha={alpha} and power={power}"
        )
    lower = 1e-12
    if gap(lower) <= 0:
        return lower
    return float(optimize.brentq(gap, lower, upper, xtol=1e-14, rtol=1e-12, maxiter=500))


def sample_size_per_arm_mean(
    *,
    baseline_mean: float,
    baseline_std: float,
    relative_mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Units per arm for a mean metric (revenue per user, ...) with standard deviation
    ``baseline_std``, to detect a relative change ``relative_mde`` of ``baseline_mean``."""
    mean = check_real(baseline_mean, "baseline_mean")
    std = check_real(baseline_std, "baseline_std", non_negative=True)
    mde = check_real(relative_mde, "relative_mde")
    alpha = check_alpha(alpha)
    power = check_alpha(power, "power")
    delta = mean * mde
    if delta == 0:
        raise StatsError("baseline_mean x relative_mde must not be 0")
    if std == 0:
        raise StatsError("baseline_std must be positive")
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return math.ceil(2 * z**2 * std**2 / delta**2)
