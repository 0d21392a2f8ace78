"""The vectorized engine equals the scalar functions, handles mixed kinds, and is fast."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.stats import (
    CupedStats,
    MeanStats,
    ProportionStats,
    RatioStats,
    StatsArrays,
    StatsError,
    analyze_experiment,
    bayesian_test,
    frequentist_test,
)
from experiments.stats.inputs import MetricKind


def random_arm(kind: MetricKind, rng: np.random.Generator, lift: float):
    n = int(rng.integers(0, 3000)) if rng.random() < 0.9 else int(rng.integers(0, 3))
    if kind is MetricKind.PROPORTION:
        return ProportionStats(n, int(rng.binomial(n, min(0.9, 0.1 * (1 + lift)))))
    if n == 0:
        zeros = (0.0,) * 5
        return {
            MetricKind.MEAN: MeanStats(0, 0.0, 0.0),
            MetricKind.RATIO: RatioStats(0, *zeros),
            MetricKind.CUPED: CupedStats(0, *zeros),
        }[kind]
    x = rng.gamma(2.0, 5.0 * (1 + lift), n)
    y = 0.5 * x + rng.gamma(2.0, 2.0, n)
    if kind is MetricKind.MEAN:
        return MeanStats(n, x.sum(), (x * x).sum())
    sums = (x.sum(), (x * x).sum(), y.sum(), (y * y).sum(), (x * y).sum())
    return RatioStats(n, *sums) if kind is MetricKind.RATIO else CupedStats(n, *sums)


@pytest.fixture(scope="module")
def experiment():
    rng = np.random.default_rng(2024)
    kinds = list(MetricKind) * 3
    grid = [
        [
            [random_arm(kind, rng, 0.0 if v == 0 else rng.normal(0, 0.1)) for _ in range(3)]
            for v in range(4)
        ]
        for kind in kinds
    ]
    return grid, StatsArrays.from_stats(grid)


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("tuning", [None, 5000.0])
def test_arrays_equal_scalar_results_cell_by_cell(experiment, relative, tuning):
    grid, stats = experiment
    out = analyze_experiment(stats, relative=relative, sequential_tuning=tuning, ci_level=0.9)
    assert out.frequentist.shape == (12, 3, 3) and out.bayesian.shape == (12, 3, 3)
    assert out.frequentist.error.any() and not out.frequentist.error.all()
    for m, variants in enumerate(grid):
        for v in range(1, 4):
            for s in range(3):
                control, treatment = variants[0][s], variants[v][s]
                freq = frequentist_test(
                    control, treatment, relative=relative, sequential_tuning=tuning
                )
                bayes = bayesian_test(control, treatment, relative=relative, ci_level=0.9)
                assert out.frequentist.result(m, v, s) == freq
                assert out.bayesian.result(m, v, s) == bayes
    for arrays in (out.frequentist, out.bayesian):
        for name in ("estimate", "ci_low", "ci_high", "std_error", "control_mean"):
            assert np.isfinite(getattr(arrays, name)).all()


def test_from_stats_round_trips_and_concat_mixes_kinds():
    rng = np.random.default_rng(1)
    n = rng.integers(10, 100, size=(2, 3, 2)).astype(float)
    conv = np.floor(n * 0.3)
    props = StatsArrays.proportion(n, conv)
    means = StatsArrays.mean(n, n * 2.0, n * 5.0)
    both = StatsArrays.concat([props, means])
    assert both.kinds == (MetricKind.PROPORTION,) * 2 + (MetricKind.MEAN,) * 2
    assert both.stats_at(0, 1, 1) == ProportionStats(int(n[0, 1, 1]), int(conv[0, 1, 1]))
    assert both.stats_at(3, 2, 0) == MeanStats(int(n[1, 2, 0]), n[1, 2, 0] * 2, n[1, 2, 0] * 5)
    out = analyze_experiment(both, engines=("frequentist",))
    assert out.bayesian is None and out.frequentist.p_value.shape == (4, 2, 2)
    assert out.frequentist.result(3, 2, 0) == frequentist_test(
        both.stats_at(3, 0, 0), both.stats_at(3, 2, 0)
    )


def test_bad_calls_raise():
    stats = StatsArrays.proportion(np.full((1, 2, 1), 10.0), np.full((1, 2, 1), 1.0))
    with pytest.raises(StatsError, match="engines"):
        analyze_experiment(stats, engines=("magic",))
    with pytest.raises(StatsError, match="variant must be between 1 and 1"):
        analyze_experiment(stats).frequentist.result(0, 0, 0)
    with pytest.raises(StatsError, match="same kind"):
        StatsArrays.from_stats([[[ProportionStats(1, 0)], [MeanStats(1, 1.0, 1.0)]]])
    with pytest.raises(StatsError, match="variants x segments"):
        StatsArrays.concat([stats, StatsArrays.proportion(np.ones((1, 3, 1)), np.ones((1, 3, 1)))])


def bench_inputs(n_metrics: int = 5000, seed: int = 0) -> StatsArrays:
    """10,000 comparisons: 5,000 metrics x (control + 2 treatments), a quarter of each kind."""
    rng = np.random.default_rng(seed)
    shape = (n_metrics // 4, 3, 1)
    n = rng.integers(1000, 100_000, size=shape).astype(float)
    parts = [StatsArrays.proportion(n, np.floor(n * rng.uniform(0.01, 0.3, shape)))]
    mu, sd = rng.uniform(1, 50, shape), rng.uniform(1, 30, shape)
    s, ss = n * mu, (n - 1) * sd**2 + (n * mu) ** 2 / n
    parts.append(StatsArrays.mean(n, s, ss))
    y_mu = rng.uniform(1, 5, shape)
    y, yy = n * y_mu, (n - 1) * 1.0 + (n * y_mu) ** 2 / n
    xy = (n - 1) * 0.5 * sd + s * y / n
    parts.append(StatsArrays.ratio(n, s, ss, y, yy, xy))
    parts.append(StatsArrays.cuped(n, s, ss, y, yy, xy))
    return StatsArrays.concat(parts)


def test_ten_thousand_comparisons_run_in_one_call_without_errors():
    # How fast is measured by bench/bench_stats.py, not here.
    stats = bench_inputs()
    assert stats.shape[0] * (stats.shape[1] - 1) * stats.shape[2] == 10_000
    out = analyze_experiment(stats, sequential_tuning=None)
    assert out.frequentist.p_value.shape == (stats.shape[0], stats.shape[1] - 1, stats.shape[2])
    assert not out.frequentist.error.any()
    assert not out.bayesian.error.any()
