"""One call for a whole experiment: every metric, treatment and segment, both engines.

    stats = StatsArrays.concat([
        StatsArrays.proportion(n, conversions),          # (metrics, variants, segments)
        StatsArrays.mean(n, revenue, revenue_squares),
    ])
    out = analyze_experiment(stats, sequential_tuning=5000)
    out.frequentist.p_value      # (metrics, variants - 1, segments)
    out.bayesian.chance_to_win

The per-arm moments are computed once and shared by both engines. Every number equals what the
scalar :func:`frequentist_test` / :func:`bayesian_test` return for the same cell (they are thin
wrappers over the same code).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from experiments.stats.arrays import StatsArrays, pair_moments
from experiments.stats.bayesian import DEFAULT_CI_LEVEL, bayesian_from_moments
from experiments.stats.errors import StatsError
from experiments.stats.frequentist import DEFAULT_ALPHA, frequentist_from_moments
from experiments.stats.results import ComparisonArrays

Engine = Literal["frequentist", "bayesian"]


@dataclass(frozen=True, eq=False)
class ExperimentArrays:
    """The comparisons of :func:`analyze_experiment`; an engine not requested is None."""

    frequentist: ComparisonArrays | None
    bayesian: ComparisonArrays | None


def analyze_experiment(
    stats: StatsArrays,
    *,
    engines: Collection[Engine] = ("frequentist", "bayesian"),
    relative: bool = True,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float | None = None,
    ci_level: float = DEFAULT_CI_LEVEL,
) -> ExperimentArrays:
    """Compare every treatment with the control, for every metric and segment, in one pass."""
    unknown = set(engines) - {"frequentist", "bayesian"}
    if unknown or not engines:
        raise StatsError(f"engines must be 'frequentist' and/or 'bayesian', got {engines!r}")
    moments = pair_moments(stats)
    frequentist = (
        frequentist_from_moments(
            moments, relative=relative, alpha=alpha, sequential_tuning=sequential_tuning
        )
        if "frequentist" in engines
        else None
    )
    bayesian = (
        bayesian_from_moments(moments, relative=relative, ci_level=ci_level)
        if "bayesian" in engines
        else None
    )
    return ExperimentArrays(frequentist=frequentist, bayesian=bayesian)
