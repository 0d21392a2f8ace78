"""A/A calibration and power of the statistics engine (seeded, a few seconds).

    .venv/bin/python bench/calibration.py [--simulations 10000] [--days 14] [--seed 20240601]

Prints a Markdown table (pasted into docs/statistics.md) and exits 1 if the fixed-horizon
false-positive rate leaves 4-6% or the sequential test's exceeds 5%.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.stats.calibration import (
    CalibrationConfig,
    describe,
    format_table,
    run_calibration,
)


def main(argv: list[str] | None = None) -> int:
    defaults = CalibrationConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=defaults.n_simulations)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.simulations < 2000:
        parser.error("use at least 2,000 simulations")
    config = replace(defaults, n_simulations=args.simulations, days=args.days, seed=args.seed)
    start = time.perf_counter()
    rows = run_calibration(config)
    elapsed = time.perf_counter() - start
    print(f"Calibration: {describe(config)}.\n")
    print(format_table(rows, config))
    print(f"\n({elapsed:.1f} s)")
    failed = [row for row in rows if row.passed is False]
    for row in failed:
        print(f"FAILED: {row.scenario} / {row.method}: {row.rate:.2%} (target {row.target})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
