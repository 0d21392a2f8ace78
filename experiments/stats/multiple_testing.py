"""Adjusted p-values for many comparisons, identical to statsmodels' ``multipletests``.

* Holm-Bonferroni (``"holm"``), controls the family-wise error rate: sort the m p-values
  ascending, multiply the i-th smallest (1-based) by ``m - i + 1``, take the running maximum,
  cap at 1.
* Benjamini-Hochberg (``"bh"``), controls the false discovery rate: multiply the i-th smallest
  by ``m / i``, take the running minimum from the largest down, cap at 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from experiments.stats.errors import StatsError

AdjustMethod = Literal["holm", "bh"]
_ALIASES = {"holm": "holm", "bh": "bh", "fdr_bh": "bh"}


def adjust_p_values(p_values: Sequence[float], method: AdjustMethod) -> list[float]:
    """Adjusted p-values in the input order (``statsmodels ... multipletests(...)[1]``)."""
    key = _ALIASES.get(method) if isinstance(method, str) else None
    if key is None:
        raise StatsError(f"method must be 'holm' or 'bh', got {method!r}")
    try:
        p = np.asarray(p_values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"p_values must be numbers: {exc}") from exc
    if p.ndim != 1:
        raise StatsError("p_values must be a flat sequence")
    if p.size == 0:
        return []
    if not np.isfinite(p).all():
        raise StatsError("p_values must be finite (not NaN or infinity)")
    if ((p < 0) | (p > 1)).any():
        raise StatsError("p_values must lie between 0 and 1")

    order = np.argsort(p)
    p_sorted = np.take(p, order)
    m = len(p_sorted)
    if key == "holm":
        corrected = np.maximum.accumulate(p_sorted * np.arange(m, 0, -1))
    else:
        ecdf_factor = np.arange(1, m + 1) / float(m)
        corrected = np.minimum.accumulate((p_sorted / ecdf_factor)[::-1])[::-1]
    corrected[corrected > 1] = 1
    out = np.empty_like(corrected)
    out[order] = corrected
    return [float(x) for x in out]
