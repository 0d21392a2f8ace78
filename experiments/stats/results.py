"""Result types: one comparison (TestResult) and many at once (ComparisonArrays)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from experiments.stats.errors import ERROR_CODE_NAMES, ERROR_MESSAGES, OK, StatsError

Method = Literal["frequentist", "sequential", "bayesian"]


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of one treatment-versus-control comparison.

    ``estimate``, ``ci_low`` and ``ci_high`` are the relative lift (treatment - control) /
    control when ``relative`` is True, else the absolute difference. Frequentist results set
    ``p_value``; Bayesian results set ``chance_to_win``, ``risk_control`` (expected loss of
    keeping the control) and ``risk_treatment`` (expected loss of shipping the treatment).
    When the data are degenerate, ``error`` explains why (``error_code`` is gbstats' name) and
    the estimate, interval and standard error are 0 (p-value 1, chance to win 0.5, risks 0).
    """

    __test__ = False  # not a pytest test class

    control_mean: float
    treatment_mean: float
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float | None = None
    chance_to_win: float | None = None
    risk_control: float | None = None
    risk_treatment: float | None = None
    error: str | None = None
    error_code: str | None = None
    std_error: float = 0.0
    relative: bool = True
    method: Method = "frequentist"

    @property
    def ok(self) -> bool:
        return self.error is None


FloatArray = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class ComparisonArrays:
    """Every treatment-versus-control comparison of a :class:`StatsArrays`, as arrays.

    Each array is shaped ``(metrics, variants - 1, segments)``: position ``t`` on the second
    axis is variant ``t + 1`` against the control (variant 0). ``p_value`` is set for
    frequentist methods, ``chance_to_win``/``risk_*`` for Bayesian ones. ``error_code`` holds
    0 where the comparison is valid, else one of the codes in :mod:`experiments.stats.errors`.
    """

    method: Method
    relative: bool
    control_mean: FloatArray
    treatment_mean: FloatArray
    estimate: FloatArray
    ci_low: FloatArray
    ci_high: FloatArray
    std_error: FloatArray
    error_code: NDArray[np.int8]
    p_value: FloatArray | None = None
    chance_to_win: FloatArray | None = None
    risk_control: FloatArray | None = None
    risk_treatment: FloatArray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.estimate.shape

    @property
    def error(self) -> NDArray[np.bool_]:
        """True where the comparison is degenerate (estimate and interval are then 0)."""
        return self.error_code != OK

    def result(self, metric: int = 0, variant: int = 1, segment: int = 0) -> TestResult:
        """The :class:`TestResult` of ``variant`` (1 = first treatment) in one metric/segment."""
        if variant < 1 or variant > self.shape[1]:
            raise StatsError(f"variant must be between 1 and {self.shape[1]}, got {variant}")
        idx = (metric, variant - 1, segment)

        def get(array: FloatArray | None) -> float | None:
            return None if array is None else float(array[idx])

        code = int(self.error_code[idx])
        return TestResult(
            control_mean=float(self.control_mean[idx]),
            treatment_mean=float(self.treatment_mean[idx]),
            estimate=float(self.estimate[idx]),
            ci_low=float(self.ci_low[idx]),
            ci_high=float(self.ci_high[idx]),
            p_value=get(self.p_value),
            chance_to_win=get(self.chance_to_win),
            risk_control=get(self.risk_control),
            risk_treatment=get(self.risk_treatment),
            error=ERROR_MESSAGES.get(code),
            error_code=ERROR_CODE_NAMES.get(code),
            std_error=float(self.std_error[idx]),
            relative=self.relative,
            method=self.method,
        )
