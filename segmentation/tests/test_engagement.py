"""Engagement points models: validation, activation, and the SQL they compile to."""

from __future__ import annotations

import copy
import random
from decimal import Decimal

import pytest
from django.db import connection

from abtest.errors import ServiceError
from segmentation.defaults import ENGAGEMENT_MODEL
from segmentation.models import EngagementModel
from segmentation.services.engagement import (
    ENGAGEMENT_METRICS,
    engagement_definition_validate,
    engagement_model_activate,
    engagement_sql_compile,
)
from segmentation.tests.metrics_reference import reference_engagement

DELETE = object()


def with_change(path: str, value, base: dict | None = None) -> dict:
    """A copy of the default model with one value replaced (``value`` DELETE removes it)."""
    definition = copy.deepcopy(base or ENGAGEMENT_MODEL)
    *parents, last = path.split(".")
    target = definition
    for part in parents:
        name, _, index = part.partition("[")
        target = target[name]
        if index:
            target = target[int(index[:-1])]
    name, _, index = last.partition("[")
    if index:
        target = target[name]
        name = int(index[:-1])
    if value is DELETE:
        del target[name]
    else:
        target[name] = value
    return definition


def test_default_model_is_valid():
    engagement_definition_validate(ENGAGEMENT_MODEL)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("rules", "nope", "rules"),
        ("rules[1].metric", "email", "rules[1].metric"),
        ("rules[1].metric", "event_counts_30d", "rules[1].metric"),
        ("rules[1].metric", DELETE, "rules[1].metric"),
        ("rules[1].bands", [], "rules[1].bands"),
        ("rules[1].bands[0].min", "10", "rules[1].bands[0].min"),
        ("rules[1].bands[0].min", True, "rules[1].bands[0].min"),
        ("rules[1].bands[0].min", float("nan"), "rules[1].bands[0].min"),
        ("rules[1].bands[0].max", 10**13, "rules[1].bands[0].max"),
        ("rules[1].bands[1].max", 30, "rules[1].bands[1].max"),  # min 30, max 30
        ("rules[1].bands[1].points", 2.5, "rules[1].bands[1].points"),
        ("rules[1].bands[1].points", DELETE, "rules[1].bands[1].points"),
        ("rules[1].bands[1].points", 10**7, "rules[1].bands[1].points"),
        ("rules[1].bands[1].mni", 3, "rules[1].bands[1].mni"),
        ("rules[0].weight", 2, "rules[0].weight"),
        ("tiers", [], "tiers"),
        ("tiers[1].name", "Star", "tiers[1].name"),
        ("tiers[1].name", "  ", "tiers[1].name"),
        ("tiers[1].name", "x" * 101, "tiers[1].name"),
        ("tiers[1].min_points", 70, "tiers[1].min_points"),
        ("tiers[1].min_points", 40.0, "tiers[1].min_points"),
        ("tiers[3].min_points", 1, "tiers"),  # nobody under 1 point would get a tier
        ("tiers[3]", {"name": "Lost"}, "tiers[3].min_points"),
        ("extra", {}, "extra"),
    ],
)
def test_invalid_definitions_name_the_offending_path(path, value, field):
    with pytest.raises(ServiceError) as exc:
        engagement_definition_validate(with_change(path, value))
    assert exc.value.field == field
    assert exc.value.message.startswith(f"{field}: ")


def test_a_definition_must_be_an_object():
    with pytest.raises(ServiceError) as exc:
        engagement_definition_validate([])  # type: ignore[arg-type]
    assert exc.value.field == "definition"


def test_negative_points_need_a_low_enough_lowest_tier():
    definition = {
        "rules": [
            {"metric": "emails_sent", "bands": [{"min": 10, "points": -5}, {"points": 2}]},
            {"metric": "recency_days", "bands": [{"min": 365, "points": -10}]},
        ],
        "tiers": [{"name": "Fine", "min_points": 0}, {"name": "Gone", "min_points": -14}],
    }
    with pytest.raises(ServiceError) as exc:
        engagement_definition_validate(definition)
    assert exc.value.field == "tiers"
    assert "-15" in exc.value.message
    definition["tiers"][1]["min_points"] = -15
    engagement_definition_validate(definition)


def test_bands_without_bounds_and_no_rules_are_allowed():
    engagement_definition_validate(
        {
            "rules": [{"metric": "m_score", "bands": [{"points": 1}]}],
            "tiers": [{"name": "All", "min_points": 0}],
        }
    )
    engagement_definition_validate({"rules": [], "tiers": [{"name": "All", "min_points": -1}]})


