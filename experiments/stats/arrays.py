"""Arrays of sufficient statistics and the per-arm moments every test is built on.

A :class:`StatsArrays` holds a whole experiment: arrays shaped ``(metrics, variants, segments)``
with variant 0 the control. :func:`pair_moments` turns it into the means and variances of every
treatment-versus-control pair, with exactly the formulas of gbstats 0.8.0's
``ProportionStatistic``, ``SampleMeanStatistic``, ``RatioStatistic`` (delta method) and
``RegressionAdjustedStatistic`` with ``compute_theta`` (CUPED, theta pooled over both arms).
This module is the single implementation of those formulas; the scalar functions call it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from experiments.stats.errors import StatsError
from experiments.stats.inputs import (
    FIELDS_BY_KIND,
    CupedStats,
    MeanStats,
    MetricKind,
    ProportionStats,
    RatioStats,
    Stats,
    check_same_kind,
)

FloatArray = NDArray[np.float64]

ALL_ARMS = slice(None)
CONTROL = slice(0, 1)
TREATMENTS = slice(1, None)

_KIND_CODES: dict[MetricKind, int] = {kind: code for code, kind in enumerate(MetricKind)}
_STAT_CLASSES: dict[MetricKind, type] = {
    MetricKind.PROPORTION: ProportionStats,
    MetricKind.MEAN: MeanStats,
    MetricKind.RATIO: RatioStats,
    MetricKind.CUPED: CupedStats,
}


def _as_3d(values: ArrayLike, name: str, *, copy: bool = False) -> FloatArray:
    try:
        array = np.array(values, dtype=np.float64, copy=copy or None)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"{name} must be numeric: {exc}") from exc
    if array.ndim != 3:
        raise StatsError(
            f"{name} must be shaped (metrics, variants, segments), got {array.ndim} dimension(s)"
        )
    return array


def _first_bad(mask: NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


@dataclass(frozen=True, eq=False)
class StatsArrays:
    """Sufficient statistics for many metrics, variants and segments at once.

    All arrays are float64 and shaped ``(metrics, variants, segments)``; variant 0 is the
    control. ``kinds`` gives each metric's shape. The meaning of the sums depends on the kind:

    ===========  ===========  =============  ============  ==================  ===================
    kind         sum          sum_squares    other_sum     other_sum_squares   sum_product
    ===========  ===========  =============  ============  ==================  ===================
    proportion   conversions  (unused, 0)    (unused, 0)   (unused, 0)         (unused, 0)
    mean         sum          sum_squares    (unused, 0)   (unused, 0)         (unused, 0)
    ratio        num_sum      num_sum_sq.    den_sum       den_sum_squares     num_den_sum_product
    cuped        sum          sum_squares    pre_sum       pre_sum_squares     sum_product
    ===========  ===========  =============  ============  ==================  ===================

    Build one with :meth:`proportion`, :meth:`mean`, :meth:`ratio`, :meth:`cuped`,
    :meth:`from_stats` or :meth:`concat`; construction validates every value.
    """

    kinds: tuple[MetricKind, ...]
    n: FloatArray
    sum: FloatArray
    sum_squares: FloatArray
    other_sum: FloatArray
    other_sum_squares: FloatArray
    sum_product: FloatArray

    def __post_init__(self) -> None:
        names = ("n", "sum", "sum_squares", "other_sum", "other_sum_squares", "sum_product")
        # Private read-only copies: the caller's arrays are never frozen or aliased.
        arrays = {name: _as_3d(getattr(self, name), name, copy=True) for name in names}
        shape = arrays["n"].shape
        for name, array in arrays.items():
            if array.shape != shape:
                raise StatsError(f"{name} has shape {array.shape}, expected {shape} like n")
            bad = ~np.isfinite(array)
            if bad.any():
                raise StatsError(
                    f"{name} must be finite (not NaN or infinity) at {_first_bad(bad)}"
                )
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        kinds = tuple(MetricKind(k) for k in self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if len(kinds) != shape[0]:
            raise StatsError(f"kinds has {len(kinds)} entries for {shape[0]} metric(s)")
        if shape[1] < 2:
            raise StatsError("at least two variants (a control and a treatment) are required")
        n = arrays["n"]
        for bad, message in (
            (n < 0, "n must not be negative"),
            (n != np.floor(n), "n must be a whole number"),
            (arrays["sum_squares"] < 0, "sum_squares must not be negative"),
            (arrays["other_sum_squares"] < 0, "other_sum_squares must not be negative"),
        ):
            if bad.any():
                raise StatsError(f"{message} at {_first_bad(bad)}")
        empty = (n == 0) & (
            (arrays["sum"] != 0)
            | (arrays["sum_squares"] != 0)
            | (arrays["other_sum"] != 0)
            | (arrays["other_sum_squares"] != 0)
            | (arrays["sum_product"] != 0)
        )
        if empty.any():
            raise StatsError(f"sums must be 0 where n is 0, at {_first_bad(empty)}")
        is_prop = self.kind_mask(MetricKind.PROPORTION)
        conv = arrays["sum"]
        bad = is_prop & ((conv < 0) | (conv > n) | (conv != np.floor(conv)))
        if bad.any():
            raise StatsError(
                f"conversions must be whole numbers between 0 and n, at {_first_bad(bad)}"
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def proportion(cls, n: ArrayLike, conversions: ArrayLike) -> StatsArrays:
        n_arr = _as_3d(n, "n")
        zeros = np.zeros_like(n_arr)
        return cls(
            (MetricKind.PROPORTION,) * n_arr.shape[0],
            n_arr,
            _as_3d(conversions, "conversions"),
            zeros,
            zeros,
            zeros,
            zeros,
        )

    @classmethod
    def mean(cls, n: ArrayLike, sum: ArrayLike, sum_squares: ArrayLike) -> StatsArrays:
        n_arr = _as_3d(n, "n")
        zeros = np.zeros_like(n_arr)
        return cls(
            (MetricKind.MEAN,) * n_arr.shape[0],
            n_arr,
            _as_3d(sum, "sum"),
            _as_3d(sum_squares, "sum_squares"),
            zeros,
            zeros,
            zeros,
        )

    @classmethod
    def ratio(
        cls,
        n: ArrayLike,
        num_sum: ArrayLike,
        num_sum_squares: ArrayLike,
        den_sum: ArrayLike,
        den_sum_squares: ArrayLike,
        num_den_sum_product: ArrayLike,
    ) -> StatsArrays:
        n_arr = _as_3d(n, "n")
        return cls(
            (MetricKind.RATIO,) * n_arr.shape[0],
            n_arr,
            _as_3d(num_sum, "num_sum"),
            _as_3d(num_sum_squares, "num_sum_squares"),
            _as_3d(den_sum, "den_sum"),
            _as_3d(den_sum_squares, "den_sum_squares"),
            _as_3d(num_den_sum_product, "num_den_sum_product"),
        )

    @classmethod
    def cuped(
        cls,
        n: ArrayLike,
        sum: ArrayLike,
        sum_squares: ArrayLike,
        pre_sum: ArrayLike,
        pre_sum_squares: ArrayLike,
        sum_product: ArrayLike,
    ) -> StatsArrays:
        n_arr = _as_3d(n, "n")
        return cls(
            (MetricKind.CUPED,) * n_arr.shape[0],
            n_arr,
            _as_3d(sum, "sum"),
            _as_3d(sum_squares, "sum_squares"),
            _as_3d(pre_sum, "pre_sum"),
            _as_3d(pre_sum_squares, "pre_sum_squares"),
            _as_3d(sum_product, "sum_product"),
        )

    @classmethod
    def concat(cls, parts: Sequence[StatsArrays]) -> StatsArrays:
        """Stack several StatsArrays (e.g. of different kinds) along the metric axis."""
        if not parts:
            raise StatsError("concat needs at least one StatsArrays")
        shape = parts[0].n.shape[1:]
        for part in parts:
            if part.n.shape[1:] != shape:
                raise StatsError(
                    f"cannot concatenate: variants x segments {part.n.shape[1:]} != {shape}"
                )
        fields = ("n", "sum", "sum_squares", "other_sum", "other_sum_squares", "sum_product")
        stacked = {f: np.concatenate([getattr(p, f) for p in parts], axis=0) for f in fields}
        kinds = tuple(k for p in parts for k in p.kinds)
        return cls(kinds, **stacked)

    @classmethod
    def from_stats(cls, grid: Sequence[Sequence[Sequence[Stats]]]) -> StatsArrays:
        """Build from nested lists ``grid[metric][variant][segment]`` of stats dataclasses."""
        try:
            n_metrics = len(grid)
            n_variants = len(grid[0])
            n_segments = len(grid[0][0])
        except (TypeError, IndexError) as exc:
            raise StatsError("grid must be nested as [metric][variant][segment]") from exc
        shape = (n_metrics, n_variants, n_segments)
        values = np.zeros((6, *shape))
        kinds: list[MetricKind] = []
        for m, variants in enumerate(grid):
            if len(variants) != n_variants:
                raise StatsError(f"metric {m} has {len(variants)} variants, expected {n_variants}")
            flat = [s for segments in variants for s in segments]
            for v, segments in enumerate(variants):
                if len(segments) != n_segments:
                    raise StatsError(
                        f"metric {m} variant {v} has {len(segments)} segments, "
                        f"expected {n_segments}"
                    )
            kind = check_same_kind(flat)
            kinds.append(kind)
            fields = FIELDS_BY_KIND[kind]
            for v, segments in enumerate(variants):
                for s, stat in enumerate(segments):
                    values[0, m, v, s] = stat.n
                    for i, field in enumerate(fields):
                        values[1 + i, m, v, s] = getattr(stat, field)
        return cls(tuple(kinds), *values)

    # ------------------------------------------------------------------ helpers
    @property
    def shape(self) -> tuple[int, int, int]:
        n_metrics, n_variants, n_segments = self.n.shape
        return n_metrics, n_variants, n_segments

    def kind_mask(self, kind: MetricKind) -> NDArray[np.bool_]:
        """Boolean array shaped (metrics, 1, 1): True for metrics of ``kind``."""
        code = _KIND_CODES[kind]
        codes = np.array([_KIND_CODES[k] for k in self.kinds], dtype=np.int8)
        return (codes == code)[:, None, None]

    def stats_at(self, metric: int, variant: int, segment: int) -> Stats:
        """The dataclass for one cell (mainly for tests and display)."""
        kind = self.kinds[metric]
        idx = (metric, variant, segment)
        sums = (
            self.sum[idx],
            self.sum_squares[idx],
            self.other_sum[idx],
            self.other_sum_squares[idx],
            self.sum_product[idx],
        )
        fields = FIELDS_BY_KIND[kind]
        return _STAT_CLASSES[kind](int(self.n[idx]), *sums[: len(fields)])


def stats_arrays_for_arms(arms: Sequence[Stats]) -> StatsArrays:
    """A (1, arms, 1) StatsArrays from a list of arms, control first."""
    return StatsArrays.from_stats([[[arm] for arm in arms]])


# ---------------------------------------------------------------------- moments


def _div(num: FloatArray, den: FloatArray, ok: NDArray[np.bool_]) -> FloatArray:
    """``num / den`` where ``ok``, else 0 (no warnings)."""
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape, ok.shape))
    np.divide(num, den, out=out, where=np.broadcast_to(ok, out.shape))
    return out


def _sample_mean(n: FloatArray, total: FloatArray) -> FloatArray:
    """SampleMeanStatistic.mean: sum / n, or 0 when n == 0."""
    return _div(total, n, n != 0)


def _sample_variance(n: FloatArray, total: FloatArray, squares: FloatArray) -> FloatArray:
    """SampleMeanStatistic.variance: (sum_squares - sum^2 / n) / (n - 1), or 0 when n <= 1."""
    ok = n > 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, (squares - np.power(total, 2) / n) / (n - 1), 0.0)


def _sample_covariance(
    n: FloatArray, x_sum: FloatArray, y_sum: FloatArray, xy_sum: FloatArray
) -> FloatArray:
    """(sum of products - x_sum * y_sum / n) / (n - 1), or 0 when n <= 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 1, (xy_sum - x_sum * y_sum / n) / (n - 1), 0.0)


