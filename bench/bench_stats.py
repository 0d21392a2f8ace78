"""Benchmark: the vectorized statistics engine against GrowthBook's gbstats 0.8.0.

    .venv/bin/python bench/bench_stats.py [--repeats 7] [--gbstats-metrics 152]

Seeded inputs: 10,000 treatment-versus-control comparisons (5,000 metrics, a quarter each of
proportion, mean, ratio and CUPED, each with a control and two treatments, one segment). Our
figures are the median of several repeats of one vectorized call. The baseline is gbstats' own
per-metric pipeline (``process_single_metric``) on a sample of the same metrics, run in the
same invocation inside its own venv (``bench/.venvs/gbstats``, created if missing); its time per
comparison is extrapolated to 10,000. ``ratio`` = baseline / figure (how many times faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gbstats_pipeline import ensure_gbstats_python
from experiments.stats import (
    StatsArrays,
    analyze_experiment,
    bayesian_arrays,
    frequentist_arrays,
    frequentist_test,
)
from experiments.stats.inputs import FIELDS_BY_KIND

ROOT = Path(__file__).resolve().parents[1]
SEED = 20240601
N_METRICS = 5000  # x 2 treatments = 10,000 comparisons
SEQUENTIAL_TUNING = 5000.0


def make_inputs(n_metrics: int = N_METRICS, seed: int = SEED) -> StatsArrays:
    rng = np.random.default_rng(seed)
    shape = (n_metrics // 4, 3, 1)
    n = rng.integers(500, 200_000, size=shape).astype(float)
    lift = np.concatenate(
        [np.zeros((shape[0], 1, 1)), rng.normal(0, 0.02, (shape[0], 2, 1))], axis=1
    )
    rate = rng.uniform(0.01, 0.4, (shape[0], 1, 1)) * (1 + lift)
    conversions = rng.binomial(n.astype(np.int64), np.clip(rate, 0, 1)).astype(float)

    mu = rng.uniform(1, 80, (shape[0], 1, 1)) * (1 + lift)
    sd = rng.uniform(1, 60, shape)
    total = n * mu
    squares = (n - 1) * sd**2 + total**2 / n
    pre_mu = mu * rng.uniform(0.7, 1.3, shape)
    pre_sd = sd * rng.uniform(0.5, 1.5, shape)
    rho = rng.uniform(0.1, 0.9, shape)
    pre_total = n * pre_mu
    pre_squares = (n - 1) * pre_sd**2 + pre_total**2 / n
    products = (n - 1) * rho * sd * pre_sd + total * pre_total / n

    den_mu = rng.uniform(1, 4, shape)
    den_sd = den_mu * rng.uniform(0.2, 1.0, shape)
    den_total = n * den_mu
    den_squares = (n - 1) * den_sd**2 + den_total**2 / n
    num_den = (n - 1) * rho * sd * den_sd + total * den_total / n
    return StatsArrays.concat(
        [
            StatsArrays.proportion(n, conversions),
            StatsArrays.mean(n, total, squares),
            StatsArrays.ratio(n, total, squares, den_total, den_squares, num_den),
            StatsArrays.cuped(n, total, squares, pre_total, pre_squares, products),
        ]
    )


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_metrics(stats: StatsArrays, n_sample: int) -> list[int]:
    """Metric indices spread evenly over the four kinds."""
    per_kind = max(1, n_sample // 4)
    block = stats.shape[0] // 4
    return [k * block + i for k in range(4) for i in range(per_kind)]


def gbstats_spec(stats: StatsArrays, metrics: list[int], engine: str, tuning: float | None):
    spec_metrics = []
    for m in metrics:
        kind = stats.kinds[m]
        arms = []
        for v in range(stats.shape[1]):
            cells = []
            for s in range(stats.shape[2]):
                cell = stats.stats_at(m, v, s)
                cells.append({"n": cell.n, **{f: getattr(cell, f) for f in FIELDS_BY_KIND[kind]}})
            arms.append(cells)
        spec_metrics.append({"kind": str(kind), "arms": arms})
    return {
        "engine": engine,
        "relative": True,
        "alpha": 0.05,
        "sequential_tuning": tuning,
        "metrics": spec_metrics,
    }


def run_gbstats(python: Path, spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        subprocess.run(
            [
                str(python),
                str(ROOT / "bench" / "gbstats_pipeline.py"),
                str(spec_path),
                str(out_path),
            ],
            check=True,
            timeout=600,
        )
        return json.loads(out_path.read_text())


def max_rel_diff(ours, gb: dict[str, Any], metrics: list[int], engine: str) -> float:
    worst = 0.0
    for row, m in zip(gb["metrics"], metrics, strict=True):
        for s, variations in enumerate(row["segments"]):
            for t, theirs in enumerate(variations):
                r = ours.result(m, t + 1, s)
                pairs = [(r.ci_low, theirs["ci"][0]), (r.ci_high, theirs["ci"][1])]
                if engine == "bayesian":
                    pairs.append((r.chance_to_win, theirs["chance_to_win"]))
                else:
                    pairs.append((r.p_value, theirs["p_value"]))
                for a, b in pairs:
                    if a != b:
                        worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
    return worst


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if value < 1000 else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gbstats-metrics", type=int, default=152, help="sample size (metrics)")
    args = parser.parse_args(argv)

    stats = make_inputs()
    comparisons = stats.shape[0] * (stats.shape[1] - 1) * stats.shape[2]
    ours = {
        "frequentist": median_seconds(lambda: frequentist_arrays(stats), args.repeats),
        "sequential": median_seconds(
            lambda: frequentist_arrays(stats, sequential_tuning=SEQUENTIAL_TUNING), args.repeats
        ),
        "bayesian": median_seconds(lambda: bayesian_arrays(stats), args.repeats),
        "both": median_seconds(lambda: analyze_experiment(stats), args.repeats),
    }
    control, treatment = stats.stats_at(0, 0, 0), stats.stats_at(0, 1, 0)
    scalar = median_seconds(lambda: frequentist_test(control, treatment), args.repeats * 50)

    metrics = sample_metrics(stats, args.gbstats_metrics)
    sample_comparisons = len(metrics) * (stats.shape[1] - 1) * stats.shape[2]
    gb_total: dict[str, float] = {}
    gb_per_metric: dict[str, float] = {}
    agreement: dict[str, float] = {}
    python, reason = ensure_gbstats_python()
    if python is None:
        print(f"gbstats baseline unavailable: {reason}")
    else:
        results = {
            "frequentist": frequentist_arrays(stats),
            "sequential": frequentist_arrays(stats, sequential_tuning=SEQUENTIAL_TUNING),
            "bayesian": bayesian_arrays(stats),
        }
        for name, (engine, tuning) in {
            "frequentist": ("frequentist", None),
            "sequential": ("frequentist", SEQUENTIAL_TUNING),
            "bayesian": ("bayesian", None),
        }.items():
            try:
                out = run_gbstats(python, gbstats_spec(stats, metrics, engine, tuning))
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"gbstats {name} run failed: {exc}")
                continue
            seconds = sum(out["seconds_per_metric"])
            gb_total[name] = seconds / sample_comparisons * comparisons
            gb_per_metric[name] = seconds / len(metrics)
            agreement[name] = max_rel_diff(results[name], out, metrics, engine)
        if "frequentist" in gb_total and "bayesian" in gb_total:
            gb_total["both"] = gb_total["frequentist"] + gb_total["bayesian"]

    rows = []
    labels = {
        "frequentist": "t-test",
        "sequential": "sequential t-test",
        "bayesian": "Bayesian",
        "both": "t-test + Bayesian (one call)",
    }
    for key, label in labels.items():
        figure = ours[key] * 1000
        base = gb_total.get(key)
        base_ms = None if base is None else base * 1000
        ratio = "n/a" if base_ms is None else f"{base_ms / figure:,.0f}x"
        rows.append(
            (f"stats: {label}, {comparisons:,} comparisons", fmt(figure), "ms", fmt(base_ms), ratio)
        )
    per_comp_gb = None
    if "frequentist" in gb_total:
        per_comp_gb = gb_total["frequentist"] / comparisons * 1e6
    rows.append(
        (
            "stats: scalar frequentist_test, 1 comparison",
            fmt(scalar * 1e6),
            "us",
            fmt(per_comp_gb),
            "n/a" if per_comp_gb is None else f"{per_comp_gb / (scalar * 1e6):,.0f}x",
        )
    )
    for key in ("frequentist", "bayesian"):
        if key in gb_per_metric:
            rows.append(
                (
                    f"gbstats: per-metric pipeline ({key}, 2 treatments, measured)",
                    fmt(gb_per_metric[key] * 1000),
                    "ms/metric",
                    "-",
                    "-",
                )
            )
    for key, worst in agreement.items():
        rows.append(
            (f"stats vs gbstats: max relative difference ({key})", f"{worst:.1e}", "-", "0", "-")
        )

    print(
        f"Inputs: {comparisons:,} comparisons ({stats.shape[0]:,} metrics x "
        f"{stats.shape[1] - 1} treatments), seed {SEED}; our figures: median of {args.repeats} "
        f"runs. gbstats: {len(metrics)} metrics ({sample_comparisons} comparisons) through "
        "process_single_metric, time per comparison extrapolated to 10,000. ratio = baseline / "
        "figure.\n"
    )
    print("| benchmark | figure | unit | baseline | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if ours["both"] >= 1.0:
        print(f"\nWARNING: both engines took {ours['both']:.2f} s (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
