"""Fisher's exact test for small conversion samples.

The t-test's normal approximation is poor when a 2x2 table (converted / not converted by
control / treatment) has an expected cell count below 5. The results layer then shows this
exact test instead, and says so. ``frequentist_test`` itself always runs the t-test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import stats as sps

from experiments.stats.errors import StatsError
from experiments.stats.inputs import ProportionStats

FISHER_MIN_EXPECTED = 5.0

Alternative = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True, slots=True)
class FisherResult:
    """Fisher's exact test of treatment against control.

    ``odds_ratio`` is the treatment's odds of converting over the control's (the sample odds
    ratio scipy reports for the table ``[[t_conv, t_not], [c_conv, c_not]]``); it is None when
    undefined or infinite (a zero cell), with ``error`` saying why. ``p_value`` is scipy's.
    """

    p_value: float
    odds_ratio: float | None
    control_rate: float
    treatment_rate: float
    min_expected_count: float
    alternative: Alternative = "two-sided"
    error: str | None = None


def _check(control: ProportionStats, treatment: ProportionStats) -> None:
    for name, arm in (("control", control), ("treatment", treatment)):
        if not isinstance(arm, ProportionStats):
            raise StatsError(f"{name} must be ProportionStats, got {type(arm).__name__}")


def expected_cell_counts(
    control: ProportionStats, treatment: ProportionStats
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Expected counts ((c_conv, c_not), (t_conv, t_not)) under no difference."""
    _check(control, treatment)
    total = control.n + treatment.n
    conv = control.conversions + treatment.conversions
    if total == 0:
        return (0.0, 0.0), (0.0, 0.0)
    rows = []
    for arm in (control, treatment):
        rows.append((arm.n * conv / total, arm.n * (total - conv) / total))
    return (rows[0][0], rows[0][1]), (rows[1][0], rows[1][1])


def needs_fisher_exact(
    control: ProportionStats,
    treatment: ProportionStats,
    *,
    min_expected: float = FISHER_MIN_EXPECTED,
) -> bool:
    """True when any expected cell count is below ``min_expected`` (default 5)."""
    cells = expected_cell_counts(control, treatment)
    return min(min(row) for row in cells) < min_expected


def fisher_exact_test(
    control: ProportionStats,
    treatment: ProportionStats,
    *,
    alternative: Alternative = "two-sided",
) -> FisherResult:
    """Fisher's exact test on the 2x2 table of conversions (scipy ``fisher_exact``).

    ``alternative="greater"`` tests whether the treatment converts more than the control.
    """
    _check(control, treatment)
    if alternative not in ("two-sided", "greater", "less"):
        raise StatsError(
            f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}"
        )
    table = [
        [treatment.conversions, treatment.n - treatment.conversions],
        [control.conversions, control.n - control.conversions],
    ]
    res = sps.fisher_exact(table, alternative=alternative)
    odds = float(res.statistic)
    p_value = float(res.pvalue)
    error = None
    if math.isnan(p_value):
        p_value = 1.0
    if not math.isfinite(odds):
        error = (
            "The odds ratio is undefined because a cell of the table is zero "
            "(an arm with no units, or no conversions or no non-conversions)."
        )
        odds_ratio: float | None = None
    else:
        odds_ratio = odds
    cells = expected_cell_counts(control, treatment)
    return FisherResult(
        p_value=p_value,
        odds_ratio=odds_ratio,
        control_rate=control.mean,
        treatment_rate=treatment.mean,
        min_expected_count=float(min(min(row) for row in cells)),
        alternative=alternative,
        error=error,
    )