@dataclass(frozen=True, eq=False)
class ArmMoments:
    """Per-arm quantities used by the tests (broadcastable arrays).

    ``mean`` is the (possibly CUPED-adjusted) mean, ``unadjusted_mean`` the raw one,
    ``variance`` the per-unit variance the standard error divides by ``n``.
    """

    n: FloatArray
    mean: FloatArray
    unadjusted_mean: FloatArray
    variance: FloatArray


def _theta_from_totals(
    n: FloatArray,
    post_sum: FloatArray,
    post_squares: FloatArray,
    pre_sum: FloatArray,
    pre_squares: FloatArray,
    products: FloatArray,
) -> FloatArray:
    """gbstats' ``compute_theta`` on pooled sums: cov(post, pre) / var(pre), or 0 when either
    pooled variance is 0."""
    joint_post_var = _sample_variance(n, post_sum, post_squares)
    joint_pre_var = _sample_variance(n, pre_sum, pre_squares)
    joint_cov = _sample_covariance(n, post_sum, pre_sum, products)
    return _div(joint_cov, joint_pre_var, (joint_pre_var != 0) & (joint_post_var != 0))


def cuped_theta(stats: StatsArrays, arms: slice = ALL_ARMS) -> FloatArray:
    """CUPED theta pooled over ``arms`` (shape (metrics, 1, segments))."""
    sel = (slice(None), arms, slice(None))

    def pooled(values: FloatArray) -> FloatArray:
        return values[sel].sum(axis=1, keepdims=True)

    return _theta_from_totals(
        pooled(stats.n),
        pooled(stats.sum),
        pooled(stats.sum_squares),
        pooled(stats.other_sum),
        pooled(stats.other_sum_squares),
        pooled(stats.sum_product),
    )


