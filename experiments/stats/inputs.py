"""Sufficient statistics: the inputs of every method, as validated frozen dataclasses.

Each class holds what one arm (variant) of one metric needs, as SQL aggregates return it:
counts, sums and sums of squares, never individual rows. Construction validates the numbers and
raises :class:`StatsError` with a message naming the field, so bad data fails loudly at the edge.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, TypeAlias

from experiments.stats.errors import StatsError


class MetricKind(StrEnum):
    """The four metric shapes the engine understands."""

    PROPORTION = "proportion"
    MEAN = "mean"
    RATIO = "ratio"
    CUPED = "cuped"


def check_count(value: object, name: str) -> int:
    """Return ``value`` as a non-negative int, or raise :class:`StatsError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StatsError(f"{name} must be a number, got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise StatsError(f"{name} must be finite, got {value!r}")
    if not as_float.is_integer():
        raise StatsError(f"{name} must be a whole number, got {value!r}")
    if as_float < 0:
        raise StatsError(f"{name} must not be negative, got {value!r}")
    return int(value)


def check_real(value: object, name: str, *, non_negative: bool = False) -> float:
    """Return ``value`` as a finite float, or raise :class:`StatsError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StatsError(f"{name} must be a number, got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise StatsError(f"{name} must be finite (not NaN or infinity), got {value!r}")
    if non_negative and as_float < 0:
        raise StatsError(f"{name} must not be negative, got {value!r}")
    return as_float


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _require_empty_sums(obj: object, n: int, fields: tuple[str, ...]) -> None:
    if n == 0:
        for field in fields:
            if getattr(obj, field) != 0:
                raise StatsError(f"{field} must be 0 when n is 0, got {getattr(obj, field)!r}")


@dataclass(frozen=True, slots=True)
class ProportionStats:
    """A conversion-style metric: ``conversions`` of ``n`` units converted (0/1 per unit)."""

    n: int
    conversions: int

    kind: ClassVar[MetricKind] = MetricKind.PROPORTION

    def __post_init__(self) -> None:
        n = check_count(self.n, "n")
        conversions = check_count(self.conversions, "conversions")
        if conversions > n:
            raise StatsError(f"conversions ({conversions}) must not exceed n ({n})")
        _set(self, "n", n)
        _set(self, "conversions", conversions)

    @property
    def mean(self) -> float:
        """The conversion rate (0 when there are no units)."""
        return self.conversions / self.n if self.n else 0.0


@dataclass(frozen=True, slots=True)
class MeanStats:
    """A per-unit numeric metric (revenue, order count): n, sum and sum of squares."""

    n: int
    sum: float
    sum_squares: float

    kind: ClassVar[MetricKind] = MetricKind.MEAN

    def __post_init__(self) -> None:
        n = check_count(self.n, "n")
        _set(self, "n", n)
        _set(self, "sum", check_real(self.sum, "sum"))
        _set(self, "sum_squares", check_real(self.sum_squares, "sum_squares", non_negative=True))
        _require_empty_sums(self, n, ("sum", "sum_squares"))

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0


@dataclass(frozen=True, slots=True)
class CupedStats:
    """A mean metric with a pre-period covariate, for CUPED (regression adjustment).

    ``sum``/``sum_squares`` describe the metric during the experiment, ``pre_sum`` and
    ``pre_sum_squares`` the same units' values before it, and ``sum_product`` is the sum over
    units of metric times covariate.
    """

    n: int
    sum: float
    sum_squares: float
    pre_sum: float
    pre_sum_squares: float
    sum_product: float

    kind: ClassVar[MetricKind] = MetricKind.CUPED

    def __post_init__(self) -> None:
        n = check_count(self.n, "n")
        _set(self, "n", n)
        _set(self, "sum", check_real(self.sum, "sum"))
        _set(self, "sum_squares", check_real(self.sum_squares, "sum_squares", non_negative=True))
        _set(self, "pre_sum", check_real(self.pre_sum, "pre_sum"))
        _set(
            self,
            "pre_sum_squares",
            check_real(self.pre_sum_squares, "pre_sum_squares", non_negative=True),
        )
        _set(self, "sum_product", check_real(self.sum_product, "sum_product"))
        _require_empty_sums(
            self, n, ("sum", "sum_squares", "pre_sum", "pre_sum_squares", "sum_product")
        )

    @property
    def mean(self) -> float:
        """The unadjusted mean of the metric during the experiment."""
        return self.sum / self.n if self.n else 0.0


@dataclass(frozen=True, slots=True)
class RatioStats:
    """A ratio metric (e.g. revenue per order): numerator and denominator sums over n units."""

    n: int
    num_sum: float
    num_sum_squares: float
    den_sum: float
    den_sum_squares: float
    num_den_sum_product: float

    kind: ClassVar[MetricKind] = MetricKind.RATIO

    def __post_init__(self) -> None:
        n = check_count(self.n, "n")
        _set(self, "n", n)
        _set(self, "num_sum", check_real(self.num_sum, "num_sum"))
        _set(
            self,
            "num_sum_squares",
            check_real(self.num_sum_squares, "num_sum_squares", non_negative=True),
        )
        _set(self, "den_sum", check_real(self.den_sum, "den_sum"))
        _set(
            self,
            "den_sum_squares",
            check_real(self.den_sum_squares, "den_sum_squares", non_negative=True),
        )
        _set(
            self, "num_den_sum_product", check_real(self.num_den_sum_product, "num_den_sum_product")
        )
        _require_empty_sums(
            self,
            n,
            ("num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum_product"),
        )

    @property
    def mean(self) -> float:
        """The ratio of sums, num_sum / den_sum (0 when the denominator is 0)."""
        return self.num_sum / self.den_sum if self.den_sum else 0.0


Stats: TypeAlias = ProportionStats | MeanStats | CupedStats | RatioStats

#: The sums each kind carries, in the order of the vectorized arrays
#: (``StatsArrays.sum, sum_squares, other_sum, other_sum_squares, sum_product``).
FIELDS_BY_KIND: dict[MetricKind, tuple[str, ...]] = {
    MetricKind.PROPORTION: ("conversions",),
    MetricKind.MEAN: ("sum", "sum_squares"),
    MetricKind.RATIO: (
        "num_sum",
        "num_sum_squares",
        "den_sum",
        "den_sum_squares",
        "num_den_sum_product",
    ),
    MetricKind.CUPED: ("sum", "sum_squares", "pre_sum", "pre_sum_squares", "sum_product"),
}


def check_same_kind(stats: list[Stats] | tuple[Stats, ...]) -> MetricKind:
    """Return the common kind of ``stats``, or raise if the arms mix metric shapes."""
    if not stats:
        raise StatsError("at least one arm is required")
    kinds = {type(s) for s in stats}
    for s in stats:
        if not isinstance(s, ProportionStats | MeanStats | CupedStats | RatioStats):
            raise StatsError(
                "arms must be ProportionStats, MeanStats, CupedStats or RatioStats, "
                f"got {type(s).__name__}"
            )
    if len(kinds) > 1:
        names = ", ".join(sorted(k.__name__ for k in kinds))
        raise StatsError(f"all arms of a comparison must be the same kind of metric, got {names}")
    return stats[0].kind
