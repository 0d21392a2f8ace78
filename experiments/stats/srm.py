"""Sample-ratio mismatch: chi-square goodness of fit of unit counts (gbstats ``check_srm``).

With observed counts ``o_i`` and expected weights ``w_i`` (any positive scale)::

    e_i = w_i / sum(w) * sum(o)
    X^2 = sum over arms with w_i > 0 of (o_i - e_i)^2 / e_i
    p   = P(chi2 with k - 1 degrees of freedom > X^2)

A p-value below :data:`SRM_THRESHOLD` (0.001) means the split is broken: do not trust the
experiment's results until the cause is found.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from experiments.stats.errors import StatsError

SRM_THRESHOLD = 0.001


def _check_weights(weights: Sequence[float] | ArrayLike, k: int) -> NDArray[np.float64]:
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"weights must be numbers: {exc}") from exc
    if w.ndim != 1:
        raise StatsError("weights must be a flat sequence, one per variant")
    if len(w) != k:
        raise StatsError(f"got {k} observed counts but {len(w)} weights")
    if not np.isfinite(w).all():
        raise StatsError("weights must be finite (not NaN or infinity)")
    if (w < 0).any():
        raise StatsError("weights must not be negative")
    if w.sum() <= 0:
        raise StatsError("weights must sum to a positive number")
    return w


def srm_p_values(observed: ArrayLike, weights: Sequence[float] | ArrayLike) -> NDArray[np.float64]:
    """Vectorized :func:`srm_p_value`: ``observed`` is shaped (..., variants)."""
    try:
        obs = np.asarray(observed, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"observed counts must be numbers: {exc}") from exc
    if obs.ndim < 1:
        raise StatsError("observed must be a sequence of counts, one per variant")
    k = obs.shape[-1]
    if k < 2:
        raise StatsError("a sample-ratio check needs at least two variants")
    w = _check_weights(weights, k)
    if not np.isfinite(obs).all():
        raise StatsError("observed counts must be finite (not NaN or infinity)")
    if (obs < 0).any() or (obs != np.floor(obs)).any():
        raise StatsError("observed counts must be non-negative whole numbers")

    total = obs.sum(axis=-1, keepdims=True)
    expected = w / w.sum() * total
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(w > 0, (obs - expected) ** 2 / expected, 0.0)
    x = terms.sum(axis=-1)
    p = sps.chi2.sf(x, k - 1)
    return np.where(total[..., 0] > 0, p, 1.0)


def srm_p_value(observed: Sequence[int], weights: Sequence[float]) -> float:
    """P-value of the chi-square test that ``observed`` unit counts follow ``weights``.

    Arms with weight 0 are skipped, as in gbstats; no units at all gives 1.0.
    """
    p_value = srm_p_values(observed, weights)
    if p_value.ndim != 0:
        raise StatsError("observed must be a flat sequence of counts, one per variant")
    return float(p_value)


def has_srm(
    observed: Sequence[int], weights: Sequence[float], *, threshold: float = SRM_THRESHOLD
) -> bool:
    """True when the split is significantly off (p-value below ``threshold``)."""
    return srm_p_value(observed, weights) < threshold
