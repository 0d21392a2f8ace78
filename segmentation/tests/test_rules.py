from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from django.db import connection

from segmentation.models import Customer, SegmentMembership
from segmentation.rules import (
    ATTRIBUTE_FIELD,
    EVENT_OPERATORS,
    MAX_CONDITIONS,
    MAX_DEPTH,
    OPERATORS,
    RULE_FIELDS,
    SEGMENT_OPERATORS,
    RuleError,
    rule_catalogue,
    rule_compile,
    rule_field,
    rule_find_cycle,
    rule_matches,
    rule_referenced_segments,
    rule_validate,
    rule_validate_references,
)
from segmentation.tests.factories import SegmentFactory
from segmentation.tests.rules_helpers import DAY, NOW, make_events, make_people, matches, one
from segmentation.tests.summary_helpers import EVENT_SOURCES, use_event_source

ALL = {"alice", "bob", "carol", "dave"}


@pytest.fixture
def people(db):
    return make_people()


@pytest.fixture
def events(people):
    make_events(people)
    return people


@pytest.fixture(params=EVENT_SOURCES)
def summarized_events(request, events):
    """The events, read directly, through the event summary, or through a summary of half of
    them plus the newer ones (the summary sources run on PostgreSQL only)."""
    use_event_source(request.param)
    return events


# --- The catalogue ----------------------------------------------------------------------------


def test_every_field_offers_only_known_operators():
    for field in (*RULE_FIELDS.values(), ATTRIBUTE_FIELD):
        assert field.ops, field.name
        assert set(field.ops) <= set(OPERATORS), field.name
        assert field.label


def test_catalogue_is_json_data_for_the_builder():
    catalogue = json.loads(json.dumps(rule_catalogue()))
    names = [f["name"] for f in catalogue["fields"]]
    assert "subscription_status" in names and "metrics.r_score" in names
    assert "attributes.*" in names
    status = next(f for f in catalogue["fields"] if f["name"] == "subscription_status")
    assert ["subscribed", "Subscribed"] in status["choices"]
    assert {o["name"] for o in catalogue["operators"]} == set(OPERATORS)
    assert {o["name"] for o in catalogue["event_operators"]} == set(EVENT_OPERATORS)
    assert {o["name"] for o in catalogue["segment_operators"]} == set(SEGMENT_OPERATORS)
    between = next(o for o in catalogue["operators"] if o["name"] == "between")
    assert between["value"] == "pair"
    assert "lookup" not in catalogue["fields"][0]


def test_rule_field_resolves_attribute_keys():
    assert rule_field("attributes.plan") == (ATTRIBUTE_FIELD, "plan")
    assert rule_field("attributes.a.b") == (ATTRIBUTE_FIELD, "a.b")
    assert rule_field("metrics.frequency")[0].lookup == "metrics__frequency"
    with pytest.raises(KeyError):
        rule_field("metrics.nope")


# --- Structural validation (no database) ------------------------------------------------------


def nest(depth: int) -> dict:
    rule: dict = {"all": []}
    for _ in range(depth - 1):
        rule = {"all": [rule]}
    return rule


