"""Regenerate the gbstats reference fixtures in experiments/tests/data/gbstats_*.json.

gbstats 0.8.0 (GrowthBook's engine) cannot live in the project's venv, so this script runs in
its own: started with any python, it re-executes itself inside ``bench/.venvs/gbstats``
(creating it when missing). The project's tests then compare ``experiments.stats`` with these
committed numbers without needing gbstats::

    .venv/bin/python bench/make_gbstats_fixtures.py

Cases are drawn from a seeded generator (proportion, mean, ratio and CUPED metrics; tiny to
huge n; relative and absolute; several alphas, sequential tunings and credible levels) plus
hand-written degenerate cases (zero variance, zero or negative baseline, empty arms, ...).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "experiments" / "tests" / "data"
SEED = 20240601
sys.path.insert(0, str(ROOT / "bench"))

import gbstats_pipeline  # noqa: E402

Cell = dict[str, float]


def _reexec_in_gbstats_venv() -> None:
    try:
        import gbstats  # noqa: F401
    except ImportError:
        python, reason = gbstats_pipeline.ensure_gbstats_python()
        if python is None:
            sys.exit(f"gbstats is unavailable: {reason}")
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


# ----------------------------------------------------------------------------- case generation


def _moments(n: int, mean: float, sd: float) -> tuple[float, float]:
    total = n * mean
    squares = (n - 1) * sd * sd + total * total / n if n > 0 else 0.0
    return total, squares


def _pair(n: int, m1: float, s1: float, m2: float, s2: float, rho: float) -> list[float]:
    x, xx = _moments(n, m1, s1)
    y, yy = _moments(n, m2, s2)
    xy = (n - 1) * rho * s1 * s2 + x * y / n if n > 0 else 0.0
    return [x, xx, y, yy, xy]


def _n(rng: random.Random) -> int:
    scale = rng.choice([(2, 12), (12, 200), (200, 20_000), (20_000, 5_000_000)])
    return int(math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1]))))


def _from_values(values: list[float]) -> tuple[float, float]:
    return float(sum(values)), float(sum(v * v for v in values))


def random_cell(kind: str, rng: random.Random, n: int, lift: float, base: dict[str, float]) -> Cell:
    if kind == "proportion":
        p = min(max(base["p"] * (1 + lift), 0.0), 1.0)
        return {"n": n, "conversions": min(n, max(0, round(n * p + rng.gauss(0, 0.5))))}
    if kind == "mean":
        if n <= 12:  # tiny samples: real values, so sums are exactly consistent
            vals = [rng.gauss(base["mu"] * (1 + lift), base["sd"]) for _ in range(n)]
            total, squares = _from_values(vals)
            return {"n": n, "sum": total, "sum_squares": squares}
        total, squares = _moments(n, base["mu"] * (1 + lift), base["sd"] * rng.uniform(0.8, 1.2))
        return {"n": n, "sum": total, "sum_squares": squares}
    if kind == "ratio":
        d = base["d"] * rng.uniform(0.9, 1.1)
        sums = _pair(n, base["r"] * d * (1 + lift), base["sm"], d, base["sd"], base["rho"])
        keys = ["num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum_product"]
        return {"n": n, **dict(zip(keys, sums, strict=True))}
    if kind == "cuped":
        sums = _pair(n, base["mu"] * (1 + lift), base["sd"], base["pre"], base["psd"], base["rho"])
        # keep "sum" fields first, in our naming
        x, xx, y, yy, xy = sums
        return {
            "n": n,
            "sum": x,
            "sum_squares": xx,
            "pre_sum": y,
            "pre_sum_squares": yy,
            "sum_product": xy,
        }
    raise ValueError(kind)


def random_base(kind: str, rng: random.Random) -> dict[str, float]:
    return {
        "p": rng.choice([rng.uniform(0.001, 0.05), rng.uniform(0.05, 0.6), rng.uniform(0.6, 0.99)]),
        "mu": rng.choice([rng.uniform(0.5, 80), rng.uniform(-20, -0.5), rng.uniform(-1, 1)]),
        "sd": rng.uniform(0.1, 40),
        "d": rng.uniform(0.5, 6),
        "r": rng.uniform(0.5, 60),
        "sm": rng.uniform(1, 200),
        "rho": rng.uniform(-0.3, 0.95),
        "pre": rng.uniform(-5, 60),
        "psd": rng.uniform(0.1, 40),
    }


def random_pairs(rng: random.Random, per_kind: int) -> list[tuple[str, Cell, Cell, str]]:
    pairs = []
    for kind in ("proportion", "mean", "ratio", "cuped"):
        for i in range(per_kind):
            base = random_base(kind, rng)
            n_a = _n(rng)
            n_b = max(2, int(n_a * rng.uniform(0.7, 1.3)))
            lift = rng.choice([0.0, rng.gauss(0, 0.03), rng.gauss(0, 0.3), rng.uniform(-0.9, 3)])
            a = random_cell(kind, rng, n_a, 0.0, base)
            b = random_cell(kind, rng, n_b, lift, base)
            pairs.append((kind, a, b, f"{kind}-random-{i}"))
    return pairs


def degenerate_pairs() -> list[tuple[str, Cell, Cell, str]]:
    def prop(n: int, c: int) -> Cell:
        return {"n": n, "conversions": c}

    def mean(n: int, s: float, ss: float) -> Cell:
        return {"n": n, "sum": s, "sum_squares": ss}

    def ratio(n: int, *sums: float) -> Cell:
        keys = ["num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum_product"]
        return {"n": n, **dict(zip(keys, sums, strict=True))}

    def cuped(n: int, *sums: float) -> Cell:
        keys = ["sum", "sum_squares", "pre_sum", "pre_sum_squares", "sum_product"]
        return {"n": n, **dict(zip(keys, sums, strict=True))}

    return [
        ("proportion", prop(1000, 0), prop(1000, 5), "prop-control-zero-conversions"),
        ("proportion", prop(1000, 5), prop(1000, 0), "prop-treatment-zero-conversions"),
        ("proportion", prop(1000, 1000), prop(1000, 990), "prop-control-all-converted"),
        ("proportion", prop(0, 0), prop(100, 10), "prop-control-empty"),
        ("proportion", prop(100, 10), prop(0, 0), "prop-treatment-empty"),
        ("proportion", prop(1, 1), prop(1, 0), "prop-single-units"),
        ("proportion", prop(2, 1), prop(3, 2), "prop-tiny"),
        ("proportion", prop(10_000_000, 100_000), prop(10_000_000, 130_000), "prop-huge-effect"),
        ("proportion", prop(5000, 250), prop(5000, 250), "prop-identical"),
        ("proportion", prop(50, 1), prop(50, 4), "prop-small-counts"),
        ("mean", mean(100, 500.0, 2500.0), mean(100, 520.0, 2900.0), "mean-control-zero-variance"),
        ("mean", mean(100, 0.0, 400.0), mean(100, 20.0, 420.0), "mean-control-zero-mean"),
        ("mean", mean(100, -300.0, 1500.0), mean(100, -250.0, 1200.0), "mean-negative-baseline"),
        ("mean", mean(1, 5.0, 25.0), mean(10, 40.0, 200.0), "mean-control-single-unit"),
        ("mean", mean(0, 0.0, 0.0), mean(10, 40.0, 200.0), "mean-control-empty"),
        ("mean", mean(50, 100.0, 150.0), mean(50, 100.0, 150.0), "mean-identical"),
        ("mean", mean(30, 60.0, 100.0), mean(30, 60.0, 100.0), "mean-negative-variance"),
        ("mean", mean(2, 3.0, 5.0), mean(2, 1.0, 1.0), "mean-two-units"),
        (
            "ratio",
            ratio(200, 1000.0, 9000.0, 0.0, 0.0, 0.0),
            ratio(200, 1100.0, 9900.0, 300.0, 700.0, 2000.0),
            "ratio-control-zero-denominator",
        ),
        (
            "ratio",
            ratio(200, 0.0, 0.0, 300.0, 700.0, 0.0),
            ratio(200, 1100.0, 9900.0, 300.0, 700.0, 2000.0),
            "ratio-control-zero-numerator",
        ),
        (
            "ratio",
            ratio(1, 10.0, 100.0, 2.0, 4.0, 20.0),
            ratio(200, 1100.0, 9900.0, 300.0, 700.0, 2000.0),
            "ratio-control-single-unit",
        ),
        (
            "ratio",
            ratio(100, 200.0, 400.0, 100.0, 100.0, 200.0),
            ratio(100, 220.0, 600.0, 100.0, 120.0, 230.0),
            "ratio-constant-denominator",
        ),
        (
            "cuped",
            cuped(100, 500.0, 4000.0, 300.0, 900.0, 1500.0),
            cuped(100, 550.0, 4500.0, 300.0, 900.0, 1650.0),
            "cuped-zero-pre-variance",
        ),
        (
            "cuped",
            cuped(100, 500.0, 2500.0, 300.0, 1500.0, 1500.0),
            cuped(100, 500.0, 2500.0, 320.0, 1700.0, 1600.0),
            "cuped-zero-post-variance",
        ),
        (
            "cuped",
            cuped(100, 0.0, 2500.0, 300.0, 1500.0, 40.0),
            cuped(100, 50.0, 2600.0, 320.0, 1700.0, 160.0),
            "cuped-zero-baseline",
        ),
        (
            "cuped",
            cuped(1000, 5000.0, 60000.0, 4900.0, 58000.0, 58500.0),
            cuped(1000, 5200.0, 64000.0, 4950.0, 58900.0, 61000.0),
            "cuped-high-correlation",
        ),
        (
            "cuped",
            cuped(0, 0.0, 0.0, 0.0, 0.0, 0.0),
            cuped(100, 50.0, 2600.0, 320.0, 1700.0, 160.0),
            "cuped-control-empty",
        ),
    ]


# ----------------------------------------------------------------------------- gbstats side


def gb_stat(kind: str, cell: Cell) -> Any:
    from gbstats.models.statistics import (
        ProportionStatistic,
        RatioStatistic,
        RegressionAdjustedStatistic,
        SampleMeanStatistic,
    )

    n = int(cell["n"])
    if kind == "proportion":
        return ProportionStatistic(n=n, sum=cell["conversions"])
    if kind == "mean":
        return SampleMeanStatistic(n=n, sum=cell["sum"], sum_squares=cell["sum_squares"])
    if kind == "ratio":
        return RatioStatistic(
            n=n,
            m_statistic=SampleMeanStatistic(
                n=n, sum=cell["num_sum"], sum_squares=cell["num_sum_squares"]
            ),
            d_statistic=SampleMeanStatistic(
                n=n, sum=cell["den_sum"], sum_squares=cell["den_sum_squares"]
            ),
            m_d_sum_of_products=cell["num_den_sum_product"],
        )
    if kind == "cuped":
        return RegressionAdjustedStatistic(
            n=n,
            post_statistic=SampleMeanStatistic(
                n=n, sum=cell["sum"], sum_squares=cell["sum_squares"]
            ),
            pre_statistic=SampleMeanStatistic(
                n=n, sum=cell["pre_sum"], sum_squares=cell["pre_sum_squares"]
            ),
            post_pre_sum_of_products=cell["sum_product"],
            theta=0,
        )
    raise ValueError(kind)


def run_case(kind: str, a: Cell, b: Cell, settings: dict[str, Any]) -> dict[str, Any]:
    from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig
    from gbstats.frequentist.tests import (
        FrequentistConfig,
        SequentialConfig,
        SequentialTwoSidedTTest,
        TwoSidedTTest,
    )

    diff = "relative" if settings["relative"] else "absolute"
    stat_a, stat_b = gb_stat(kind, a), gb_stat(kind, b)
    engine = settings["engine"]
    if engine == "frequentist":
        test = TwoSidedTTest(
            stat_a, stat_b, FrequentistConfig(difference_type=diff, alpha=settings["alpha"])
        )
    elif engine == "sequential":
        test = SequentialTwoSidedTTest(
            stat_a,
            stat_b,
            SequentialConfig(
                difference_type=diff,
                alpha=settings["alpha"],
                sequential_tuning_parameter=settings["sequential_tuning"],
            ),
        )
    else:
        alpha = round(1 - settings["ci_level"], 12)
        test = EffectBayesianABTest(
            stat_a, stat_b, EffectBayesianConfig(difference_type=diff, alpha=alpha)
        )
    res = test.compute_result()
    out = {
        "control_mean": float(test.stat_a.unadjusted_mean),
        "treatment_mean": float(test.stat_b.unadjusted_mean),
        "estimate": float(res.expected),
        "ci_low": float(res.ci[0]),
        "ci_high": float(res.ci[1]),
        "std_error": float(res.uplift.stddev),
        "error_code": res.error_message,
    }
    if engine == "bayesian":
        out["chance_to_win"] = float(res.chance_to_win)
        out["risk_control"] = float(res.risk[0])
        out["risk_treatment"] = float(res.risk[1])
    else:
        out["p_value"] = float(res.p_value)
    return out


def settings_for(engine: str, rng: random.Random, relative: bool) -> dict[str, Any]:
    if engine == "frequentist":
        return {
            "engine": engine,
            "relative": relative,
            "alpha": rng.choice([0.05, 0.05, 0.1, 0.01]),
        }
    if engine == "sequential":
        return {
            "engine": engine,
            "relative": relative,
            "alpha": rng.choice([0.05, 0.05, 0.1]),
            "sequential_tuning": rng.choice([5000.0, 5000.0, 100.0, 1000.0, 20000.0, 500000.0]),
        }
    return {"engine": engine, "relative": relative, "ci_level": rng.choice([0.95, 0.95, 0.9, 0.99])}


def build_pair_fixtures(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    fixtures: dict[str, list[dict[str, Any]]] = {
        "frequentist": [],
        "sequential": [],
        "bayesian": [],
    }
    skipped = []
    pairs = random_pairs(rng, per_kind=70)
    degenerate = degenerate_pairs()
    for kind, a, b, case_id in pairs + degenerate:
        for engine in fixtures:
            relatives = (
                [True, False] if case_id in {d[3] for d in degenerate} else [rng.random() < 0.6]
            )
            for relative in relatives:
                settings = settings_for(engine, rng, relative)
                try:
                    expected = run_case(kind, a, b, settings)
                except (ZeroDivisionError, ValueError, FloatingPointError) as exc:
                    skipped.append(f"{case_id} {settings}: gbstats raised {exc!r}")
                    continue
                values = [v for v in expected.values() if isinstance(v, float)]
                if not all(math.isfinite(v) for v in values):
                    skipped.append(f"{case_id} {settings}: gbstats returned non-finite values")
                    continue
                fixtures[engine].append(
                    {
                        "id": f"{case_id}/{engine}/{'rel' if relative else 'abs'}",
                        "kind": kind,
                        "control": a,
                        "treatment": b,
                        "settings": settings,
                        "expected": expected,
                    }
                )
    for line in skipped:
        print("skipped:", line)
    return fixtures


def build_srm_fixtures(rng: random.Random) -> list[dict[str, Any]]:
    from gbstats.utils import check_srm

    cases = []
    for _ in range(120):
        k = rng.randint(2, 6)
        weights = [rng.choice([1.0, 1.0, 2.0, 0.5, rng.uniform(0.05, 3)]) for _ in range(k)]
        if rng.random() < 0.1:
            weights[rng.randrange(k)] = 0.0
        if sum(weights) == 0:
            weights[0] = 1.0
        total = int(math.exp(rng.uniform(math.log(10), math.log(2_000_000))))
        skew = rng.choice([0.0, 0.0, 0.002, 0.01, 0.05])
        counts = []
        for w in weights:
            share = w / sum(weights) * (1 + rng.gauss(0, skew))
            counts.append(max(0, round(total * share + rng.gauss(0, math.sqrt(total * 0.1 + 1)))))
        cases.append({"observed": counts, "weights": weights})
    cases.append({"observed": [0, 0, 0], "weights": [1.0, 1.0, 1.0]})
    cases.append({"observed": [5000, 5000], "weights": [0.5, 0.5]})
    cases.append({"observed": [5000, 5600], "weights": [0.5, 0.5]})
    for case in cases:
        case["expected"] = float(check_srm(case["observed"], case["weights"]))
    return cases


def build_pipeline_fixtures(rng: random.Random) -> list[dict[str, Any]]:
    """Whole experiments (3-4 variants x 3 segments) through gbstats' per-metric pipeline."""
    experiments = []
    for engine, tuning in (("frequentist", None), ("frequentist", 5000.0), ("bayesian", None)):
        metrics = []
        for kind in ("proportion", "mean", "ratio", "cuped"):
            for _ in range(2):
                base = random_base(kind, rng)
                n_variants = rng.choice([3, 4])
                arms = []
                for v in range(n_variants):
                    lift = 0.0 if v == 0 else rng.gauss(0, 0.1)
                    arms.append(
                        [
                            random_cell(kind, rng, int(rng.uniform(50, 20_000)), lift, base)
                            for _ in range(3)
                        ]
                    )
                metrics.append({"kind": kind, "arms": arms})
        spec = {
            "engine": engine,
            "relative": True,
            "alpha": 0.05,
            "sequential_tuning": tuning,
            "metrics": metrics,
        }
        result = gbstats_pipeline.run(spec)
        result.pop("seconds_per_metric")
        experiments.append({"spec": spec, "expected": result})
    return experiments


def write(name: str, payload: Any) -> None:
    path = DATA / name
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"generator": "bench/make_gbstats_fixtures.py", "gbstats": "0.8.0", "seed": SEED}
    if isinstance(payload, list):
        lines = ",\n".join(json.dumps(item, allow_nan=False) for item in payload)
        text = json.dumps(header)[:-1] + ', "cases": [\n' + lines + "\n]}\n"
    else:
        text = json.dumps({**header, **payload}, allow_nan=False) + "\n"
    path.write_text(text)
    print(f"wrote {path.relative_to(ROOT)} ({len(payload) if isinstance(payload, list) else 1})")


def main() -> None:
    _reexec_in_gbstats_venv()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # gbstats' harmless overflows
    rng = random.Random(SEED)
    pairs = build_pair_fixtures(rng)
    for engine, cases in pairs.items():
        write(f"gbstats_{engine}.json", cases)
    write("gbstats_srm.json", build_srm_fixtures(rng))
    write("gbstats_pipeline.json", build_pipeline_fixtures(rng))


if __name__ == "__main__":
    main()
