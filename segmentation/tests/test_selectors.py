from __future__ import annotations

import json
import re
from contextlib import contextmanager

import pytest
from django.db import connection
from django.db.models import F
from django.db.models.expressions import RawSQL
from django.test.utils import CaptureQueriesContext

from segmentation.models import Customer, EngagementModel, Segment, SegmentMembership
from segmentation.rules import RuleError, RuleMatches
from segmentation.selectors import (
    PreviewCustomer,
    SegmentPreview,
    SegmentPreviewTooSlow,
    rule_builder_catalogue,
    segment_members,
    segment_memberships,
    segment_preview,
    segments_referencing,
)
from segmentation.services.segments import (
    segment_create,
    segment_refresh,
    static_segment_add,
    static_segment_remove,
)
from segmentation.tests.rules_helpers import DAY, NOW, make_events, make_people

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(db):
    people = make_people()
    make_events(people)
    return people


RULES = [
    {"all": []},
    {"any": []},
    {"all": [{"field": "subscription_status", "op": "eq", "value": "subscribed"}]},
    {
        "any": [
            {"event": "purchase", "op": "never"},
            {"field": "metrics.frequency", "op": "gte", "value": 5},
        ]
    },
    {
        "all": [
            {"field": "attributes.plan", "op": "neq", "value": "pro"},
            {"event": "session", "op": "fewer_than", "count": 2},
        ]
    },
    {"all": [{"field": "metrics.last_purchase_at", "op": "within_last_days", "value": 30}]},
]


@pytest.fixture
def data_queries():
    """Like django_assert_num_queries, counting only the queries that read data (not the
    preview transaction's savepoints and SET LOCAL)."""

    @contextmanager
    def expect(n: int):
        with CaptureQueriesContext(connection) as captured:
            yield
        reads = [
            q["sql"]
            for q in captured.captured_queries
            if not re.match(r"\s*(SAVEPOINT|RELEASE SAVEPOINT|SELECT current_setting)", q["sql"])
        ]
        assert len(reads) == n, reads

    return expect


def test_preview_counts_and_samples_the_lowest_ids(people, data_queries):
    rule = {"all": [{"field": "email", "op": "is_set"}]}
    with data_queries(2):
        preview = segment_preview(rule=rule, sample_size=2, now=NOW)
    alice, carol = people["alice"], people["carol"]
    assert preview == SegmentPreview(
        count=3,
        sample=[
            PreviewCustomer(alice.pk, "alice", "Alice.Smith@Example.com", "Alice Smith"),
            PreviewCustomer(carol.pk, "carol", "carol@example.com", "Carol"),
        ],
    )


def test_preview_of_a_rule_matching_nobody_runs_no_query(
    people, django_assert_num_queries, data_queries
):
    with django_assert_num_queries(0):
        assert segment_preview(rule={"any": []}) == SegmentPreview(count=0, sample=[])
    with data_queries(1):
        preview = segment_preview(
            rule={"all": [{"field": "external_id", "op": "eq", "value": "x"}]}
        )
    assert preview.count == 0 and preview.sample == []


def test_preview_without_sample(people, data_queries):
    with data_queries(1):
        assert segment_preview(rule={"all": []}, sample_size=0).count == 4


@pytest.mark.postgres
def test_a_preview_that_takes_too_long_is_stopped_with_a_clear_error(
    require_postgres, people, monkeypatch
):
    from segmentation import selectors

    slow = Customer.objects.filter(
        pk__in=RawSQL("SELECT id FROM segmentation_customer, pg_sleep(0.5)", [])
    )
    monkeypatch.setattr(
        selectors,
        "rule_matches",
        lambda rule, now=None, **kw: RuleMatches(ids=slow.values(cid=F("pk")), customers=slow),
    )
    monkeypatch.setattr(selectors, "PREVIEW_TIMEOUT_SECONDS", 0.05)
    with pytest.raises(SegmentPreviewTooSlow, match="took longer than 0.05 seconds") as caught:
        segment_preview(rule={"all": []})
    assert caught.value.field == "rule"
    # The connection is usable afterwards (the failed transaction was rolled back).
    assert Customer.objects.filter(pk=people["alice"].pk).exists()