INVALID = [
    (None, "", "a rule must be a group"),
    ([], "", "a rule must be a group"),
    ({"field": "email", "op": "is_set"}, "", "a rule must be a group"),
    ({"all": [], "any": []}, "", "exactly one key"),
    ({"all": {}}, "", "'all' needs a list"),
    ({"all": ["x"]}, "all[0]", "a condition must be an object"),
    ({"all": [{"op": "eq"}]}, "all[0]", "exactly one of 'field', 'event' or 'segment'"),
    ({"all": [{"field": "email", "event": "x"}]}, "all[0]", "exactly one of"),
    (
        {"all": [{"field": "email", "op": "is_set", "values": 1}]},
        "all[0]",
        "unexpected key 'values'",
    ),
    (
        {"all": [{}, {}, {"any": [{"field": "metrics.frequncy", "op": "gte", "value": 3}]}]},
        "all[0]",
        "exactly one of",
    ),
    (
        {
            "all": [
                {"field": "email", "op": "is_set"},
                {"field": "email", "op": "is_set"},
                {"any": [{"field": "metrics.frequncy", "op": "gte", "value": 3}]},
            ]
        },
        "all[2].any[0]",
        "metrics.frequncy is not a known field (did you mean metrics.frequency?)",
    ),
    (
        {
            "all": [
                {"field": "email", "op": "is_set"},
                {"field": "metrics.monetary", "op": "between", "value": [1]},
            ]
        },
        "all[1]",
        "'between' needs a list of two numbers",
    ),
    (
        one({"field": "metrics.monetary", "op": "between", "value": [5, 1]}),
        "all[0]",
        "lower bound first",
    ),
    (
        one({"field": "metrics.frequency", "op": "between", "value": ["1", 2]}),
        "all[0]",
        "two numbers",
    ),
    (
        one({"field": "metrics.frequency", "op": "gte", "value": "3"}),
        "all[0]",
        "'gte' needs a number",
    ),
    (
        one({"field": "metrics.frequency", "op": "gte", "value": True}),
        "all[0]",
        "'gte' needs a number",
    ),
    (
        one({"field": "metrics.frequency", "op": "gte", "value": 2.5}),
        "all[0]",
        "takes whole numbers",
    ),
    (one({"field": "metrics.frequency", "op": "gte"}), "all[0]", "'gte' needs a value"),
    (
        one({"field": "metrics.frequency", "op": "contains", "value": "1"}),
        "all[0]",
        "does not support 'contains'",
    ),
    (
        one({"field": "metrics.frequency", "op": "lots", "value": 1}),
        "all[0]",
        "'lots' is not a known operator",
    ),
    (one({"field": "metrics.frequency", "value": 1}), "all[0]", "'op' is missing"),
    (one({"field": "email", "op": "is_set", "value": "x"}), "all[0]", "'is_set' takes no value"),
    (one({"field": "email", "op": "eq", "value": 3}), "all[0]", "'eq' needs a text value"),
    (one({"field": "email", "op": "in", "value": []}), "all[0]", "non-empty list of text values"),
    (one({"field": "email", "op": "in", "value": "a@b.c"}), "all[0]", "non-empty list"),
    (one({"field": "email", "op": "in", "value": ["a", 1]}), "all[0]", "list of text values"),
    (one({"field": "email", "op": "in", "value": ["a"] * 1001}), "all[0]", "at most 1000 values"),
    (one({"field": "email", "op": "contains", "value": ""}), "all[0]", "non-empty text value"),
    (one({"field": "email", "op": "gt", "value": "a"}), "all[0]", "does not support 'gt'"),
    (one({"field": "external_id", "op": "is_set"}), "all[0]", "does not support 'is_set'"),
    (
        one({"field": "subscription_status", "op": "eq", "value": "gold"}),
        "all[0]",
        "'gold' is not a subscription_status",
    ),
    (
        one({"field": "subscription_status", "op": "in", "value": ["subscribed", "x"]}),
        "all[0]",
        "'x' is not",
    ),
    (
        one({"field": "created_at", "op": "before", "value": "yesterday"}),
        "all[0]",
        "'yesterday' is not a date",
    ),
    (
        one({"field": "created_at", "op": "before", "value": 20240101}),
        "all[0]",
        "'before' needs a date",
    ),
    (
        one({"field": "created_at", "op": "eq", "value": "2024-01-01"}),
        "all[0]",
        "does not support 'eq'",
    ),
    (
        one({"field": "created_at", "op": "between", "value": ["2024-02-01", "2024-01-01"]}),
        "all[0]",
        "lower bound first",
    ),
    (
        one({"field": "created_at", "op": "within_last_days", "value": 0}),
        "all[0]",
        "between 1 and 36500",
    ),
    (
        one({"field": "created_at", "op": "within_last_days", "value": "7"}),
        "all[0]",
        "whole number of days",
    ),
    (one({"field": "attributes.", "op": "is_set"}), "all[0]", "non-empty key"),
    (one({"field": "attributes.n", "op": "gt", "value": "3"}), "all[0]", "'gt' needs a number"),
    (
        one({"field": "attributes.n", "op": "contains", "value": 3}),
        "all[0]",
        "'contains' needs a text value",
    ),
    (one({"field": "attributes.n", "op": "eq", "value": None}), "all[0]", "'eq' needs a value"),
    (
        one({"field": "attributes.n", "op": "eq", "value": [1]}),
        "all[0]",
        "'eq' needs a text, number or true/false value",
    ),
    (
        one({"field": "attributes.n", "op": "before", "value": "2024-01-01"}),
        "all[0]",
        "does not support 'before'",
    ),
    (one({"event": "", "op": "never"}), "all[0]", "'event' must be an event type"),
    (one({"event": "purchase", "op": "sometimes"}), "all[0]", "not an event operator"),
    (one({"event": "purchase"}), "all[0]", "'op' is missing"),
    (one({"event": "purchase", "op": "at_least"}), "all[0]", "needs a count"),
    (one({"event": "purchase", "op": "at_least", "count": 0}), "all[0]", "needs a count"),
    (one({"event": "purchase", "op": "fewer_than", "count": 1.5}), "all[0]", "needs a count"),
    (one({"event": "purchase", "op": "never", "count": 1}), "all[0]", "'never' takes no count"),
    (one({"event": "purchase", "op": "never", "days": 0}), "all[0]", "'days' must be"),
    (one({"event": "purchase", "op": "never", "value": 3}), "all[0]", "unexpected key 'value'"),
    (one({"segment": "vip"}), "all[0]", "'op' must be 'in' or 'not_in'"),
    (one({"segment": 3, "op": "in"}), "all[0]", "'segment' must be a segment's slug"),
    (nest(MAX_DEPTH + 1), "all[0].all[0].all[0].all[0].all[0]", f"at most {MAX_DEPTH} deep"),
    # Values no database can take, or that overflow the calendar when compiled.
    (one({"field": "created_at", "op": "after", "value": "9999-12-31"}), "all[0]", "out of range"),
    (
        one({"field": "created_at", "op": "between", "value": ["2024-01-01", "9999-12-31"]}),
        "all[0]",
        "out of range",
    ),
    (
        one({"field": "created_at", "op": "after", "value": "9999-12-31T23:59:59-05:00"}),
        "all[0]",
        "out of range",
    ),
    (
        one({"field": "created_at", "op": "before", "value": "0001-01-01T00:00:00+05:00"}),
        "all[0]",
        "out of range",
    ),
    (one({"field": "first_name", "op": "contains", "value": "a\x00b"}), "all[0]", "null char"),
    (one({"field": "attributes.plan", "op": "eq", "value": "a\x00"}), "all[0]", "null char"),
    (one({"field": "external_id", "op": "in", "value": ["b\x00"]}), "all[0]", "null char"),
    (one({"event": "pur\x00chase", "op": "never"}), "all[0]", "null char"),
    (one({"segment": "a\x00", "op": "in"}), "all[0]", "'segment' must be a segment's slug"),
    (one({"field": "metrics.monetary", "op": "gte", "value": 1e999}), "all[0]", "out of range"),
    (one({"field": "metrics.frequency", "op": "gte", "value": 10**30}), "all[0]", "out of range"),
    (one({"field": "attributes.n", "op": "gt", "value": 10**30}), "all[0]", "out of range"),
    (one({"field": "attributes.n", "op": "eq", "value": float("nan")}), "all[0]", "out of range"),
    # Beyond a column's range (Django would make the comparison always true or always false).
    (one({"field": "metrics.r_score", "op": "gte", "value": -1}), "all[0]", "0 to 32,767"),
    (one({"field": "metrics.recency_days", "op": "lt", "value": 3 * 10**9}), "all[0]", "range"),
    (one({"field": "metrics.frequency", "op": "eq", "value": 3 * 10**9}), "all[0]", "range"),
    (one({"field": "metrics.monetary", "op": "gte", "value": 10**14}), "all[0]", "range"),
    # An empty value is a missing one.
    (one({"field": "first_name", "op": "eq", "value": ""}), "all[0]", "use 'is_not_set'"),
    (one({"field": "email", "op": "in", "value": ["a@b.c", ""]}), "all[0]", "use 'is_not_set'"),
    (one({"field": "attributes.plan", "op": "neq", "value": ""}), "all[0]", "use 'is_not_set'"),
    (one({"field": "metrics.rfm_segment", "op": "not_in", "value": [""]}), "all[0]", "is_not_set"),
    (
        {"any": [{"field": "email", "op": "is_set"}] * (MAX_CONDITIONS + 1)},
        f"any[{MAX_CONDITIONS}]",
        f"at most {MAX_CONDITIONS} conditions",
    ),
]


