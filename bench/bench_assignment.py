"""Benchmark the vectorized GrowthBook-compatible assignment path.

    .venv/bin/python bench/bench_assignment.py

Times ``assign_many`` / ``hash_many`` on 1,000,000 UUID-like ids and 1,000,000 numeric ids
(median of several runs) against the scalar pure-Python ``assign`` / ``hash_unit`` loop on a
sample, measured in the same run. Prints a Markdown table
``benchmark | figure | unit | baseline | ratio`` (figure and baseline in units per second;
ratio = figure / baseline) and exits 0. The issue's target is >= 500,000 units/s.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.assignment import assign, assign_many, hash_many, hash_unit

N_UNITS = 1_000_000
SCALAR_SAMPLE = 50_000
RUNS = 5
TARGET_PER_S = 500_000


def _median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _rate(count: int, seconds: float) -> float:
    return count / seconds


def main() -> int:
    rng = random.Random(20240601)
    uuids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(N_UNITS)]
    numeric = [str(rng.randrange(1, 10**9)) for _ in range(N_UNITS)]
    namespace = ("checkout", 0.0, 0.5)

    cases: list[tuple[str, Callable[[list[str]], object], Callable[[str], object], list[str]]] = [
        (
            "assign_many, 1M UUID ids, 2 variants",
            lambda ids: assign_many(seed="exp-bench", unit_ids=ids, num_variations=2),
            lambda u: assign(seed="exp-bench", unit_id=u, num_variations=2),
            uuids,
        ),
        (
            "assign_many, 1M numeric ids, 2 variants",
            lambda ids: assign_many(seed="exp-bench", unit_ids=ids, num_variations=2),
            lambda u: assign(seed="exp-bench", unit_id=u, num_variations=2),
            numeric,
        ),
        (
            "assign_many, 1M UUID ids, 3 weighted + namespace",
            lambda ids: assign_many(
                seed="exp-bench",
                unit_ids=ids,
                weights=[0.2, 0.3, 0.5],
                coverage=0.8,
                namespace=namespace,
            ),
            lambda u: assign(
                seed="exp-bench",
                unit_id=u,
                weights=[0.2, 0.3, 0.5],
                coverage=0.8,
                namespace=namespace,
            ),
            uuids,
        ),
        (
            "hash_many v2, 1M UUID ids",
            lambda ids: hash_many("exp-bench", ids, 2),
            lambda u: hash_unit("exp-bench", u, 2),
            uuids,
        ),
        (
            "hash_many v1, 1M numeric ids",
            lambda ids: hash_many("exp-bench", ids, 1),
            lambda u: hash_unit("exp-bench", u, 1),
            numeric,
        ),
    ]

    rows = []
    slowest = float("inf")
    for name, vectorized, scalar, ids in cases:
        vectorized(ids[:10_000])  # warm-up
        sample = ids[:SCALAR_SAMPLE]
        baseline = _rate(
            len(sample), _median_seconds(lambda s=sample, f=scalar: [f(u) for u in s], 3)
        )
        figure = _rate(len(ids), _median_seconds(lambda i=ids, f=vectorized: f(i), RUNS))
        if name.startswith("assign_many"):
            slowest = min(slowest, figure)
        rows.append(
            f"| {name} | {figure:,.0f} | units/s | {baseline:,.0f} | {figure / baseline:.1f}x |"
        )

    print("| benchmark | figure | unit | baseline | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print()
    print(
        f"Figure: median of {RUNS} runs over {N_UNITS:,} ids; baseline: scalar pure-Python "
        f"loop over {SCALAR_SAMPLE:,} of the same ids (median of 3). Slowest assign_many: "
        f"{slowest:,.0f} units/s (target {TARGET_PER_S:,}: "
        f"{'met' if slowest >= TARGET_PER_S else 'NOT met'})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
