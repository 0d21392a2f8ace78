"""A fast, seeded A/A calibration: the tests reject as often as they promise."""

from __future__ import annotations

from experiments.stats.calibration import CalibrationConfig, format_table, run_calibration


def test_small_seeded_calibration_has_sensible_error_rates():
    config = CalibrationConfig(
        n_simulations=2000,
        days=10,
        users_per_day=1000,
        revenue_users_per_day=2500,
        true_lift=0.2,
        seed=7,
    )
    rows = run_calibration(config)
    rates = {(r.scenario, r.method, r.looks): r.rate for r in rows}
    fixed = rates[("A/A conversion", "t-test", "end only")]
    peek = rates[("A/A conversion", "t-test, naive peeking", "daily x10")]
    seq = rates[("A/A conversion", "sequential (tuning 5000)", "daily x10")]
    assert 0.035 <= fixed <= 0.065
    assert peek > fixed + 0.04  # peeking inflates false positives
    assert seq <= 0.05
    assert rates[("A/A revenue", "t-test", "end only")] <= 0.07
    assert rates[("A/A revenue", "sequential (tuning 5000)", "daily x10")] <= 0.05
    low = "A/A revenue, 250 users/arm/day"
    assert rates[(low, "sequential (tuning 5000), absolute difference", "daily x10")] <= 0.05
    power = rates[("A/B conversion +20%", "t-test (power)", "end only")]
    seq_power = rates[("A/B conversion +20%", "sequential (tuning 5000) (power)", "daily x10")]
    assert power > 0.5 and 0.05 < seq_power < power
    table = format_table(rows, config)
    assert table.startswith("| scenario |") and table.count("\n") == len(rows) + 1