@pytest.mark.parametrize(("rule", "path", "message"), INVALID)
def test_invalid_rules_are_rejected_naming_the_condition(rule, path, message):
    with pytest.raises(RuleError) as caught:
        rule_validate(rule)
    assert caught.value.path == path
    assert message in caught.value.message
    assert str(caught.value) == (
        f"{path}: {caught.value.message}" if path else caught.value.message
    )
    assert isinstance(caught.value, ValueError)


def test_error_message_names_the_path_as_documented():
    rule = {
        "all": [
            {"field": "email", "op": "is_set"},
            {"field": "metrics.monetary", "op": "between", "value": [1]},
        ]
    }
    with pytest.raises(RuleError, match=r"^all\[1\]: 'between' needs a list of two numbers$"):
        rule_validate(rule)


def test_limits_are_inclusive():
    rule_validate(nest(MAX_DEPTH))
    rule_validate({"any": [{"field": "email", "op": "is_set"}] * MAX_CONDITIONS})


def test_the_documented_example_is_valid():
    rule_validate(
        {
            "all": [
                {"field": "subscription_status", "op": "eq", "value": "subscribed"},
                {"field": "attributes.plan", "op": "in", "value": ["pro", "team"]},
                {"field": "metrics.frequency", "op": "gte", "value": 3},
                {"field": "metrics.last_purchase_at", "op": "within_last_days", "value": 30},
                {"field": "created_at", "op": "between", "value": ["2024-01-01", "2024-06-30"]},
                {"event": "purchase", "op": "at_least", "count": 2, "days": 30},
                {"event": "session", "op": "never", "days": 90},
                {"segment": "champions", "op": "in"},
                {"any": [{"field": "email", "op": "is_set"}, {"all": []}]},
            ]
        }
    )


# --- Segment references and cycles --------------------------------------------------------------


def test_referenced_segments_are_found_at_any_depth_and_tolerantly():
    rule = {
        "all": [
            {"segment": "a", "op": "in"},
            {"any": [{"segment": "b", "op": "not_in"}, {"all": [{"segment": "c", "op": "in"}]}]},
            "garbage",
            {"any": "not a list"},
        ]
    }
    assert rule_referenced_segments(rule) == {"a", "b", "c"}
    assert rule_referenced_segments(None) == set()


def test_cycle_detection_direct_indirect_and_self():
    ref = lambda *slugs: {"all": [{"segment": s, "op": "in"} for s in slugs]}  # noqa: E731
    assert rule_find_cycle("a", ref("a"), {}) == ["a", "a"]
    assert rule_find_cycle("a", ref("b"), {"b": {"a"}}) == ["a", "b", "a"]
    assert rule_find_cycle("a", ref("x", "b"), {"b": {"c"}, "c": {"d"}, "d": {"a"}}) == [
        "a",
        "b",
        "c",
        "d",
        "a",
    ]
    assert rule_find_cycle("a", ref("b", "c"), {"b": {"c"}, "c": set()}) is None
    # The segment's own stale edges are ignored: the new rule replaces them.
    assert rule_find_cycle("a", ref("b"), {"a": {"a"}, "b": set()}) is None


@pytest.mark.django_db
def test_unknown_segment_is_an_error_naming_the_condition():
    SegmentFactory(slug="known")
    rule = {"all": [{"segment": "known", "op": "in"}, {"any": [{"segment": "nope", "op": "in"}]}]}
    with pytest.raises(RuleError) as caught:
        rule_compile(rule)
    assert caught.value.path == "all[1].any[0]"
    assert "segment 'nope' does not exist" in str(caught.value)


@pytest.mark.django_db
def test_references_validation_reports_the_cycle_path():
    SegmentFactory(slug="b", rule={"all": [{"segment": "c", "op": "in"}]})
    SegmentFactory(slug="c", rule={"any": [{"segment": "a", "op": "not_in"}]})
    SegmentFactory(slug="a")
    rule = {"all": [{"field": "email", "op": "is_set"}, {"segment": "b", "op": "in"}]}
    with pytest.raises(RuleError) as caught:
        rule_validate_references(rule, slug="a")
    assert caught.value.path == "all[1]"
    assert caught.value.message == "segment reference cycle: a -> b -> c -> a"
    # Without a slug (a preview) there is no cycle to close.
    assert set(rule_validate_references(rule)) == {"b"}


def _case_id(value) -> str:
    if isinstance(value, dict):
        return " ".join(str(v) for v in value.values())
    return "-"


# --- Compilation: fields ----------------------------------------------------------------------