@pytest.mark.postgres
@pytest.mark.parametrize("workers", [None, 3])
def test_preview_runs_with_memory_for_hashed_subqueries_and_a_time_limit(
    require_postgres, people, settings, workers
):
    if workers is not None:
        settings.SEGMENT_PREVIEW_PARALLEL_WORKERS = workers
    seen = {}
    settings_sql = (
        "SELECT current_setting('work_mem'), current_setting('statement_timeout'), "
        "current_setting('max_parallel_workers_per_gather'), current_setting('jit'), "
        "current_setting('enable_hashagg')"
    )

    def spy(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "count(" in sql.lower():
            with connection.cursor() as cursor:
                cursor.execute(settings_sql)
                seen["settings"] = cursor.fetchone()
        return result

    with connection.cursor() as cursor:
        cursor.execute(settings_sql)
        before = cursor.fetchone()
    with connection.execute_wrapper(spy):
        segment_preview(rule={"all": []}, sample_size=0)
    assert seen["settings"] == ("128MB", "15s", str(workers or 1), "off", "off")
    with connection.cursor() as cursor:  # and only for the preview
        cursor.execute(settings_sql)
        assert cursor.fetchone() == before


def test_preview_rejects_invalid_rules(people):
    with pytest.raises(RuleError, match=r"^all\[0\]: metrics.frequncy is not a known field"):
        segment_preview(rule={"all": [{"field": "metrics.frequncy", "op": "gte", "value": 1}]})
    with pytest.raises(RuleError, match="segment 'ghost' does not exist"):
        segment_preview(rule={"all": [{"segment": "ghost", "op": "in"}]})


@pytest.mark.parametrize("rule", RULES)
def test_preview_count_equals_refreshed_size(people, rule):
    preview = segment_preview(rule=rule, now=NOW)
    segment = segment_create(name="Same", kind="rule", rule=rule)
    result = segment_refresh(segment=segment, now=NOW)
    assert result.size == preview.count
    assert set(segment_members(segment=segment).values_list("pk", flat=True)) >= {
        c.id for c in preview.sample
    }


def test_preview_count_equals_size_with_segment_references(people):
    vip = segment_create(name="VIP", kind="static")
    static_segment_add(segment=vip, external_ids=["alice", "dave"], now=NOW)
    rule = {
        "any": [
            {"segment": "vip", "op": "not_in"},
            {"field": "metrics.frequency", "op": "gt", "value": 1},
        ]
    }
    preview = segment_preview(rule=rule, now=NOW)
    assert preview.count == 3
    segment = segment_create(name="Others", kind="rule", rule=rule)
    assert segment_refresh(segment=segment, now=NOW).size == 3


def test_segment_members_are_current_members(people):
    static = segment_create(name="Hand", kind="static")
    static_segment_add(segment=static, external_ids=["alice", "bob"], now=NOW)
    static_segment_remove(segment=static, external_ids=["bob"], now=NOW + DAY)
    assert list(segment_members(segment=static).values_list("external_id", flat=True)) == ["alice"]
    history = list(
        segment_memberships(segment=static).values_list("customer__external_id", "left_at")
    )
    assert sorted(history) == [("alice", None), ("bob", NOW + DAY)]
    assert SegmentMembership.objects.filter(segment=static).count() == 2


def test_segments_referencing(people):
    segment_create(name="Base", kind="static", slug="base")
    segment_create(
        name="B", kind="rule", rule={"all": [{"any": [{"segment": "base", "op": "in"}]}]}
    )
    segment_create(name="A", kind="rule", rule={"all": [{"segment": "base", "op": "not_in"}]})
    segment_create(name="C", kind="rule", rule={"all": []})
    assert [s.name for s in segments_referencing(slug="base")] == ["A", "B"]
    assert segments_referencing(slug="b") == []


def test_builder_catalogue_fills_choices_from_the_database(people):
    Segment.objects.filter(kind="rfm").delete()
    segment_create(name="Champions", kind="rfm", rule={"r": [4, 5], "f": [4, 5]})
    segment_create(name="VIP", kind="static")
    EngagementModel.objects.all().delete()
    EngagementModel.objects.create(
        name="m",
        is_active=True,
        definition={
            "rules": [],
            "tiers": [{"name": "Star", "min_points": 70}, {"name": "Lost", "min_points": 0}],
        },
    )
    catalogue = json.loads(json.dumps(rule_builder_catalogue()))
    fields = {f["name"]: f for f in catalogue["fields"]}
    assert fields["metrics.rfm_segment"]["choices"] == [["champions", "Champions"]]
    assert fields["metrics.engagement_tier"]["choices"] == [["Star", "Star"], ["Lost", "Lost"]]
    assert {"slug": "vip", "name": "VIP", "kind": "static"} in catalogue["segments"]
    EngagementModel.objects.all().delete()
    fields = {f["name"]: f for f in rule_builder_catalogue()["fields"]}
    assert sorted(fields["metrics.engagement_tier"]["choices"]) == [
        ["Lost", "Lost"],
        ["Star", "Star"],
    ]
