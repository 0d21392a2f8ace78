"""The engine reproduces GrowthBook's gbstats 0.8.0 on committed reference fixtures.

The fixtures (experiments/tests/data/gbstats_*.json) come from bench/make_gbstats_fixtures.py,
which runs gbstats in its own virtual environment; these tests need neither gbstats nor network.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments.stats import (
    CupedStats,
    MeanStats,
    ProportionStats,
    RatioStats,
    StatsArrays,
    analyze_experiment,
    bayesian_arrays,
    bayesian_test,
    frequentist_arrays,
    frequentist_test,
    srm_p_value,
    srm_p_values,
)
from experiments.stats.inputs import FIELDS_BY_KIND, MetricKind

DATA = Path(__file__).parent / "data"
REL = 1e-6
ABS = 1e-12  # only matters for values that are 0 in one engine and ~1e-17 in the other
CLASSES = {
    "proportion": ProportionStats,
    "mean": MeanStats,
    "ratio": RatioStats,
    "cuped": CupedStats,
}
ENGINES = ("frequentist", "sequential", "bayesian")


@cache
def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"gbstats_{name}.json").read_text())


def cases(engine: str) -> list[dict[str, Any]]:
    return load(engine)["cases"]


def run_scalar(case: dict[str, Any]):
    kind = CLASSES[case["kind"]]
    control, treatment = kind(**case["control"]), kind(**case["treatment"])
    s = case["settings"]
    if s["engine"] == "bayesian":
        return bayesian_test(control, treatment, relative=s["relative"], ci_level=s["ci_level"])
    return frequentist_test(
        control,
        treatment,
        relative=s["relative"],
        alpha=s["alpha"],
        sequential_tuning=s.get("sequential_tuning"),
    )


def assert_matches(result, expected: dict[str, Any], case_id: str) -> None:
    for field, want in expected.items():
        got = getattr(result, field)
        if field == "error_code":
            assert got == want, f"{case_id}: error_code {got!r} != {want!r}"
            continue
        assert got is not None and math.isfinite(got), f"{case_id}: {field} is {got!r}"
        assert math.isclose(got, want, rel_tol=REL, abs_tol=ABS), (
            f"{case_id}: {field} = {got!r}, gbstats {want!r}"
        )


def test_fixtures_are_large_and_diverse():
    for engine in ENGINES:
        all_cases = cases(engine)
        assert len(all_cases) >= 300
        kinds = {c["kind"] for c in all_cases}
        assert kinds == set(CLASSES)
        assert {c["settings"]["relative"] for c in all_cases} == {True, False}
        assert any(c["expected"]["error_code"] for c in all_cases)
        assert sum(1 for c in all_cases if c["expected"]["error_code"] is None) >= 250
    tunings = {c["settings"]["sequential_tuning"] for c in cases("sequential")}
    assert len(tunings) >= 4
    assert len({c["settings"]["ci_level"] for c in cases("bayesian")}) >= 3


@pytest.mark.parametrize("engine", ENGINES)
def test_scalar_functions_match_gbstats(engine):
    for case in cases(engine):
        assert_matches(run_scalar(case), case["expected"], case["id"])


def _arrays_for(case_list: list[dict[str, Any]]) -> StatsArrays:
    """Each case as its own metric (control, treatment) of one segment, kinds mixed."""
    n_cases = len(case_list)
    values = np.zeros((6, n_cases, 2, 1))
    kinds = []
    for m, case in enumerate(case_list):
        kind = MetricKind(case["kind"])
        kinds.append(kind)
        for v, cell in enumerate((case["control"], case["treatment"])):
            values[0, m, v, 0] = cell["n"]
            for i, field in enumerate(FIELDS_BY_KIND[kind]):
                values[1 + i, m, v, 0] = cell[field]
    return StatsArrays(tuple(kinds), *values)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("relative", [True, False])
def test_vectorized_engine_matches_gbstats_in_one_call(engine, relative):
    """Group the cases by setting and run each group through the vectorized path at once."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for case in cases(engine):
        s = case["settings"]
        if s["relative"] is relative:
            key = (s.get("alpha"), s.get("sequential_tuning"), s.get("ci_level"))
            groups.setdefault(key, []).append(case)
    assert groups
    for (alpha, tuning, ci_level), group in groups.items():
        stats = _arrays_for(group)
        if engine == "bayesian":
            out = bayesian_arrays(stats, relative=relative, ci_level=ci_level)
        else:
            out = frequentist_arrays(
                stats, relative=relative, alpha=alpha, sequential_tuning=tuning
            )
        for m, case in enumerate(group):
            assert_matches(out.result(m, 1, 0), case["expected"], case["id"])