FIELD_CASES = [
    # text, case-insensitive equality on email and names
    ({"field": "email", "op": "eq", "value": "alice.smith@example.COM"}, {"alice"}),
    ({"field": "email", "op": "neq", "value": "alice.smith@example.com"}, {"bob", "carol", "dave"}),
    ({"field": "email", "op": "in", "value": ["CAROL@example.com", "x@y.z"]}, {"carol"}),
    ({"field": "email", "op": "not_in", "value": ["carol@example.com"]}, {"alice", "bob", "dave"}),
    ({"field": "email", "op": "contains", "value": "EXAMPLE"}, {"alice", "carol"}),
    ({"field": "email", "op": "starts_with", "value": "Dave@"}, {"dave"}),
    ({"field": "email", "op": "contains", "value": "%"}, set()),
    ({"field": "email", "op": "contains", "value": "_"}, set()),
    ({"field": "email", "op": "is_set"}, {"alice", "carol", "dave"}),
    ({"field": "email", "op": "is_not_set"}, {"bob"}),
    ({"field": "first_name", "op": "eq", "value": "alice"}, {"alice"}),
    ({"field": "first_name", "op": "is_not_set"}, {"dave"}),
    ({"field": "first_name", "op": "is_set"}, {"alice", "bob", "carol"}),
    ({"field": "last_name", "op": "starts_with", "value": "sm"}, {"alice"}),
    ({"field": "last_name", "op": "neq", "value": "SMITH"}, {"bob", "carol", "dave"}),
    ({"field": "locale", "op": "in", "value": ["en-gb", "fr-FR"]}, {"alice", "carol"}),
    ({"field": "locale", "op": "is_not_set"}, {"bob", "dave"}),
    ({"field": "time_zone", "op": "contains", "value": "london"}, {"alice"}),
    # external id is exact
    ({"field": "external_id", "op": "eq", "value": "alice"}, {"alice"}),
    ({"field": "external_id", "op": "eq", "value": "ALICE"}, set()),
    ({"field": "external_id", "op": "starts_with", "value": "CA"}, {"carol"}),
    ({"field": "external_id", "op": "not_in", "value": ["alice", "bob"]}, {"carol", "dave"}),
    # choice
    ({"field": "subscription_status", "op": "eq", "value": "subscribed"}, {"alice", "carol"}),
    ({"field": "subscription_status", "op": "neq", "value": "subscribed"}, {"bob", "dave"}),
    ({"field": "subscription_status", "op": "in", "value": ["bounced", "complained"]}, {"dave"}),
    (
        {"field": "subscription_status", "op": "not_in", "value": ["bounced"]},
        {"alice", "bob", "carol"},
    ),
    # integers (carol has no metrics row: comparisons false, negations true)
    ({"field": "metrics.frequency", "op": "eq", "value": 5}, {"alice"}),
    ({"field": "metrics.frequency", "op": "eq", "value": 5.0}, {"alice"}),
    ({"field": "metrics.frequency", "op": "neq", "value": 5}, {"bob", "carol", "dave"}),
    ({"field": "metrics.frequency", "op": "in", "value": [0, 1]}, {"bob", "dave"}),
    ({"field": "metrics.frequency", "op": "not_in", "value": [0, 1]}, {"alice", "carol"}),
    ({"field": "metrics.frequency", "op": "gt", "value": 1}, {"alice"}),
    ({"field": "metrics.frequency", "op": "gte", "value": 1}, {"alice", "bob"}),
    ({"field": "metrics.frequency", "op": "lt", "value": 1}, {"dave"}),
    ({"field": "metrics.frequency", "op": "lte", "value": 1}, {"bob", "dave"}),
    ({"field": "metrics.frequency", "op": "between", "value": [1, 5]}, {"alice", "bob"}),
    ({"field": "metrics.frequency", "op": "is_set"}, {"alice", "bob", "dave"}),
    ({"field": "metrics.frequency", "op": "is_not_set"}, {"carol"}),
    ({"field": "metrics.recency_days", "op": "lt", "value": 30}, {"alice"}),
    ({"field": "metrics.recency_days", "op": "is_not_set"}, {"carol", "dave"}),
    ({"field": "metrics.recency_days", "op": "neq", "value": 3}, {"bob", "carol", "dave"}),
    ({"field": "metrics.emails_clicked", "op": "gte", "value": 1}, {"alice"}),
    ({"field": "metrics.emails_opened", "op": "eq", "value": 0}, {"bob", "dave"}),
    ({"field": "metrics.emails_sent", "op": "between", "value": [3, 3]}, {"bob"}),
    ({"field": "metrics.engagement_points", "op": "gt", "value": 50}, {"alice"}),
    ({"field": "metrics.r_score", "op": "gte", "value": 4}, {"alice"}),
    ({"field": "metrics.f_score", "op": "in", "value": [1, 2]}, {"bob"}),
    ({"field": "metrics.m_score", "op": "is_not_set"}, {"carol", "dave"}),
    ({"field": "metrics.m_score", "op": "not_in", "value": [3]}, {"bob", "carol", "dave"}),
    # decimals
    ({"field": "metrics.monetary", "op": "gte", "value": 120.5}, {"alice"}),
    ({"field": "metrics.monetary", "op": "gt", "value": 120.5}, set()),
    ({"field": "metrics.monetary", "op": "eq", "value": 10}, {"bob"}),
    ({"field": "metrics.monetary", "op": "between", "value": [0, 10.0]}, {"bob", "dave"}),
    ({"field": "metrics.monetary", "op": "lt", "value": 0.01}, {"dave"}),
    ({"field": "metrics.monetary", "op": "lte", "value": 10}, {"bob", "dave"}),
    ({"field": "metrics.monetary", "op": "neq", "value": 10}, {"alice", "carol", "dave"}),
    ({"field": "metrics.monetary", "op": "in", "value": [10, 120.5]}, {"alice", "bob"}),
    ({"field": "metrics.monetary", "op": "not_in", "value": [0]}, {"alice", "bob", "carol"}),
    ({"field": "metrics.monetary", "op": "is_set"}, {"alice", "bob", "dave"}),
    ({"field": "metrics.monetary", "op": "is_not_set"}, {"carol"}),
    # metric labels: exact, "" is not set
    ({"field": "metrics.rfm_segment", "op": "eq", "value": "champions"}, {"alice"}),
    ({"field": "metrics.rfm_segment", "op": "eq", "value": "Champions"}, set()),
    (
        {"field": "metrics.rfm_segment", "op": "in", "value": ["champions", "hibernating"]},
        {"alice", "bob"},
    ),
    ({"field": "metrics.rfm_segment", "op": "neq", "value": "champions"}, {"bob", "carol", "dave"}),
    ({"field": "metrics.rfm_segment", "op": "is_set"}, {"alice", "bob"}),
    ({"field": "metrics.rfm_segment", "op": "is_not_set"}, {"carol", "dave"}),
    ({"field": "metrics.rfm_segment", "op": "contains", "value": "CHAMP"}, {"alice"}),
    ({"field": "metrics.engagement_tier", "op": "starts_with", "value": "st"}, {"alice"}),
    (
        {"field": "metrics.engagement_tier", "op": "not_in", "value": ["Star"]},
        {"bob", "carol", "dave"},
    ),
    # datetimes: days are whole days in the site time zone (UTC here)
    ({"field": "created_at", "op": "before", "value": "2024-01-01"}, {"dave"}),
    ({"field": "created_at", "op": "before", "value": "2024-01-15T09:30:00Z"}, {"dave"}),
    (
        {"field": "created_at", "op": "before", "value": "2024-01-15T09:30:01+00:00"},
        {"alice", "dave"},
    ),
    ({"field": "created_at", "op": "after", "value": "2024-06-30"}, {"carol"}),
    ({"field": "created_at", "op": "after", "value": "2024-06-30T22:59:59"}, {"bob", "carol"}),
    (
        {"field": "created_at", "op": "between", "value": ["2024-01-15", "2024-06-30"]},
        {"alice", "bob"},
    ),
    (
        {"field": "created_at", "op": "between", "value": ["2024-01-01", "2024-06-30T22:00:00Z"]},
        {"alice"},
    ),
    ({"field": "created_at", "op": "within_last_days", "value": 15}, {"bob", "carol"}),
    ({"field": "created_at", "op": "within_last_days", "value": 14}, set()),
    ({"field": "created_at", "op": "not_within_last_days", "value": 15}, {"alice", "dave"}),
    ({"field": "updated_at", "op": "before", "value": "2024-07-01"}, {"alice", "bob", "dave"}),
    ({"field": "metrics.last_purchase_at", "op": "within_last_days", "value": 3}, {"alice"}),
    ({"field": "metrics.last_purchase_at", "op": "within_last_days", "value": 2}, set()),
    ({"field": "metrics.last_purchase_at", "op": "not_within_last_days", "value": 30}, {"bob"}),
    ({"field": "metrics.last_purchase_at", "op": "is_not_set"}, {"carol", "dave"}),
    ({"field": "metrics.first_purchase_at", "op": "before", "value": "2024-04-01"}, {"alice"}),
    ({"field": "metrics.last_activity_at", "op": "after", "value": "2024-07-13"}, {"alice"}),
    ({"field": "metrics.last_activity_at", "op": "is_set"}, {"alice", "bob"}),
    # attributes: compared as JSON values
    ({"field": "attributes.plan", "op": "eq", "value": "pro"}, {"alice"}),
    ({"field": "attributes.plan", "op": "eq", "value": "PRO"}, set()),
    ({"field": "attributes.plan", "op": "neq", "value": "pro"}, {"bob", "carol", "dave"}),
    ({"field": "attributes.plan", "op": "in", "value": ["pro", "team"]}, {"alice", "bob"}),
    ({"field": "attributes.plan", "op": "not_in", "value": ["pro", "team"]}, {"carol", "dave"}),
    ({"field": "attributes.plan", "op": "contains", "value": "R"}, {"alice"}),
    ({"field": "attributes.plan", "op": "starts_with", "value": "TE"}, {"bob"}),
    ({"field": "attributes.plan", "op": "is_set"}, {"alice", "bob"}),
    ({"field": "attributes.plan", "op": "is_not_set"}, {"carol", "dave"}),
    ({"field": "attributes.seats", "op": "eq", "value": 5}, {"alice"}),
    ({"field": "attributes.seats", "op": "eq", "value": 5.0}, {"alice"}),
    ({"field": "attributes.seats", "op": "eq", "value": "5"}, {"bob"}),
    ({"field": "attributes.seats", "op": "in", "value": [5, "5"]}, {"alice", "bob"}),
    ({"field": "attributes.seats", "op": "gt", "value": 4}, {"alice", "carol"}),
    ({"field": "attributes.seats", "op": "gte", "value": 12.5}, {"carol"}),
    ({"field": "attributes.seats", "op": "lt", "value": 10}, {"alice"}),
    ({"field": "attributes.seats", "op": "lte", "value": 5}, {"alice"}),
    ({"field": "attributes.seats", "op": "between", "value": [5, 12.5]}, {"alice", "carol"}),
    ({"field": "attributes.seats", "op": "contains", "value": "5"}, {"bob"}),
    ({"field": "attributes.seats", "op": "neq", "value": 5}, {"bob", "carol", "dave"}),
    ({"field": "attributes.beta", "op": "eq", "value": True}, {"alice"}),
    ({"field": "attributes.beta", "op": "eq", "value": False}, {"bob"}),
    ({"field": "attributes.beta", "op": "eq", "value": 1}, set()),
    ({"field": "attributes.beta", "op": "neq", "value": True}, {"bob", "carol", "dave"}),
    ({"field": "attributes.tags", "op": "eq", "value": "a"}, set()),
    ({"field": "attributes.tags", "op": "is_set"}, {"alice"}),
    ({"field": "attributes.a__b", "op": "eq", "value": "x"}, {"alice"}),
    ({"field": "attributes.contains", "op": "eq", "value": "y"}, {"bob"}),
    ({"field": "attributes.missing", "op": "neq", "value": "x"}, ALL),
    ({"field": "attributes.missing", "op": "lt", "value": 0}, set()),
]