@pytest.mark.django_db
def test_activate_switches_the_active_model_and_refuses_invalid_ones():
    default = EngagementModel.objects.get(is_active=True)
    other = EngagementModel.objects.create(name="Other", definition=ENGAGEMENT_MODEL)

    engagement_model_activate(model=other)
    assert list(EngagementModel.objects.filter(is_active=True)) == [other]

    broken = EngagementModel.objects.create(name="Broken", definition={"rules": [], "tiers": []})
    with pytest.raises(ServiceError):
        engagement_model_activate(model=broken)
    assert list(EngagementModel.objects.filter(is_active=True)) == [other]

    engagement_model_activate(model=default)
    assert list(EngagementModel.objects.filter(is_active=True)) == [default]


def test_compiled_sql_carries_user_data_only_as_parameters():
    definition = {
        "rules": [{"metric": "monetary", "bands": [{"min": 0.01, "max": 25, "points": 3}]}],
        "tiers": [{"name": "'); DROP TABLE x; --", "min_points": 0}],
    }
    compiled = engagement_sql_compile(
        definition=definition, metric_sql={"monetary": "t.monetary"}, points_sql="t.points"
    )
    sql = compiled.points_sql + compiled.tier_sql
    assert "DROP" not in sql and "0.01" not in sql and "25" not in sql
    assert compiled.points_params == (Decimal("0.01"), Decimal("25"), 3)
    assert compiled.tier_params == (0, "'); DROP TABLE x; --")


def test_thresholds_on_integer_metrics_round_up_exactly():
    definition = {
        "rules": [{"metric": "frequency", "bands": [{"min": 1.5, "max": 3.0001, "points": 1}]}],
        "tiers": [{"name": "All", "min_points": 0}],
    }
    compiled = engagement_sql_compile(
        definition=definition, metric_sql={"frequency": "f"}, points_sql="p"
    )
    assert compiled.points_params == (2, 4, 1)  # 2 <= f < 4  <=>  1.5 <= f < 3.0001


# --- the compiled SQL against the reference, on the test database -----------------------------

RANDOM_MODEL = {
    "rules": [
        {
            "metric": "monetary",
            "bands": [{"min": 99.99, "points": 9}, {"min": 0.01, "max": 99.99, "points": 4}],
        },
        {"metric": "recency_days", "bands": [{"max": 7, "points": 20}, {"points": -2}]},
        {
            "metric": "frequency",
            "bands": [{"min": 2.5, "max": 5, "points": 6}, {"min": 5, "points": 8}],
        },
        {"metric": "emails_clicked", "bands": [{"min": 1, "points": 5}, {"max": 1, "points": -1}]},
        {"metric": "r_score", "bands": [{"min": 4, "points": 10}]},
    ],
    "tiers": [
        {"name": "Top", "min_points": 30},
        {"name": "Mid", "min_points": 10},
        {"name": "Low", "min_points": -3},
    ],
}


def _evaluate(compiled, row: dict) -> tuple[int, str]:
    postgres = connection.vendor == "postgresql"
    money = row["monetary"] if postgres or row["monetary"] is None else float(row["monetary"])
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT y.points, {compiled.tier_sql} FROM (SELECT {compiled.points_sql} AS points "
            "FROM (SELECT CAST(%s AS NUMERIC) AS monetary, CAST(%s AS INTEGER) AS recency_days, "
            "CAST(%s AS INTEGER) AS frequency, CAST(%s AS INTEGER) AS emails_clicked, "
            "CAST(%s AS INTEGER) AS r_score) t) y",
            [
                *compiled.tier_params,
                *compiled.points_params,
                money,
                row["recency_days"],
                row["frequency"],
                row["emails_clicked"],
                row["r_score"],
            ],
        )
        points, tier = cursor.fetchone()
    return int(points), tier


@pytest.mark.django_db
def test_compiled_sql_matches_the_reference_on_random_values():
    engagement_definition_validate(RANDOM_MODEL)
    compiled = engagement_sql_compile(
        definition=RANDOM_MODEL,
        metric_sql={name: f"t.{name}" for name in ENGAGEMENT_METRICS},
        points_sql="y.points",
        exact_decimals=connection.vendor == "postgresql",
    )
    rng = random.Random(5)
    money = [
        None,
        Decimal("0.00"),
        Decimal("0.01"),
        Decimal("99.98"),
        Decimal("99.99"),
        Decimal("100.00"),
    ]
    seen_tiers = set()
    for _ in range(150):
        row = {
            "monetary": rng.choice(money),
            "recency_days": rng.choice([None, 0, 6, 7, 8, 400]),
            "frequency": rng.choice([0, 1, 2, 3, 4, 5, 6]),
            "emails_clicked": rng.choice([0, 1, 2]),
            "r_score": rng.choice([None, 1, 3, 4, 5]),
        }
        metrics = {name: row.get(name) for name in ENGAGEMENT_METRICS}
        expected = reference_engagement(RANDOM_MODEL, metrics)
        assert _evaluate(compiled, row) == expected, row
        seen_tiers.add(expected[1])
    assert seen_tiers == {"Top", "Mid", "Low"}
