"""A/A calibration and power harness: does a 5% test really make 5% false positives?

Simulates many experiments day by day as cumulative sufficient statistics (no individual users)
and analyses every day of every simulation in one vectorized call: simulations become the
"metrics" axis and days the "segments" axis of a :class:`StatsArrays`.

Scenarios (all seeded):

* A/A conversion (both arms at ``baseline_rate``): false-positive rate of the fixed-horizon
  t-test (one look at the end), of naive daily peeking with the same t-test (stop at the first
  p < alpha), of daily peeking with the sequential test, and of a Bayesian "stop when chance to
  win leaves [5%, 95%]" rule;
* A/A revenue (zero-inflated log-normal order values): the same for a skewed mean metric;
* A/A revenue at low traffic: the sequential test on a relative lift with only a dozen buyers a
  day (the delta method needs enough conversions; the absolute difference stays calibrated);
* A/B conversion with a true relative lift: power of the fixed-horizon and sequential tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats as sps

from experiments.stats.arrays import StatsArrays
from experiments.stats.bayesian import bayesian_arrays
from experiments.stats.frequentist import frequentist_arrays


@dataclass(frozen=True)
class CalibrationConfig:
    n_simulations: int = 10_000
    days: int = 14
    users_per_day: int = 2_500  # per arm
    baseline_rate: float = 0.05
    true_lift: float = 0.10  # relative lift used for the power rows
    revenue_users_per_day: int = 2_500  # per arm
    low_traffic_users_per_day: int = 250  # per arm, revenue
    order_value_mu: float = 3.0  # log-normal order value: exp(mu + sigma^2/2) ~ 27
    order_value_sigma: float = 1.0
    alpha: float = 0.05
    sequential_tuning: float = 5000.0  # the product default
    planned_tuning: bool = True  # also report the tuning set to the planned sample size
    seed: int = 20240601


@dataclass(frozen=True)
class CalibrationRow:
    scenario: str
    method: str
    looks: str
    rate: float
    n_simulations: int
    target: str
    passed: bool | None  # None when the row is informative only

    @property
    def margin(self) -> float:
        """Half-width of the 95% Monte Carlo interval of ``rate``."""
        return float(1.96 * np.sqrt(self.rate * (1 - self.rate) / self.n_simulations))


def _cumulative(daily: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.cumsum(daily, axis=-1)


def simulate_conversions(
    rng: np.random.Generator, config: CalibrationConfig, treatment_rate: float
) -> StatsArrays:
    """(simulations, 2 arms, days) cumulative conversion counts."""
    shape = (config.n_simulations, 2, config.days)
    rates = np.array([config.baseline_rate, treatment_rate])[None, :, None]
    daily = rng.binomial(config.users_per_day, np.broadcast_to(rates, shape)).astype(np.float64)
    n = np.broadcast_to(
        config.users_per_day * np.arange(1, config.days + 1, dtype=np.float64), shape
    )
    return StatsArrays.proportion(n, _cumulative(daily))


def simulate_revenue(
    rng: np.random.Generator, config: CalibrationConfig, users_per_day: int | None = None
) -> StatsArrays:
    """(simulations, 2 arms, days) cumulative revenue sums of a zero-inflated log-normal."""
    users_per_day = users_per_day or config.revenue_users_per_day
    shape = (config.n_simulations, 2, config.days)
    buyers = rng.binomial(users_per_day, config.baseline_rate, size=shape)
    values = rng.lognormal(config.order_value_mu, config.order_value_sigma, size=int(buyers.sum()))
    cell = np.repeat(np.arange(buyers.size), buyers.ravel())
    sums = np.bincount(cell, weights=values, minlength=buyers.size).reshape(shape)
    squares = np.bincount(cell, weights=values * values, minlength=buyers.size).reshape(shape)
    n = np.broadcast_to(users_per_day * np.arange(1, config.days + 1, dtype=np.float64), shape)
    return StatsArrays.mean(n, _cumulative(sums), _cumulative(squares))


def planned_total(config: CalibrationConfig) -> float:
    """Both arms' units at the planned end of the conversion experiments."""
    return float(2 * config.users_per_day * config.days)


def planned_power(config: CalibrationConfig) -> float:
    """Normal-approximation power of the two-proportion test at the planned sample size
    (the formula behind ``sample_size_per_arm``, solved for power)."""
    p1 = config.baseline_rate
    p2 = p1 * (1 + config.true_lift)
    pbar = (p1 + p2) / 2
    n = config.users_per_day * config.days
    z_alpha = sps.norm.ppf(1 - config.alpha / 2)
    z = (abs(p2 - p1) * np.sqrt(n) - z_alpha * np.sqrt(2 * pbar * (1 - pbar))) / np.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2)
    )
    return float(sps.norm.cdf(z))


