"""Several variants at once: probability to be best, and Thompson-sampling bandit weights.

Both draw from each arm's posterior with a seeded generator, so the same data and seed always
give the same numbers.

* Probability to be best: each arm's mean ~ Normal(mean, variance / n) (CUPED: adjusted mean,
  theta pooled over all arms); the share of draws in which an arm is the best.
* Thompson sampling: conversion arms ~ Beta(1 + conversions, 1 + n - conversions), other arms as
  above; an arm's traffic weight is the share of draws it wins, floored at ``min_weight`` (1%).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from experiments.stats.arrays import arm_moments, stats_arrays_for_arms
from experiments.stats.errors import StatsError
from experiments.stats.inputs import MetricKind, Stats, check_count, check_same_kind

DEFAULT_MIN_WEIGHT = 0.01
_CHUNK = 20_000


def _check_samples(n_samples: int) -> int:
    n = check_count(n_samples, "n_samples")
    if n < 1:
        raise StatsError("n_samples must be at least 1")
    return n


def _normal_posteriors(arms: Sequence[Stats]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-arm posterior mean and standard deviation of the metric's mean (flat prior)."""
    moments = arm_moments(stats_arrays_for_arms(arms))
    n = moments.n[0, :, 0]
    mean = np.broadcast_to(moments.mean, moments.n.shape)[0, :, 0]
    variance = np.broadcast_to(moments.variance, moments.n.shape)[0, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.where(n > 0, np.sqrt(np.maximum(variance, 0.0) / n), 0.0)
    return mean.astype(np.float64), sd


def _win_counts(draw, k: int, n_samples: int, higher_is_better: bool) -> NDArray[np.int64]:
    wins = np.zeros(k, dtype=np.int64)
    done = 0
    while done < n_samples:
        size = min(_CHUNK, n_samples - done)
        samples = draw(size)  # shape (size, k)
        if not higher_is_better:
            samples = -samples
        wins += np.bincount(np.argmax(samples, axis=1), minlength=k)
        done += size
    return wins


def probability_to_be_best(
    arms: Sequence[Stats],
    *,
    higher_is_better: bool = True,
    n_samples: int = 100_000,
    seed: int = 0,
) -> list[float]:
    """Chance that each arm (control first) has the best true mean, by seeded Monte Carlo.

    Arms without units cannot be best (probability 0) unless every arm is empty.
    """
    arms = list(arms)
    check_same_kind(arms)
    n_samples = _check_samples(n_samples)
    k = len(arms)
    if k < 2:
        raise StatsError("probability to be best needs at least two arms")
    mean, sd = _normal_posteriors(arms)
    has_units = np.array([arm.n > 0 for arm in arms])
    if not has_units.any():
        return [1.0 / k] * k
    rng = np.random.default_rng(seed)
    floor = np.where(has_units, 0.0, -np.inf if higher_is_better else np.inf)

    def draw(size: int) -> NDArray[np.float64]:
        return rng.normal(mean, sd, size=(size, k)) + floor

    wins = _win_counts(draw, k, n_samples, higher_is_better)
    return [float(w) / n_samples for w in wins]


def _floor_weights(raw: NDArray[np.float64], min_weight: float) -> NDArray[np.float64]:
    """Scale ``raw`` to sum to 1 with every entry at least ``min_weight`` (water-filling)."""
    k = len(raw)
    fixed = np.zeros(k, dtype=bool)
    weights = raw.copy()
    for _ in range(k + 1):
        free_mass = 1.0 - min_weight * fixed.sum()
        free_total = raw[~fixed].sum()
        if free_total > 0:
            weights = np.where(fixed, min_weight, raw / free_total * free_mass)
        else:
            weights = np.where(fixed, min_weight, free_mass / max((~fixed).sum(), 1))
        newly = (~fixed) & (weights < min_weight)
        if not newly.any():
            break
        fixed |= newly
    return weights


def thompson_weights(
    arms: Sequence[Stats],
    *,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    higher_is_better: bool = True,
    n_samples: int = 10_000,
    seed: int = 0,
) -> list[float]:
    """Thompson-sampling traffic weights for a bandit (control first), summing to 1.

    Each arm gets the share of posterior draws in which it is best, and at least ``min_weight``
    (default 1%) so that no arm is starved. Conversion arms use Beta(1 + c, 1 + n - c) posteriors;
    other metrics a normal posterior on the mean (an arm with fewer than 2 units borrows the
    pooled variance of the others, so new arms still get explored).
    """
    arms = list(arms)
    kind = check_same_kind(arms)
    n_samples = _check_samples(n_samples)
    k = len(arms)
    if k < 2:
        raise StatsError("a bandit needs at least two arms")
    if not (min_weight >= 0 and min_weight * k <= 1):
        raise StatsError(f"min_weight must be between 0 and 1/{k} for {k} arms, got {min_weight!r}")
    rng = np.random.default_rng(seed)

    if kind is MetricKind.PROPORTION:
        conv = np.array([arm.conversions for arm in arms], dtype=np.float64)  # type: ignore[union-attr]
        n = np.array([arm.n for arm in arms], dtype=np.float64)

        def draw(size: int) -> NDArray[np.float64]:
            return rng.beta(1 + conv, 1 + n - conv, size=(size, k))

    else:
        mean, sd = _normal_posteriors(arms)
        n = np.array([arm.n for arm in arms], dtype=np.float64)
        informative = (n >= 2) & (sd > 0)
        if informative.any():
            pooled_var = float(np.mean((sd[informative] ** 2) * n[informative]))
            pooled_mean = float(np.mean(mean[informative]))
        else:
            pooled_var, pooled_mean = 1.0, 0.0
        mean = np.where(n > 0, mean, pooled_mean)
        sd = np.where(informative, sd, np.sqrt(pooled_var / np.maximum(n, 1)))

        def draw(size: int) -> NDArray[np.float64]:
            return rng.normal(mean, sd, size=(size, k))

    wins = _win_counts(draw, k, n_samples, higher_is_better)
    weights = _floor_weights(wins / n_samples, float(min_weight))
    return [float(w) for w in weights]
