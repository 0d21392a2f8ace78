"""GrowthBook's per-metric pipeline (gbstats 0.8.0), run in its own virtual environment.

gbstats pins numpy 1.26 and pandas 1.5, so it can never share the project's environment. This
file has two halves:

* :func:`ensure_gbstats_python` (stdlib only, called from the project's venv) creates
  ``bench/.venvs/gbstats`` with ``gbstats==0.8.0`` if it is missing and returns its python;
* run as a script *inside* that venv, it reads an experiment spec (JSON), runs gbstats'
  ``process_single_metric`` once per metric, timing each call, and writes the results::

      bench/.venvs/gbstats/bin/python bench/gbstats_pipeline.py SPEC.json OUT.json

Spec: ``{"engine": "frequentist"|"bayesian", "relative": bool, "alpha": float,
"sequential_tuning": float|null, "metrics": [{"kind": ..., "arms": [[{field: value}, ...
per segment], ... per variant]}]}`` with the field names of ``experiments.stats``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

GBSTATS_VERSION = "0.8.0"
VENV_DIR = Path(__file__).resolve().parent / ".venvs" / "gbstats"


def ensure_gbstats_python(venv_dir: Path = VENV_DIR) -> tuple[Path | None, str]:
    """Return (python of a venv with gbstats installed, "") or (None, reason)."""
    python = venv_dir / "bin" / "python"

    def has_gbstats() -> bool:
        if not python.exists():
            return False
        check = (
            "import gbstats, importlib.metadata as m; "
            f"assert m.version('gbstats') == '{GBSTATS_VERSION}'"
        )
        return subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0

    if has_gbstats():
        return python, ""
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv_dir)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"gbstats=={GBSTATS_VERSION}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        tail = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else []
        return None, f"could not create {venv_dir}: {exc} {' '.join(tail)}".strip()
    if has_gbstats():
        return python, ""
    return None, f"gbstats=={GBSTATS_VERSION} is not importable in {venv_dir}"


# --------------------------------------------------------------------------- inside the venv

# Our field names -> gbstats' query-row columns, per kind.
ROW_COLUMNS: dict[str, dict[str, str]] = {
    "proportion": {"conversions": "main_sum"},
    "mean": {"sum": "main_sum", "sum_squares": "main_sum_squares"},
    "ratio": {
        "num_sum": "main_sum",
        "num_sum_squares": "main_sum_squares",
        "den_sum": "denominator_sum",
        "den_sum_squares": "denominator_sum_squares",
        "num_den_sum_product": "main_denominator_sum_product",
    },
    "cuped": {
        "sum": "main_sum",
        "sum_squares": "main_sum_squares",
        "pre_sum": "covariate_sum",
        "pre_sum_squares": "covariate_sum_squares",
        "sum_product": "main_covariate_sum_product",
    },
}


def metric_settings(kind: str, metric_id: str) -> dict[str, Any]:
    base = {"id": metric_id, "name": metric_id}
    if kind == "proportion":
        return {**base, "statistic_type": "mean", "main_metric_type": "binomial"}
    if kind == "mean":
        return {**base, "statistic_type": "mean", "main_metric_type": "count"}
    if kind == "ratio":
        return {
            **base,
            "statistic_type": "ratio",
            "main_metric_type": "count",
            "denominator_metric_type": "count",
        }
    if kind == "cuped":
        return {
            **base,
            "statistic_type": "mean_ra",
            "main_metric_type": "count",
            "covariate_metric_type": "count",
        }
    raise ValueError(f"unknown kind {kind!r}")


def metric_rows(kind: str, arms: list[list[dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    for v, segments in enumerate(arms):
        for s, cell in enumerate(segments):
            row: dict[str, Any] = {
                "dimension": f"s{s}",
                "variation": str(v),
                "users": cell["n"],
                "count": cell["n"],
                "main_sum": 0.0,
                "main_sum_squares": 0.0,
            }
            for ours, theirs in ROW_COLUMNS[kind].items():
                row[theirs] = cell[ours]
            if kind == "proportion":
                row["main_sum_squares"] = cell["conversions"]
            rows.append(row)
    return rows


def run(spec: dict[str, Any]) -> dict[str, Any]:
    # gbstats overflows harmlessly in exp() for huge effects; keep the benchmark output clean.
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    from gbstats.gbstats import process_single_metric
    from gbstats.models.settings import (
        AnalysisSettingsForStatsEngine,
        MetricSettingsForStatsEngine,
    )

    engine = spec["engine"]
    tuning = spec.get("sequential_tuning")
    out_metrics = []
    elapsed = []
    for i, metric in enumerate(spec["metrics"]):
        arms = metric["arms"]
        n_variants, n_segments = len(arms), len(arms[0])
        analysis = AnalysisSettingsForStatsEngine(
            var_names=[f"v{v}" for v in range(n_variants)],
            var_ids=[str(v) for v in range(n_variants)],
            weights=[1 / n_variants] * n_variants,
            stats_engine=engine,
            sequential_testing_enabled=tuning is not None,
            sequential_tuning_parameter=tuning if tuning is not None else 5000,
            difference_type="relative" if spec.get("relative", True) else "absolute",
            alpha=spec.get("alpha", 0.05),
            max_dimensions=n_segments + 1,
        )
        settings = MetricSettingsForStatsEngine(**metric_settings(metric["kind"], f"m{i}"))
        rows = metric_rows(metric["kind"], arms)
        start = time.perf_counter()
        result = process_single_metric(rows=rows, metric=settings, analyses=[analysis])
        elapsed.append(time.perf_counter() - start)
        dims = {}
        for dim in result.analyses[0].dimensions:
            variations = []
            for var in dim.variations[1:]:
                variations.append(
                    {
                        "expected": var.expected,
                        "ci": list(var.ci),
                        "p_value": getattr(var, "pValue", None),
                        "chance_to_win": getattr(var, "chanceToWin", None),
                        "risk": list(var.risk) if hasattr(var, "risk") else None,
                        "error_message": var.errorMessage,
                        "control_mean": dim.variations[0].stats.mean,
                        "treatment_mean": var.stats.mean,
                    }
                )
            dims[dim.dimension] = {"srm": dim.srm, "variations": variations}
        out_metrics.append(
            {
                "segments": [dims[f"s{s}"]["variations"] for s in range(n_segments)],
                "srm": [dims[f"s{s}"]["srm"] for s in range(n_segments)],
            }
        )
    return {"seconds_per_metric": elapsed, "metrics": out_metrics}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    Path(argv[2]).write_text(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