def _rates(stats: StatsArrays, config: CalibrationConfig) -> dict[str, float]:
    """Rejection rates of each decision rule over the simulations."""
    fixed = frequentist_arrays(stats, alpha=config.alpha)
    seq = frequentist_arrays(stats, alpha=config.alpha, sequential_tuning=config.sequential_tuning)
    planned = frequentist_arrays(
        stats, alpha=config.alpha, sequential_tuning=float(stats.n[0, :, -1].sum())
    )
    bayes = bayesian_arrays(stats, ci_level=1 - config.alpha)
    assert fixed.p_value is not None and seq.p_value is not None and planned.p_value is not None
    assert bayes.chance_to_win is not None
    p_fixed = fixed.p_value[:, 0, :]  # (simulations, days)
    p_seq = seq.p_value[:, 0, :]
    p_planned = planned.p_value[:, 0, :]
    ctw = bayes.chance_to_win[:, 0, :]
    bayes_call = (ctw > 0.95) | (ctw < 0.05)
    return {
        "fixed": float(np.mean(p_fixed[:, -1] < config.alpha)),
        "peek": float(np.mean((p_fixed < config.alpha).any(axis=1))),
        "sequential": float(np.mean((p_seq < config.alpha).any(axis=1))),
        "planned": float(np.mean((p_planned < config.alpha).any(axis=1))),
        "bayes_end": float(np.mean(bayes_call[:, -1])),
        "bayes_peek": float(np.mean(bayes_call.any(axis=1))),
    }


def run_calibration(config: CalibrationConfig | None = None) -> list[CalibrationRow]:
    """Run every scenario and return the table rows (deterministic for a given config)."""
    config = config or CalibrationConfig()
    rng = np.random.default_rng(config.seed)
    sims = config.n_simulations
    daily = f"daily x{config.days}"
    a_pct = f"{config.alpha:.0%}"
    rows: list[CalibrationRow] = []

    def add(scenario: str, method: str, looks: str, rate: float, target: str, passed=None):
        rows.append(CalibrationRow(scenario, method, looks, rate, sims, target, passed))

    lo, hi = config.alpha - 0.01, config.alpha + 0.01
    seq_label = f"sequential (tuning {config.sequential_tuning:g})"
    planned_label = "sequential (tuning = planned N)"
    for scenario, stats in (
        ("A/A conversion", simulate_conversions(rng, config, config.baseline_rate)),
        ("A/A revenue", simulate_revenue(rng, config)),
    ):
        r = _rates(stats, config)
        add(
            scenario, "t-test", "end only", r["fixed"], f"{lo:.0%}-{hi:.0%}", lo <= r["fixed"] <= hi
        )
        add(scenario, "t-test, naive peeking", daily, r["peek"], f"> {a_pct} (inflated)")
        ok = r["sequential"] <= config.alpha
        add(scenario, seq_label, daily, r["sequential"], f"<= {a_pct}", ok)
        if config.planned_tuning:
            ok = r["planned"] <= config.alpha
            add(scenario, planned_label, daily, r["planned"], f"<= {a_pct}", ok)
        bayes = "Bayesian, chance to win > 95% or < 5%"
        add(scenario, bayes, "end only", r["bayes_end"], "~10% (two 5% tails)")
        add(scenario, bayes, daily, r["bayes_peek"], "inflated")

    low = simulate_revenue(rng, config, config.low_traffic_users_per_day)
    scenario = f"A/A revenue, {config.low_traffic_users_per_day:,} users/arm/day"
    for relative in (True, False):
        seq = frequentist_arrays(
            low, alpha=config.alpha, sequential_tuning=config.sequential_tuning, relative=relative
        )
        assert seq.p_value is not None
        rate = float(np.mean((seq.p_value[:, 0, :] < config.alpha).any(axis=1)))
        effect = "relative lift" if relative else "absolute difference"
        ok = None if relative else rate <= config.alpha
        target = "see note: few buyers" if relative else f"<= {a_pct}"
        add(scenario, f"{seq_label}, {effect}", daily, rate, target, ok)

    lifted = config.baseline_rate * (1 + config.true_lift)
    r = _rates(simulate_conversions(rng, config, lifted), config)
    scenario = f"A/B conversion +{config.true_lift:.0%}"
    add(
        scenario,
        "t-test (power)",
        "end only",
        r["fixed"],
        f"~{planned_power(config):.0%} (formula)",
    )
    add(scenario, f"{seq_label} (power)", daily, r["sequential"], "lower: the price of peeking")
    if config.planned_tuning:
        add(
            scenario, f"{planned_label} (power)", daily, r["planned"], "lower: the price of peeking"
        )
    return rows


def format_table(rows: list[CalibrationRow], config: CalibrationConfig | None = None) -> str:
    """A Markdown table of the rows."""
    config = config or CalibrationConfig()
    lines = [
        "| scenario | method | looks | rejection rate | 95% MC interval | target | ok |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ok = "" if row.passed is None else ("yes" if row.passed else "NO")
        lines.append(
            f"| {row.scenario} | {row.method} | {row.looks} | {row.rate:.2%} | "
            f"+/- {row.margin:.2%} | {row.target} | {ok} |"
        )
    return "\n".join(lines)


def describe(config: CalibrationConfig) -> str:
    return (
        f"{config.n_simulations:,} simulations per scenario, {config.days} days; per arm and day "
        f"{config.users_per_day:,} users (conversion, baseline {config.baseline_rate:.0%}), "
        f"{config.revenue_users_per_day:,} (revenue) or {config.low_traffic_users_per_day:,} "
        f"(low traffic); alpha {config.alpha}; sequential tuning {config.sequential_tuning:g} "
        f"and the planned N = {planned_total(config):,.0f}; seed {config.seed}"
    )