def arm_moments(
    stats: StatsArrays, arms: slice = ALL_ARMS, *, theta: FloatArray | None = None
) -> ArmMoments:
    """Means and variances of the arms ``stats.<field>[:, arms, :]``.

    ``theta`` is the CUPED coefficient for cuped metrics (broadcastable); when omitted it is
    pooled over the selected arms.
    """
    sel = (slice(None), arms, slice(None))
    n = stats.n[sel]
    x_sum = stats.sum[sel]
    x_sq = stats.sum_squares[sel]
    y_sum = stats.other_sum[sel]
    y_sq = stats.other_sum_squares[sel]
    xy = stats.sum_product[sel]

    mean = _sample_mean(n, x_sum)
    unadjusted = mean
    variance = np.zeros_like(mean)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        is_prop = stats.kind_mask(MetricKind.PROPORTION)
        if is_prop.any():
            # ProportionStatistic.variance: p (1 - p)
            variance = np.where(is_prop, mean * (1 - mean), variance)

        is_mean = stats.kind_mask(MetricKind.MEAN)
        if is_mean.any():
            variance = np.where(is_mean, _sample_variance(n, x_sum, x_sq), variance)

        is_ratio = stats.kind_mask(MetricKind.RATIO)
        if is_ratio.any():
            # RatioStatistic: mean = num_sum / den_sum, delta-method variance.
            m_mean = mean
            d_mean = _sample_mean(n, y_sum)
            m_var = _sample_variance(n, x_sum, x_sq)
            d_var = _sample_variance(n, y_sum, y_sq)
            cov = _sample_covariance(n, x_sum, y_sum, xy)
            ratio_var = (
                m_var / np.power(d_mean, 2)
                - 2 * cov * m_mean / np.power(d_mean, 3)
                + np.power(m_mean, 2) * d_var / np.power(d_mean, 4)
            )
            ratio_var = np.where((d_mean == 0) | (n <= 1), 0.0, ratio_var)
            ratio_mean = _div(x_sum, y_sum, y_sum != 0)
            variance = np.where(is_ratio, ratio_var, variance)
            mean = np.where(is_ratio, ratio_mean, mean)
            unadjusted = np.where(is_ratio, ratio_mean, unadjusted)

        is_cuped = stats.kind_mask(MetricKind.CUPED)
        if is_cuped.any():
            # RegressionAdjustedStatistic with a pooled theta (compute_theta).
            if theta is None:
                theta = cuped_theta(stats, arms)
            post_mean = mean
            pre_mean = _sample_mean(n, y_sum)
            post_var = _sample_variance(n, x_sum, x_sq)
            pre_var = _sample_variance(n, y_sum, y_sq)
            cov = _sample_covariance(n, x_sum, y_sum, xy)
            adj_var = post_var + np.power(theta, 2) * pre_var - 2 * theta * cov
            adj_var = np.where(n <= 1, 0.0, adj_var)
            variance = np.where(is_cuped, adj_var, variance)
            mean = np.where(is_cuped, post_mean - theta * pre_mean, mean)

    return ArmMoments(n=n, mean=mean, unadjusted_mean=unadjusted, variance=variance)


@dataclass(frozen=True, eq=False)
class PairMoments:
    """Control (``a``, shape (M, 1, S)) and treatments (``b``, shape (M, V-1, S)) moments."""

    a: ArmMoments
    b: ArmMoments

    @property
    def shape(self) -> tuple[int, ...]:
        return self.b.mean.shape


def pair_moments(stats: StatsArrays) -> PairMoments:
    """Moments of every treatment and of the control, CUPED theta pooled per pair."""
    theta = None
    if stats.kind_mask(MetricKind.CUPED).any():
        # compute_theta pools exactly two arms: the control and this treatment.
        def pair_sum(values: FloatArray) -> FloatArray:
            return values[:, CONTROL, :] + values[:, TREATMENTS, :]

        theta = _theta_from_totals(
            pair_sum(stats.n),
            pair_sum(stats.sum),
            pair_sum(stats.sum_squares),
            pair_sum(stats.other_sum),
            pair_sum(stats.other_sum_squares),
            pair_sum(stats.sum_product),
        )
    return PairMoments(
        a=arm_moments(stats, CONTROL, theta=theta), b=arm_moments(stats, TREATMENTS, theta=theta)
    )
