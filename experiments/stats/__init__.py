"""The statistics engine: pure functions from sufficient statistics to results.

No Django here. Inputs are frozen dataclasses (or :class:`StatsArrays` for many comparisons at
once); invalid input raises :class:`StatsError`; degenerate input returns a result with
``error`` set. Formulas follow GrowthBook's gbstats 0.8.0; see ``docs/statistics.md``.
"""

from experiments.stats.arrays import StatsArrays
from experiments.stats.bandits import probability_to_be_best, thompson_weights
from experiments.stats.bayesian import DEFAULT_CI_LEVEL, bayesian_arrays, bayesian_test
from experiments.stats.errors import StatsError
from experiments.stats.fisher import (
    FISHER_MIN_EXPECTED,
    FisherResult,
    expected_cell_counts,
    fisher_exact_test,
    needs_fisher_exact,
)
from experiments.stats.frequentist import (
    DEFAULT_ALPHA,
    DEFAULT_SEQUENTIAL_TUNING,
    frequentist_arrays,
    frequentist_test,
)
from experiments.stats.inputs import (
    CupedStats,
    MeanStats,
    MetricKind,
    ProportionStats,
    RatioStats,
    Stats,
)
from experiments.stats.multiple_testing import adjust_p_values
from experiments.stats.power import (
    minimum_detectable_effect,
    sample_size_per_arm,
    sample_size_per_arm_mean,
)
from experiments.stats.results import ComparisonArrays, TestResult
from experiments.stats.srm import SRM_THRESHOLD, has_srm, srm_p_value, srm_p_values
from experiments.stats.vectorized import ExperimentArrays, analyze_experiment

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CI_LEVEL",
    "DEFAULT_SEQUENTIAL_TUNING",
    "FISHER_MIN_EXPECTED",
    "SRM_THRESHOLD",
    "ComparisonArrays",
    "CupedStats",
    "ExperimentArrays",
    "FisherResult",
    "MeanStats",
    "MetricKind",
    "ProportionStats",
    "RatioStats",
    "Stats",
    "StatsArrays",
    "StatsError",
    "TestResult",
    "adjust_p_values",
    "analyze_experiment",
    "bayesian_arrays",
    "bayesian_test",
    "expected_cell_counts",
    "fisher_exact_test",
    "frequentist_arrays",
    "frequentist_test",
    "has_srm",
    "minimum_detectable_effect",
    "needs_fisher_exact",
    "probability_to_be_best",
    "sample_size_per_arm",
    "sample_size_per_arm_mean",
    "srm_p_value",
    "srm_p_values",
    "thompson_weights",
]