@pytest.mark.parametrize(("condition", "expected"), FIELD_CASES, ids=_case_id)
def test_field_conditions(people, condition, expected):
    assert matches(one(condition)) == expected


def test_every_operator_of_every_field_type_is_exercised():
    covered = {(rule_field(c["field"])[0].type, c["op"]) for c, _ in FIELD_CASES}
    for field in (*RULE_FIELDS.values(), ATTRIBUTE_FIELD):
        for op in field.ops:
            assert (field.type, op) in covered, (field.name, op)


def test_negative_operators_are_exact_complements(people):
    for condition, _ in FIELD_CASES:
        op = condition["op"]
        if op in ("eq", "in", "is_set"):
            negated = {**condition, "op": {"eq": "neq", "in": "not_in", "is_set": "is_not_set"}[op]}
            assert matches(one(condition)) | matches(one(negated)) == ALL, condition
            assert not matches(one(condition)) & matches(one(negated)), condition


def test_dates_are_days_in_the_site_time_zone(people, settings):
    settings.TIME_ZONE = "Europe/Paris"
    # bob was created 2024-06-30 23:00 UTC = 2024-07-01 01:00 in Paris.
    assert matches(one({"field": "created_at", "op": "after", "value": "2024-06-30"})) == {
        "bob",
        "carol",
    }
    # A naive date-time is read in the site time zone too.
    assert matches(
        one({"field": "created_at", "op": "before", "value": "2024-07-01T01:00:01"})
    ) == {"alice", "bob", "dave"}