def test_srm_matches_gbstats_check_srm():
    srm_cases = load("srm")["cases"]
    assert len(srm_cases) >= 100
    for case in srm_cases:
        got = srm_p_value(case["observed"], case["weights"])
        assert math.isclose(got, case["expected"], rel_tol=REL, abs_tol=ABS), case


def _pipeline_stats(spec: dict[str, Any]) -> list[StatsArrays]:
    per_metric = []
    for metric in spec["metrics"]:
        kind = MetricKind(metric["kind"])
        arms = metric["arms"]
        values = np.zeros((6, 1, len(arms), len(arms[0])))
        for v, segments in enumerate(arms):
            for s, cell in enumerate(segments):
                values[0, 0, v, s] = cell["n"]
                for i, field in enumerate(FIELDS_BY_KIND[kind]):
                    values[1 + i, 0, v, s] = cell[field]
        per_metric.append(StatsArrays((kind,), *values))
    return per_metric


def test_whole_experiments_match_gbstats_pipeline():
    """Multi-variant, multi-segment experiments through gbstats' own per-metric pipeline."""
    experiments = load("pipeline")["cases"]
    assert {e["spec"]["engine"] for e in experiments} == {"frequentist", "bayesian"}
    checked = 0
    for experiment in experiments:
        spec, expected = experiment["spec"], experiment["expected"]
        engine = spec["engine"]
        for stats, want in zip(_pipeline_stats(spec), expected["metrics"], strict=True):
            out = analyze_experiment(
                stats,
                engines=(engine,),
                relative=spec["relative"],
                alpha=spec["alpha"],
                sequential_tuning=spec["sequential_tuning"],
            )
            res = out.frequentist if engine == "frequentist" else out.bayesian
            assert res is not None
            srm = srm_p_values(np.moveaxis(stats.n[0], 0, -1), [1.0] * stats.shape[1])
            np.testing.assert_allclose(srm, want["srm"], rtol=REL, atol=ABS)
            for s, variations in enumerate(want["segments"]):
                for t, gb in enumerate(variations):
                    r = res.result(0, t + 1, s)
                    ident = f"{engine} {stats.kinds[0]} segment {s} variant {t + 1}"
                    assert r.error_code == gb["error_message"], ident
                    pairs = [
                        (r.ci_low, gb["ci"][0]),
                        (r.ci_high, gb["ci"][1]),
                        (r.control_mean, gb["control_mean"]),
                        (r.treatment_mean, gb["treatment_mean"]),
                    ]
                    if r.ok and r.control_mean > 0:
                        pairs.append((r.estimate, gb["expected"]))
                    if engine == "frequentist":
                        pairs.append((r.p_value, gb["p_value"]))
                    else:
                        pairs += [
                            (r.chance_to_win, gb["chance_to_win"]),
                            (r.risk_control, gb["risk"][0]),
                            (r.risk_treatment, gb["risk"][1]),
                        ]
                    for got, exp in pairs:
                        assert math.isclose(got, exp, rel_tol=REL, abs_tol=ABS), (ident, got, exp)
                    checked += 1
    assert checked >= 100
