"""Run every benchmark under bench/ and print one combined table.

Each ``bench/bench_*.py`` is a standalone script that prints a Markdown table with the columns
``benchmark | figure | unit | baseline | ratio``, where the baseline is measured in the same
run (these machines are shared and noisy, so absolute figures alone mean little).

    python bench/run.py                 # all benchmarks
    python bench/run.py stats ingest    # only bench_stats.py and bench_ingest.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = "| benchmark | figure | unit | baseline | ratio |"


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    rows: list[str] = []
    failed: list[str] = []
    for script in scripts:
        print(f"\n## {script.stem}\n", flush=True)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        print(proc.stdout, end="", flush=True)
        print(f"\n({script.name}: {time.perf_counter() - started:.1f} s, exit {proc.returncode})")
        if proc.returncode:
            failed.append(script.name)
        for line in proc.stdout.splitlines():
            if line.startswith("|") and line != HEADER and not set(line) <= set("|- :"):
                rows.append(line)
    print("\n# All benchmarks\n")
    print(HEADER)
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