# --- Compilation: groups ------------------------------------------------------------------------


def test_empty_groups(people):
    assert matches({"all": []}) == ALL
    assert matches({"any": []}) == set()
    assert (
        matches({"any": [{"all": []}, {"field": "external_id", "op": "eq", "value": "bob"}]}) == ALL
    )
    assert (
        matches({"all": [{"any": []}, {"field": "external_id", "op": "eq", "value": "bob"}]})
        == set()
    )
    assert matches(
        {"any": [{"any": []}, {"field": "external_id", "op": "eq", "value": "bob"}]}
    ) == {"bob"}
    assert matches(
        {"all": [{"all": []}, {"field": "external_id", "op": "eq", "value": "bob"}]}
    ) == {"bob"}


def test_nested_groups(people):
    rule = {
        "any": [
            {
                "all": [
                    {"field": "subscription_status", "op": "eq", "value": "subscribed"},
                    {"field": "metrics.frequency", "op": "gte", "value": 1},
                ]
            },
            {
                "all": [
                    {"field": "attributes.plan", "op": "is_not_set"},
                    {
                        "any": [
                            {"field": "email", "op": "is_not_set"},
                            {"field": "first_name", "op": "is_not_set"},
                        ]
                    },
                ]
            },
        ]
    }
    assert matches(rule) == {"alice", "dave"}
    # A metrics condition inside an OR must not drop customers without metrics.
    rule = {
        "any": [
            {"field": "metrics.frequency", "op": "gte", "value": 5},
            {"field": "locale", "op": "eq", "value": "fr-fr"},
        ]
    }
    assert matches(rule) == {"alice", "carol"}
    rule = {
        "all": [
            {"field": "metrics.frequency", "op": "neq", "value": 1},
            {
                "any": [
                    {"field": "metrics.r_score", "op": "is_not_set"},
                    {"field": "metrics.r_score", "op": "gte", "value": 5},
                ]
            },
        ]
    }
    assert matches(rule) == {"alice", "carol", "dave"}


def test_compiled_rule_is_one_query(events, django_assert_num_queries):
    rule = {
        "all": [
            {"field": "metrics.frequency", "op": "gte", "value": 0},
            {
                "any": [
                    {"field": "attributes.plan", "op": "eq", "value": "pro"},
                    {"event": "purchase", "op": "never"},
                ]
            },
            {"event": "session", "op": "fewer_than", "count": 3, "days": 30},
        ]
    }
    # On PostgreSQL, event conditions read where the event summary stops.
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 0):
        q = rule_compile(rule, now=NOW)
    with django_assert_num_queries(1):
        assert set(Customer.objects.filter(q).values_list("external_id", flat=True)) == {"alice"}


# --- Compilation: events ------------------------------------------------------------------------

EVENT_CASES = [
    ({"event": "purchase", "op": "at_least", "count": 1}, {"alice", "bob"}),
    ({"event": "purchase", "op": "at_least", "count": 1, "days": 30}, {"alice"}),
    ({"event": "purchase", "op": "at_least", "count": 2, "days": 30}, {"alice"}),
    ({"event": "purchase", "op": "at_least", "count": 3, "days": 30}, set()),
    ({"event": "purchase", "op": "at_least", "count": 3}, {"alice"}),
    ({"event": "purchase", "op": "at_least", "count": 1, "days": 40}, {"alice"}),  # NOW-40d counts
    ({"event": "purchase", "op": "at_least", "count": 3, "days": 40}, {"alice"}),
    ({"event": "purchase", "op": "at_least", "count": 2, "days": 100}, {"alice"}),
    ({"event": "purchase", "op": "fewer_than", "count": 2, "days": 30}, {"bob", "carol", "dave"}),
    ({"event": "purchase", "op": "fewer_than", "count": 3}, {"bob", "carol", "dave"}),
    ({"event": "purchase", "op": "fewer_than", "count": 1}, {"carol", "dave"}),
    ({"event": "purchase", "op": "never"}, {"carol", "dave"}),
    ({"event": "purchase", "op": "never", "days": 90}, {"bob", "carol", "dave"}),
    ({"event": "session", "op": "never", "days": 90}, {"bob", "carol"}),
    ({"event": "session", "op": "at_least", "count": 3, "days": 1}, {"dave"}),
    ({"event": "session", "op": "fewer_than", "count": 3, "days": 1}, {"alice", "bob", "carol"}),
    ({"event": "signup", "op": "never"}, ALL),
    ({"event": "signup", "op": "at_least", "count": 1}, set()),
    ({"event": "signup", "op": "fewer_than", "count": 5}, ALL),
]


@pytest.mark.parametrize(("condition", "expected"), EVENT_CASES, ids=_case_id)
def test_event_conditions(summarized_events, condition, expected):
    assert matches(one(condition)) == expected


def test_event_windows_move_with_now(summarized_events):
    condition = one({"event": "purchase", "op": "at_least", "count": 1, "days": 30})
    assert matches(condition, now=NOW) == {"alice"}
    assert matches(condition, now=NOW + 31 * DAY) == set()
    assert matches(condition, now=NOW - 80 * DAY) == {"alice", "bob"}


def test_event_conditions_combine_with_or_and_not(summarized_events):
    rule = {
        "any": [
            {"event": "purchase", "op": "never"},
            {"event": "session", "op": "at_least", "count": 1, "days": 7},
        ]
    }
    assert matches(rule) == {"alice", "carol", "dave"}


# --- Compilation: segments ----------------------------------------------------------------------


