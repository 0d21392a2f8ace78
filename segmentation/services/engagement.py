"""Engagement points models: validation, activation, and compilation to SQL.

A points model (``EngagementModel.definition``) gives points per threshold band on customer
metrics; a customer's points are summed over the rules and mapped to a named tier::

    {"rules": [{"metric": "frequency",
                "bands": [{"min": 10, "points": 30}, {"min": 4, "max": 10, "points": 20}]}],
     "tiers": [{"name": "Star", "min_points": 70}, {"name": "Lost", "min_points": 0}]}

Rules of evaluation (``segmentation.services.metrics`` runs them in SQL):

- A band matches when ``min <= value < max``; either bound may be left out (a band with no
  bound matches any value that is present).
- In each rule, the *first* matching band (in the order written) scores its ``points``; when
  no band matches, or the metric has no value (NULL, e.g. ``recency_days`` of a customer who
  never bought), the rule scores 0.
- ``engagement_points`` is the sum over the rules. The tier is the one with the highest
  ``min_points`` that the total reaches. Validation guarantees that the lowest tier is reachable
  by every customer, so every customer gets a tier.

The metrics a rule may use are listed in :data:`ENGAGEMENT_METRICS`. Metric names come from
that whitelist and every number or name from the definition is passed to the database as a
query parameter: nothing from the definition is ever pasted into SQL text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction

from abtest.errors import ServiceError
from segmentation.models import EngagementModel

#: Metric name -> whether its values are integers (all but ``monetary``).
#: ``days_since_last_activity`` is whole days from the last event of any type to the as-of
#: date; ``events_30d`` / ``events_90d`` count events of every type in those windows.
ENGAGEMENT_METRICS: dict[str, bool] = {
    "frequency": True,
    "monetary": False,
    "recency_days": True,
    "emails_sent": True,
    "emails_opened": True,
    "emails_clicked": True,
    "r_score": True,
    "f_score": True,
    "m_score": True,
    "days_since_last_activity": True,
    "events_30d": True,
    "events_90d": True,
}

#: Bounds that keep every sum inside a 32-bit integer and every threshold inside NUMERIC(16,2).
MAX_RULES = 100
MAX_BANDS = 100
MAX_TIERS = 50
MAX_ABS_POINTS = 1_000_000
MAX_ABS_THRESHOLD = 10**12
TIER_NAME_MAX_LENGTH = 100  # CustomerMetrics.engagement_tier

_DEFINITION_KEYS = {"rules", "tiers"}
_RULE_KEYS = {"metric", "bands"}
_BAND_KEYS = {"min", "max", "points"}
_TIER_KEYS = {"name", "min_points"}


def _fail(path: str, message: str) -> ServiceError:
    return ServiceError(f"{path}: {message}", field=path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Decimal):
        return value.is_finite()
    return False


def _check_keys(obj: Any, allowed: set[str], required: set[str], path: str) -> None:
    if not isinstance(obj, dict):
        raise _fail(path, "must be an object.")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}" if path else unknown[0], "is not a known key.")
    for key in sorted(required):
        if key not in obj:
            raise _fail(f"{path}.{key}" if path else key, "is required.")


def _check_threshold(value: Any, path: str) -> None:
    if not _is_number(value):
        raise _fail(path, "must be a number.")
    if abs(value) > MAX_ABS_THRESHOLD:
        raise _fail(path, f"must be between -{MAX_ABS_THRESHOLD} and {MAX_ABS_THRESHOLD}.")


def engagement_definition_validate(definition: dict) -> None:
    """Check a points model; raise :class:`ServiceError` whose ``field`` is the offending path.

    Paths read like ``rules[1].bands[0].min`` or ``tiers[2].name``. Checks: known keys only;
    ``metric`` in :data:`ENGAGEMENT_METRICS`; bands are ``{min?, max?, points}`` with numeric
    bounds, ``min < max`` when both are given, integer ``points``; at least one tier; tier
    names non-empty, unique and at most 100 characters; integer ``min_points``, all distinct;
    and the lowest tier's ``min_points`` at most the lowest total any customer can score (0
    when no band gives negative points), so every customer gets a tier.
    """
    if not isinstance(definition, dict):
        raise _fail("definition", "must be an object.")
    _check_keys(definition, _DEFINITION_KEYS, _DEFINITION_KEYS, "")
    rules = definition["rules"]
    if not isinstance(rules, list):
        raise _fail("rules", "must be a list.")
    if len(rules) > MAX_RULES:
        raise _fail("rules", f"must have at most {MAX_RULES} rules.")
    lowest_total = 0
    for i, rule in enumerate(rules):
        path = f"rules[{i}]"
        _check_keys(rule, _RULE_KEYS, _RULE_KEYS, path)
        metric = rule["metric"]
        if not isinstance(metric, str) or metric not in ENGAGEMENT_METRICS:
            known = ", ".join(ENGAGEMENT_METRICS)
            raise _fail(f"{path}.metric", f"must be one of: {known}.")
        bands = rule["bands"]
        if not isinstance(bands, list) or not bands:
            raise _fail(f"{path}.bands", "must be a non-empty list.")
        if len(bands) > MAX_BANDS:
            raise _fail(f"{path}.bands", f"must have at most {MAX_BANDS} bands.")
        for j, band in enumerate(bands):
            band_path = f"{path}.bands[{j}]"
            _check_keys(band, _BAND_KEYS, {"points"}, band_path)
            for bound in ("min", "max"):
                if bound in band:
                    _check_threshold(band[bound], f"{band_path}.{bound}")
            if "min" in band and "max" in band and not band["min"] < band["max"]:
                raise _fail(f"{band_path}.max", "must be greater than min.")
            points = band["points"]
            if not _is_int(points) or abs(points) > MAX_ABS_POINTS:
                raise _fail(
                    f"{band_path}.points",
                    f"must be a whole number between -{MAX_ABS_POINTS} and {MAX_ABS_POINTS}.",
                )
        lowest_total += min(0, *(band["points"] for band in bands))

    tiers = definition["tiers"]
    if not isinstance(tiers, list) or not tiers:
        raise _fail("tiers", "must be a non-empty list.")
    if len(tiers) > MAX_TIERS:
        raise _fail("tiers", f"must have at most {MAX_TIERS} tiers.")
    names: set[str] = set()
    thresholds: set[int] = set()
    for i, tier in enumerate(tiers):
        path = f"tiers[{i}]"
        _check_keys(tier, _TIER_KEYS, _TIER_KEYS, path)
        name = tier["name"]
        if not isinstance(name, str) or not name.strip():
            raise _fail(f"{path}.name", "must be a non-empty string.")
        if len(name) > TIER_NAME_MAX_LENGTH:
            raise _fail(f"{path}.name", f"must be at most {TIER_NAME_MAX_LENGTH} characters.")
        if name in names:
            raise _fail(f"{path}.name", f"{name!r} is used by another tier.")
        names.add(name)
        min_points = tier["min_points"]
        if not _is_int(min_points) or abs(min_points) > MAX_RULES * MAX_ABS_POINTS:
            raise _fail(f"{path}.min_points", "must be a whole number.")
        if min_points in thresholds:
            raise _fail(f"{path}.min_points", f"{min_points} is used by another tier.")
        thresholds.add(min_points)
    if min(thresholds) > lowest_total:
        raise _fail(
            "tiers",
            f"the lowest tier must have min_points {lowest_total} or lower, so that every "
            "customer gets a tier.",
        )


@transaction.atomic
def engagement_model_activate(*, model: EngagementModel) -> EngagementModel:
    """Validate ``model``'s definition and make it the one active model (others deactivated).

    The next metrics recompute applies it.
    """
    engagement_definition_validate(model.definition)
    EngagementModel.objects.select_for_update().filter(is_active=True).exclude(pk=model.pk).update(
        is_active=False
    )
    model.is_active = True
    model.save()
    return model


def engagement_model_active_definition() -> dict | None:
    """The active model's definition (validated), or None when no model is active."""
    model = EngagementModel.objects.filter(is_active=True).first()
    if model is None:
        return None
    try:
        engagement_definition_validate(model.definition)
    except ServiceError as exc:
        raise ServiceError(
            f"The active engagement model {model.name!r} is invalid: {exc.message}",
            field=f"definition.{exc.field}" if exc.field else "definition",
        ) from exc
    return model.definition


