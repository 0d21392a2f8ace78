"""Error types and the degenerate-result codes shared by every method.

Invalid input raises :class:`StatsError`. Degenerate but valid input (zero variance, a zero
baseline mean, an empty arm) never raises: the result carries one of the codes below, with the
estimate and interval set to 0, exactly as GrowthBook's engine (gbstats 0.8.0) reports it.
"""

from __future__ import annotations

from typing import Final


class StatsError(ValueError):
    """Invalid input to the statistics engine (negative counts, NaN, mismatched shapes, ...)."""


# Integer codes used by the vectorized engine (``ComparisonArrays.error_code``).
OK: Final = 0
BASELINE_ZERO: Final = 1
ZERO_VARIANCE: Final = 2
NO_UNITS: Final = 3

#: gbstats' machine-readable names for each code (``TestResult.error_code``).
ERROR_CODE_NAMES: Final[dict[int, str]] = {
    BASELINE_ZERO: "ZERO_NEGATIVE_BASELINE_VARIATION",
    ZERO_VARIANCE: "ZERO_NEGATIVE_VARIANCE",
    NO_UNITS: "NO_UNITS_IN_VARIATION",
}

#: Plain-language explanations shown to marketers (``TestResult.error``).
ERROR_MESSAGES: Final[dict[int, str]] = {
    BASELINE_ZERO: (
        "The control's mean is zero, so a lift relative to it cannot be computed "
        "(zero baseline mean)."
    ),
    ZERO_VARIANCE: (
        "A variant has zero variance (every unit has the same value, or too few units), "
        "so no interval can be computed (zero variance)."
    ),
    NO_UNITS: "A variant has no units yet, so there is nothing to compare (no units).",
}