def test_segment_conditions_use_current_membership(people):
    vip = SegmentFactory(slug="vip", kind="static")
    SegmentMembership.objects.create(segment=vip, customer=people["alice"], joined_at=NOW)
    SegmentMembership.objects.create(
        segment=vip, customer=people["bob"], joined_at=NOW - 2 * DAY, left_at=NOW - DAY
    )
    assert matches(one({"segment": "vip", "op": "in"})) == {"alice"}
    assert matches(one({"segment": "vip", "op": "not_in"})) == {"bob", "carol", "dave"}
    rule = {
        "any": [
            {"segment": "vip", "op": "in"},
            {"field": "external_id", "op": "eq", "value": "dave"},
        ]
    }
    assert matches(rule) == {"alice", "dave"}


def test_compiling_segment_references_costs_one_query(people, django_assert_num_queries):
    SegmentFactory(slug="vip", kind="static")
    SegmentFactory(slug="new", kind="static")
    rule = {
        "all": [{"segment": "vip", "op": "not_in"}, {"any": [{"segment": "new", "op": "not_in"}]}]
    }
    with django_assert_num_queries(1):
        q = rule_compile(rule)
    with django_assert_num_queries(1):
        assert Customer.objects.filter(q).count() == 4


# --- PostgreSQL plans ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_plans_joins_not_per_customer_subplans(events, require_postgres):
    SegmentFactory(slug="vip", kind="static")
    rule = {
        "all": [
            {"event": "purchase", "op": "at_least", "count": 2, "days": 30},
            {"event": "session", "op": "never", "days": 90},
            {"event": "session", "op": "fewer_than", "count": 3},
            {"segment": "vip", "op": "not_in"},
            {"field": "attributes.plan", "op": "eq", "value": "pro"},
        ]
    }
    qs = Customer.objects.filter(rule_compile(rule, now=NOW))
    plan = qs.explain()
    assert "SubPlan" not in plan, plan
    assert plan.count("Anti Join") == 3, plan
    assert connection.vendor == "postgresql"
    sql = str(qs.query)
    assert '"attributes" @>' in sql


def test_now_defaults_to_the_current_time(people):
    condition = one({"field": "created_at", "op": "within_last_days", "value": 1})
    Customer.objects.filter(external_id="dave").update(created_at=dt.datetime.now(dt.UTC))
    assert set(
        Customer.objects.filter(rule_compile(condition)).values_list("external_id", flat=True)
    ) == {"dave"}


def test_compiled_rule_works_inside_a_subquery(events):
    """Campaigns use ``pk__in=Customer.objects.filter(q)``: outer references must relabel."""
    SegmentFactory(slug="vip", kind="static")
    rule = {
        "all": [
            {"event": "session", "op": "fewer_than", "count": 3},
            {"event": "purchase", "op": "never", "days": 30},
            {"segment": "vip", "op": "not_in"},
            {"field": "metrics.frequency", "op": "neq", "value": 5},
        ]
    }
    inner = Customer.objects.filter(rule_compile(rule, now=NOW)).values("pk")
    outer = Customer.objects.filter(pk__in=inner).values_list("external_id", flat=True)
    assert set(outer) == {"bob", "carol"}


# --- Where a rule is evaluated: the customers, or the metrics alone -----------------------------

METRICS_ONLY_RULES = [
    one({"field": "metrics.frequency", "op": "gte", "value": 1}),
    one({"field": "metrics.rfm_segment", "op": "is_set"}),
    {
        "any": [
            {"all": [{"field": "metrics.r_score", "op": "gte", "value": 4}]},
            {"field": "metrics.engagement_tier", "op": "eq", "value": "Star"},
        ]
    },
    {
        "all": [
            {"field": "metrics.frequency", "op": "lte", "value": 1},
            {"field": "metrics.frequency", "op": "neq", "value": 1},
            {"event": "purchase", "op": "fewer_than", "count": 2},
            {"segment": "vip", "op": "not_in"},
        ]
    },
]
CUSTOMER_RULES = [
    {"all": []},
    one({"field": "metrics.frequency", "op": "neq", "value": 1}),
    one({"field": "metrics.recency_days", "op": "is_not_set"}),
    one({"field": "metrics.frequency", "op": "not_in", "value": [1]}),
    {
        "any": [
            {"field": "metrics.frequency", "op": "gte", "value": 1},
            {"event": "session", "op": "at_least", "count": 1},
        ]
    },
    {"any": []},
    {
        "all": [
            {"field": "metrics.frequency", "op": "gte", "value": 1},
            {"field": "email", "op": "contains", "value": "example"},
        ]
    },
    {
        "all": [
            {"field": "metrics.frequency", "op": "gte", "value": 1},
            {"field": "attributes.plan", "op": "eq", "value": "pro"},
        ]
    },
]


def _from_table(rule: dict) -> str:
    sql, _ = rule_matches(rule, now=NOW).ids.query.sql_with_params()
    return sql.split(" FROM ", 1)[1].split()[0].strip('"')


@pytest.mark.postgres
def test_metrics_only_rules_read_the_metrics_table_alone(events, require_postgres):
    SegmentFactory(slug="vip", kind="static")
    for rule in METRICS_ONLY_RULES:
        assert _from_table(rule) == "segmentation_customermetrics", rule
        sql = str(rule_matches(rule, now=NOW).ids.query)
        assert 'JOIN "segmentation_customer"' not in sql, rule
    for rule in CUSTOMER_RULES:
        if rule == {"any": []}:
            continue  # matches nobody: no SQL at all
        assert _from_table(rule) == "segmentation_customer", rule
    expected = [{"alice", "bob"}, {"alice", "bob"}, {"alice"}, {"dave"}]
    for rule, found in zip(METRICS_ONLY_RULES, expected, strict=True):
        assert matches(rule) == found, rule


def test_metrics_only_rules_read_the_customers_elsewhere(events):
    """SQLite (development) has no stale-list triggers: every rule reads the customers."""
    SegmentFactory(slug="vip", kind="static")
    expected = (
        "segmentation_customermetrics"
        if connection.vendor == "postgresql"
        else "segmentation_customer"
    )
    for rule in METRICS_ONLY_RULES:
        assert _from_table(rule) == expected, rule