@dataclass(frozen=True)
class EngagementSql:
    """SQL fragments for one points model.

    ``points_sql`` (with ``points_params``) is an integer expression over the metric columns;
    ``tier_sql`` (with ``tier_params``) is a text expression over the column that holds the
    points, naming the tier.
    """

    points_sql: str
    points_params: tuple[Any, ...]
    tier_sql: str
    tier_params: tuple[Any, ...]


def _integer_bound(value: int | float | Decimal) -> int:
    # For an integer metric v: v >= x  <=>  v >= ceil(x), and v < x  <=>  v < ceil(x).
    return math.ceil(Decimal(str(value)) if isinstance(value, float) else value)


def engagement_sql_compile(
    *,
    definition: dict,
    metric_sql: Mapping[str, str],
    points_sql: str,
    exact_decimals: bool = True,
) -> EngagementSql:
    """Compile a validated ``definition`` into parameterised SQL.

    ``metric_sql`` maps each name in :data:`ENGAGEMENT_METRICS` to the SQL expression that holds
    it (written by the caller, never taken from the definition). ``points_sql`` is the column
    or expression the tier CASE reads the total from. Thresholds on integer metrics become
    integer parameters (rounded up, which is exact for ``>=`` and ``<`` on integers); thresholds
    on ``monetary`` are passed as :class:`~decimal.Decimal` when ``exact_decimals`` (PostgreSQL
    NUMERIC) and as float otherwise (SQLite, whose decimals are REAL).
    """
    terms: list[str] = []
    params: list[Any] = []
    for rule in definition["rules"]:
        metric = rule["metric"]
        column = metric_sql[metric]  # KeyError: caller bug (whitelist drift), not user input
        is_integer = ENGAGEMENT_METRICS[metric]
        whens: list[str] = []
        for band in rule["bands"]:
            conditions: list[str] = []
            for bound, operator in (("min", ">="), ("max", "<")):
                if bound not in band:
                    continue
                value = band[bound]
                if is_integer:
                    conditions.append(f"{column} {operator} CAST(%s AS BIGINT)")
                    params.append(_integer_bound(value))
                else:
                    conditions.append(f"{column} {operator} CAST(%s AS NUMERIC)")
                    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
                    params.append(number if exact_decimals else float(number))
            if not conditions:
                conditions.append(f"{column} IS NOT NULL")
            whens.append(f"WHEN {' AND '.join(conditions)} THEN CAST(%s AS INTEGER)")
            params.append(int(band["points"]))
        terms.append(f"(CASE {' '.join(whens)} ELSE 0 END)")
    points = " + ".join(terms) if terms else "0"

    tier_whens: list[str] = []
    tier_params: list[Any] = []
    for tier in sorted(definition["tiers"], key=lambda t: t["min_points"], reverse=True):
        tier_whens.append(f"WHEN {points_sql} >= CAST(%s AS INTEGER) THEN CAST(%s AS TEXT)")
        tier_params.extend([int(tier["min_points"]), tier["name"]])
    tier = f"(CASE {' '.join(tier_whens)} ELSE '' END)"
    return EngagementSql(
        points_sql=f"({points})",
        points_params=tuple(params),
        tier_sql=tier,
        tier_params=tuple(tier_params),
    )