@pytest.mark.postgres
@pytest.mark.parametrize("hashed_max", [10_000, 0], ids=["short list", "long list"])
def test_metrics_rows_of_deleted_customers_are_not_counted(
    events, require_postgres, monkeypatch, hashed_max
):
    from segmentation import rules
    from segmentation.models import CustomerMetrics, StaleCustomerMetrics
    from segmentation.selectors import segment_preview
    from segmentation.services.metrics import metrics_recompute

    monkeypatch.setattr(rules, "_STALE_HASHED_MAX", hashed_max)
    rule = one({"field": "metrics.frequency", "op": "gte", "value": 1})
    alice, bob = events["alice"], events["bob"]
    assert matches(rule) == {"alice", "bob"}
    # Behind the ORM's back: the metrics row stays, the trigger lists alice as stale.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM segmentation_customer WHERE id = %s", [alice.pk])
    assert CustomerMetrics.objects.filter(pk=alice.pk).exists()
    assert StaleCustomerMetrics.objects.filter(customer_id=alice.pk).exists()
    sql = str(rule_matches(rule, now=NOW).ids.query)
    hashed = '"customer_id" IN (SELECT V0."customer_id" AS "customer_id" FROM "segmentation_stale'
    assert (hashed in sql) == (hashed_max > 0), sql
    assert set(rule_matches(rule, now=NOW).ids.values_list("cid", flat=True)) == {bob.pk}
    assert rule_matches(rule, now=NOW).ids.count() == 1
    assert segment_preview(rule=rule, now=NOW).count == 1
    # A stale customer who still exists is counted.
    StaleCustomerMetrics.objects.create(customer_id=bob.pk)
    assert rule_matches(rule, now=NOW).ids.count() == 1
    metrics_recompute(as_of=NOW)
    assert not CustomerMetrics.objects.filter(pk=alice.pk).exists()
    assert not StaleCustomerMetrics.objects.exists()
    assert matches(rule) == {"bob"}


@pytest.mark.postgres
def test_truncating_the_customers_empties_their_metrics(people, require_postgres):
    from segmentation.models import CustomerMetrics, StaleCustomerMetrics

    StaleCustomerMetrics.objects.create(customer_id=people["bob"].pk)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE segmentation_customer CASCADE")
    assert not CustomerMetrics.objects.exists()
    assert not StaleCustomerMetrics.objects.exists()
    rule = one({"field": "metrics.frequency", "op": "gte", "value": 0})
    assert rule_matches(rule).ids.count() == 0


def test_customer_rules_join_only_the_metrics_rows_their_conditions_can_use(events):
    rule = {
        "any": [
            {"field": "metrics.frequency", "op": "gte", "value": 5},
            {"field": "email", "op": "contains", "value": "sample"},
            {"field": "locale", "op": "eq", "value": "fr-fr"},
        ]
    }
    sql = str(rule_matches(rule, now=NOW).ids.query)
    # The join carries the metrics condition, so only those rows are joined ...
    joined = r'JOIN "segmentation_customermetrics" rule_metrics ON \(.*"frequency" >= 5'
    assert re.search(joined, sql), sql
    # ... and a customer whose row fails it still matches through the other conditions:
    # dave (frequency 0, a sample.org address), carol (no metrics row, French).
    assert matches(rule) == {"alice", "carol", "dave"}
    # A negative metrics condition holds without a row: the whole metrics table is joined.
    negative = {
        "any": [
            {"field": "metrics.frequency", "op": "neq", "value": 1},
            {"field": "email", "op": "contains", "value": "sample"},
        ]
    }
    assert "rule_metrics" not in str(rule_matches(negative, now=NOW).ids.query)
    assert matches(negative) == {"alice", "carol", "dave"}


def test_cheaper_conditions_are_tested_first(events):
    rule = {
        "any": [
            {"event": "purchase", "op": "at_least", "count": 1},
            {"field": "attributes.plan", "op": "eq", "value": "pro"},
            {"field": "locale", "op": "eq", "value": "fr-fr"},
        ]
    }
    where = str(rule_matches(rule, now=NOW).ids.query).split(" WHERE ", 1)[1]
    assert where.index("locale") < where.index("attributes") < where.index("purchase")
    assert matches(rule) == {"alice", "bob", "carol"}


NON_ASCII_CASES = [
    ({"field": "first_name", "op": "eq", "value": "émile"}, {"emile-1"}),
    ({"field": "first_name", "op": "eq", "value": "ÉMILE"}, {"emile-1"}),
    ({"field": "first_name", "op": "neq", "value": "émile"}, {"emil-2"}),
    ({"field": "last_name", "op": "in", "value": ["zoë", "x"]}, {"emile-1"}),
    ({"field": "last_name", "op": "not_in", "value": ["zoë"]}, {"emil-2"}),
    ({"field": "last_name", "op": "contains", "value": "oË"}, {"emile-1"}),
    ({"field": "first_name", "op": "starts_with", "value": "é"}, {"emile-1"}),
    ({"field": "external_id", "op": "starts_with", "value": "EMI"}, {"emile-1", "emil-2"}),
    ({"field": "email", "op": "contains", "value": "ÜBER"}, {"emile-1"}),
    ({"field": "attributes.city", "op": "contains", "value": "ÜBER"}, {"emile-1"}),
    ({"field": "attributes.city", "op": "starts_with", "value": "über"}, {"emile-1"}),
    ({"field": "attributes.city", "op": "starts_with", "value": "ul"}, {"emil-2"}),
    # The empty string is not set, for attributes as for every field.
    ({"field": "attributes.plan", "op": "is_set"}, {"emil-2"}),
    ({"field": "attributes.plan", "op": "is_not_set"}, {"emile-1"}),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("condition", "expected"), NON_ASCII_CASES, ids=_case_id)
def test_case_is_ignored_beyond_ascii_and_empty_attributes_are_not_set(condition, expected):
    from segmentation.tests.factories import CustomerFactory

    CustomerFactory(
        external_id="emile-1",
        email="émile@über.example",
        first_name="Émile",
        last_name="ZOË",
        attributes={"city": "Überlingen", "plan": ""},
    )
    CustomerFactory(
        external_id="emil-2",
        email="emil@example.com",
        first_name="Emil",
        last_name="Zoe",
        attributes={"city": "Ulm", "plan": "pro"},
    )
    assert matches(one(condition)) == expected
