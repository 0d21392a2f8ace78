"""metrics_recompute: exact against an independent reference, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, transaction

from abtest.errors import ServiceError
from segmentation.defaults import ENGAGEMENT_MODEL, RFM_SEGMENTS
from segmentation.models import (
    Customer,
    CustomerMetrics,
    EngagementModel,
    Event,
    Segment,
    SegmentKind,
)
from segmentation.services import metrics as metrics_module
from segmentation.services.metrics import (
    METRIC_FAMILIES,
    metrics_recompute,
    rfm_segment_rule_validate,
)
from segmentation.tests.metrics_reference import (
    AS_OF,
    DAY,
    US,
    RefEvent,
    random_events,
    reference_metrics,
)
from segmentation.tests.summary_helpers import EVENT_SOURCES, use_event_source

pytestmark = pytest.mark.django_db

FIELDS = [
    "first_purchase_at",
    "last_purchase_at",
    "recency_days",
    "frequency",
    "monetary",
    "last_activity_at",
    "event_counts_30d",
    "event_counts_90d",
    "emails_sent",
    "emails_opened",
    "emails_clicked",
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "engagement_points",
    "engagement_tier",
]

DEFAULT_SEGMENTS = [(slug, {"r": list(r), "f": list(f)}) for _, slug, r, f, _ in RFM_SEGMENTS]


# --- helpers ---------------------------------------------------------------------------------


def make_customers(n: int) -> list[int]:
    start = Customer.objects.count()
    Customer.objects.bulk_create(
        Customer(external_id=f"m{start + i:05d}", email=f"m{start + i:05d}@example.com")
        for i in range(n)
    )
    return list(Customer.objects.order_by("pk").values_list("pk", flat=True))[-n:]


def save_events(events: list[RefEvent]) -> None:
    Event.objects.bulk_create(
        Event(customer_id=e.customer_id, type=e.type, occurred_at=e.occurred_at, value=e.value)
        for e in events
    )


def set_emails(emails: dict[int, tuple[int, int, int]]) -> None:
    """As the campaigns app would: metrics rows holding email counts (and stale metrics)."""
    CustomerMetrics.objects.bulk_create(
        CustomerMetrics(
            customer_id=cid,
            emails_sent=s,
            emails_opened=o,
            emails_clicked=c,
            frequency=99,
            rfm_segment="stale",
            engagement_tier="stale",
        )
        for cid, (s, o, c) in emails.items()
    )


def stored() -> dict[int, dict]:
    return {
        row.pop("customer_id"): row
        for row in CustomerMetrics.objects.values("customer_id", *FIELDS)
    }


def rfm_segments_in_db() -> list[tuple[str, dict]]:
    return list(
        Segment.objects.filter(kind=SegmentKind.RFM)
        .order_by("position", "name", "pk")
        .values_list("slug", "rule")
    )


def assert_matches(expected: dict[int, dict], actual: dict[int, dict]) -> None:
    assert actual.keys() == expected.keys()
    mismatches = {
        cid: {
            f: (expected[cid][f], actual[cid][f])
            for f in FIELDS
            if expected[cid][f] != actual[cid][f]
        }
        for cid in expected
    }
    mismatches = {cid: m for cid, m in mismatches.items() if m}
    assert not mismatches, (
        f"{len(mismatches)} customers differ, e.g. {list(mismatches.items())[:3]}"
    )


def one_customer_with(events: list[tuple[str, timedelta, str | None]]) -> int:
    (cid,) = make_customers(1)
    save_events(
        [
            RefEvent(cid, t, AS_OF - age, Decimal(v) if v is not None else None)
            for t, age, v in events
        ]
    )
    return cid


# --- exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", EVENT_SOURCES)
@pytest.mark.parametrize(
    ("seed", "purchase_types"),
    [(1, None), (2, ["purchase", "order"]), (3, None), (4, ["order", "Purchase"])],
)
def test_recompute_matches_reference_on_random_data(seed, purchase_types, source, monkeypatch):
    rng = random.Random(seed)
    ids = make_customers(160)
    events = random_events(rng, ids, orphan_id=max(ids) + 1000)
    if source != "events":  # the summary serves as-ofs after every event it holds
        events = [e for e in events if e.occurred_at <= AS_OF]
    save_events(events)
    use_event_source(source)
    summarized = []
    real = metrics_module._summarized_groups
    monkeypatch.setattr(
        metrics_module,
        "_summarized_groups",
        lambda *a, **kw: summarized.append(kw["cutoff"]) or real(*a, **kw),
    )
    emails = {cid: (rng.randrange(9), rng.randrange(6), rng.randrange(7)) for cid in ids[::2]}
    set_emails(emails)

    result = metrics_recompute(as_of=AS_OF, purchase_types=purchase_types)

    expected = reference_metrics(
        customer_ids=ids,
        events=events,
        as_of=AS_OF,
        purchase_types=purchase_types or ["purchase"],
        rfm_segments=DEFAULT_SEGMENTS,
        engagement=ENGAGEMENT_MODEL,
        emails=emails,
    )
    assert_matches(expected, stored())
    assert bool(summarized) == (source != "events")
    if summarized:
        assert summarized[0].newer == (source == "summary+newer")
    scored = [row for row in expected.values() if row["frequency"] > 0]
    assert result.customers == len(ids)
    assert result.scored == len(scored)
    assert result.inserted == len(ids) - len(emails)
    assert result.rows_changed == len(ids)
    # The data is awkward enough to exercise several scores, segments and tiers (ties on
    # small frequencies make some F scores unreachable, as they should).
    for key in ("r_score", "f_score", "m_score"):
        assert len({row[key] for row in scored}) >= 3
    assert len({row["rfm_segment"] for row in scored}) >= 4
    assert len({row["engagement_tier"] for row in expected.values()}) >= 3


def test_scores_follow_the_formula_and_ties_share_a_score():
    # Frequencies 1..10: w = i - 1 smaller values, score = 1 + 5 * w // 10.
    ids = make_customers(12)
    for i, cid in enumerate(ids[:10], start=1):
        save_events([RefEvent(cid, "purchase", AS_OF - i * DAY, Decimal("5.00"))] * i)
    # Two more customers tied with the top frequency and the same last purchase.
    for cid in ids[10:]:
        save_events([RefEvent(cid, "purchase", AS_OF - 10 * DAY, Decimal("5.00"))] * 10)

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    f_scores = [rows[cid]["f_score"] for cid in ids]
    # N = 12; w for frequency i (< 10) is i - 1; the three customers with 10 have w = 9.
    assert f_scores == [1 + 5 * (i - 1) // 12 for i in range(1, 11)] + [1 + 5 * 9 // 12] * 2
    assert f_scores[9] == f_scores[10] == f_scores[11]
    # R: the customer who bought 1 day ago has the smallest recency, so w = 11 larger values.
    assert rows[ids[0]]["r_score"] == 1 + 5 * 11 // 12 == 5
    assert rows[ids[11]]["r_score"] == rows[ids[10]]["r_score"] == rows[ids[9]]["r_score"] == 1


def test_the_worked_example_of_the_marketers_docs():
    """docs/marketers/rfm-and-engagement.md, "A worked example"."""
    table = {  # purchases, days ago of the last one, total spent
        "A": (5, 2, "400.00"),
        "B": (3, 10, "150.00"),
        "C": (3, 40, "150.00"),
        "D": (1, 2, "20.00"),
        "E": (1, 200, "35.00"),
        "F": (2, 400, "90.00"),
    }
    ids = {}
    for name, (count, days, spent) in table.items():
        first, rest = Decimal(spent) - (count - 1), [("purchase", days * DAY, "1.00")] * (count - 1)
        ids[name] = one_customer_with([("purchase", days * DAY, str(first)), *rest])
    ids["G"] = one_customer_with([("session", DAY, None)])
    set_emails({ids["A"]: (4, 4, 3), ids["G"]: (2, 1, 1)})

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    got = {
        name: (
            rows[cid]["r_score"],
            rows[cid]["f_score"],
            rows[cid]["m_score"],
            rows[cid]["rfm_segment"],
        )
        for name, cid in ids.items()
    }
    assert got == {
        "A": (4, 5, 5, "champions"),
        "B": (3, 3, 3, "need-attention"),
        "C": (2, 3, 3, "at-risk"),
        "D": (4, 1, 1, "promising"),
        "E": (1, 1, 1, "hibernating"),
        "F": (1, 2, 2, "hibernating"),
        "G": (None, None, None, ""),
    }
    assert (rows[ids["A"]]["engagement_points"], rows[ids["A"]]["engagement_tier"]) == (75, "Star")
    assert (rows[ids["G"]]["engagement_points"], rows[ids["G"]]["engagement_tier"]) == (5, "Lost")


def test_monetary_compares_exact_decimals():
    # 0.10 + 0.20 is 0.30 exactly: the two customers tie (in floats they would not).
    a = one_customer_with([("purchase", DAY, "0.10"), ("purchase", DAY, "0.20")])
    b = one_customer_with([("purchase", DAY, "0.30"), ("purchase", DAY, "0.00")])
    c = one_customer_with([("purchase", DAY, "0.31"), ("purchase", DAY, None)])

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    assert rows[a]["monetary"] == rows[b]["monetary"] == Decimal("0.30")
    assert rows[c]["monetary"] == Decimal("0.31")
    assert rows[a]["m_score"] == rows[b]["m_score"] == 1
    assert rows[c]["m_score"] == 1 + 5 * 2 // 3


def test_recency_counts_whole_days_exactly_on_boundaries():
    ages = [timedelta(0), US, DAY - US, DAY, 30 * DAY - US, 30 * DAY, 30 * DAY + US]
    ids = [one_customer_with([("purchase", age, "1.00")]) for age in ages]

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    assert [rows[cid]["recency_days"] for cid in ids] == [0, 0, 0, 1, 29, 30, 30]


def test_event_count_windows_end_at_as_of_and_exclude_their_start():
    cid = one_customer_with(
        [
            ("session", timedelta(0), None),  # at as_of: counted
            ("session", -US, None),  # after as_of: ignored
            ("session", 30 * DAY - US, None),  # inside 30 days
            ("session", 30 * DAY, None),  # exactly 30 days: only in the 90-day window
            ("page_view", 90 * DAY - US, None),
            ("page_view", 90 * DAY, None),  # exactly 90 days: in neither window
        ]
    )

    metrics_recompute(as_of=AS_OF)

    row = stored()[cid]
    assert row["event_counts_30d"] == {"session": 2}
    assert row["event_counts_90d"] == {"session": 3, "page_view": 1}
    assert row["last_activity_at"] == AS_OF


def test_monetary_is_exact_for_large_and_fractional_sums():
    big = one_customer_with([("purchase", i * DAY, "999999999999.99") for i in range(3)])
    cents = one_customer_with(
        [("purchase", i * DAY, "0.10") for i in range(7)]
        + [
            ("purchase", 8 * DAY, "0.01"),
            ("purchase", 9 * DAY, None),
        ]
    )

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    assert rows[big]["monetary"] == Decimal("2999999999999.97")
    assert rows[cents]["monetary"] == Decimal("0.71")
    assert rows[cents]["frequency"] == 9


def test_event_counts_cover_many_types_and_leave_out_old_ones():
    recent = [(f"type_{i:02d}", DAY * (i % 60), None) for i in range(95)]
    cid = one_customer_with([*recent, ("retired", 200 * DAY, None)])
    other = one_customer_with([("type_07", DAY, None), ("type_07", 2 * DAY, None)])

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    expected_90d = {f"type_{i:02d}": 1 for i in range(95)}
    assert rows[cid]["event_counts_90d"] == expected_90d
    assert rows[cid]["event_counts_30d"] == {
        f"type_{i:02d}": 1 for i in range(95) if (i % 60) * DAY < 30 * DAY
    }
    assert rows[other]["event_counts_30d"] == rows[other]["event_counts_90d"] == {"type_07": 2}


def test_event_counts_keep_any_type_name_as_its_key():
    names = ['say "hi"', "back\\slash", "50% off", "naïve/über", "{braces}: yes", "tab\tkey"]
    cid = one_customer_with([(name, DAY, None) for name in names] + [(names[0], 2 * DAY, None)])

    metrics_recompute(as_of=AS_OF)

    expected = dict.fromkeys(names, 1) | {names[0]: 2}
    assert stored()[cid]["event_counts_30d"] == stored()[cid]["event_counts_90d"] == expected


def test_customers_without_purchases_are_unscored_but_get_activity_and_a_tier():
    browser = one_customer_with([("session", 2 * DAY, None), ("email_click", DAY, None)])
    (silent,) = make_customers(1)
    one_customer_with([("purchase", DAY, "10.00")])

    result = metrics_recompute(as_of=AS_OF)

    rows = stored()
    for cid in (browser, silent):
        assert rows[cid]["frequency"] == 0
        assert rows[cid]["monetary"] == 0
        assert rows[cid]["recency_days"] is None
        assert rows[cid]["first_purchase_at"] is None
        assert (rows[cid]["r_score"], rows[cid]["f_score"], rows[cid]["m_score"]) == (None,) * 3
        assert rows[cid]["rfm_segment"] == ""
        assert rows[cid]["engagement_tier"] == "Lost"
    assert rows[browser]["last_activity_at"] == AS_OF - DAY
    assert rows[browser]["event_counts_30d"] == {"session": 1, "email_click": 1}
    assert rows[silent]["last_activity_at"] is None
    assert rows[silent]["event_counts_90d"] == {}
    assert result.scored == 1


def test_nobody_has_bought_yet():
    cid = one_customer_with([("session", DAY, None)])
    result = metrics_recompute(as_of=AS_OF)
    assert (result.customers, result.scored, result.inserted) == (1, 0, 1)
    assert stored()[cid]["r_score"] is None
    assert metrics_recompute(as_of=AS_OF).rows_changed == 0


def test_no_customers_at_all():
    result = metrics_recompute(as_of=AS_OF)
    assert (result.customers, result.scored, result.rows_changed) == (0, 0, 0)


def test_later_events_are_ignored_so_a_historical_as_of_is_reproducible():
    rng = random.Random(7)
    ids = make_customers(40)
    save_events(random_events(rng, ids, orphan_id=max(ids) + 1))
    metrics_recompute(as_of=AS_OF)
    before = stored()

    save_events([RefEvent(cid, "purchase", AS_OF + US, Decimal("99.00")) for cid in ids])
    metrics_recompute(as_of=AS_OF + 40 * DAY)
    assert stored() != before
    metrics_recompute(as_of=AS_OF)

    assert stored() == before


def test_custom_purchase_types():
    cid = one_customer_with(
        [("order", DAY, "5.00"), ("renewal", 3 * DAY, "7.50"), ("purchase", 0 * DAY, "100.00")]
    )

    metrics_recompute(as_of=AS_OF, purchase_types=["order", "renewal"])

    row = stored()[cid]
    assert (row["frequency"], row["monetary"], row["recency_days"]) == (2, Decimal("12.50"), 1)
    assert row["first_purchase_at"] == AS_OF - 3 * DAY


def test_purchase_types_default_to_the_setting(settings):
    settings.PURCHASE_EVENT_TYPES = ["order"]
    cid = one_customer_with([("order", DAY, "5.00"), ("purchase", DAY, "100.00")])

    metrics_recompute(as_of=AS_OF)

    assert stored()[cid]["monetary"] == Decimal("5.00")


# --- RFM segments and engagement tiers ------------------------------------------------------


def test_editing_an_rfm_segments_ranges_changes_rfm_segment():
    ids = make_customers(10)
    for i, cid in enumerate(ids, start=1):
        save_events([RefEvent(cid, "purchase", AS_OF - i * DAY, Decimal("1.00"))] * i)
    metrics_recompute(as_of=AS_OF)
    # Customer 10 bought most often but longest ago: R1 F5, "Can't lose them".
    assert stored()[ids[-1]]["rfm_segment"] == "cant-lose-them"

    Segment.objects.filter(slug="hibernating").update(rule={"r": [1, 2], "f": [1, 5]}, position=0)
    result = metrics_recompute(as_of=AS_OF)

    rows = stored()
    assert rows[ids[-1]]["rfm_segment"] == "hibernating"
    assert result.rows_changed == sum(1 for cid in ids if rows[cid]["r_score"] <= 2)
    expected = reference_metrics(
        customer_ids=ids,
        events=[
            RefEvent(cid, "purchase", AS_OF - i * DAY, Decimal("1.00"))
            for i, cid in enumerate(ids, start=1)
            for _ in range(i)
        ],
        as_of=AS_OF,
        purchase_types=["purchase"],
        rfm_segments=rfm_segments_in_db(),
        engagement=ENGAGEMENT_MODEL,
    )
    assert_matches(expected, rows)


def test_rfm_segment_may_also_constrain_the_monetary_score():
    Segment.objects.filter(kind=SegmentKind.RFM).delete()
    Segment.objects.create(
        name="Big spenders",
        slug="big",
        kind=SegmentKind.RFM,
        position=0,
        rule={"r": [1, 5], "f": [1, 5], "m": [3, 5]},
    )
    Segment.objects.create(
        name="Others",
        slug="others",
        kind=SegmentKind.RFM,
        position=1,
        rule={"r": [1, 5], "f": [1, 5]},
    )
    small = one_customer_with([("purchase", DAY, "1.00")])
    big = one_customer_with([("purchase", DAY, "900.00")])

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    assert (rows[small]["m_score"], rows[big]["m_score"]) == (1, 3)  # N = 2
    assert (rows[small]["rfm_segment"], rows[big]["rfm_segment"]) == ("others", "big")


def test_no_rfm_segments_leaves_rfm_segment_empty():
    Segment.objects.filter(kind=SegmentKind.RFM).delete()
    cid = one_customer_with([("purchase", DAY, "1.00")])
    metrics_recompute(as_of=AS_OF)
    assert stored()[cid]["rfm_segment"] == ""
    assert stored()[cid]["r_score"] == 1  # N = 1, w = 0


def test_custom_engagement_model():
    definition = {
        "rules": [
            {"metric": "monetary", "bands": [{"min": 10.5, "points": 7}, {"points": 1}]},
            {"metric": "recency_days", "bands": [{"max": 2, "points": 100}]},
            {"metric": "frequency", "bands": [{"min": 1.5, "max": 2.5, "points": 20}]},
            {"metric": "events_30d", "bands": [{"min": 3, "points": 4}]},
            {"metric": "days_since_last_activity", "bands": [{"max": 1, "points": 1000}]},
            {"metric": "emails_opened", "bands": [{"min": 1, "points": -3}]},
            {"metric": "f_score", "bands": [{"min": 3, "points": 11}]},
        ],
        "tiers": [
            {"name": 'O\'Brien "VIP"; --', "min_points": 100},
            {"name": "Warm", "min_points": 5},
            {"name": "Cold", "min_points": -3},
        ],
    }
    EngagementModel.objects.update(is_active=False)
    EngagementModel.objects.create(name="Custom", definition=definition, is_active=True)
    a = one_customer_with([("purchase", DAY, "10.49"), ("purchase", 3 * DAY, "0.01")])
    b = one_customer_with([("purchase", 5 * DAY, "10.51"), ("session", 0 * DAY, None)])
    c = one_customer_with([("session", 40 * DAY, None)])
    set_emails({c: (5, 2, 0)})

    metrics_recompute(as_of=AS_OF)

    rows = stored()
    # a: monetary 10.50 -> 7; recency 1 -> 100; frequency 2 (in [1.5, 2.5)) -> 20; F3 -> 11.
    assert (rows[a]["engagement_points"], rows[a]["engagement_tier"]) == (
        138,
        definition["tiers"][0]["name"],
    )
    # b: 10.51 -> 7; recency 5 -> 0; frequency 1 -> 0; activity today -> 1000; F1 -> 0.
    assert (rows[b]["engagement_points"], rows[b]["engagement_tier"]) == (
        1007,
        definition["tiers"][0]["name"],
    )
    # c: monetary 0 -> catch-all 1; recency NULL -> 0; emails opened -> -3.
    assert (rows[c]["engagement_points"], rows[c]["engagement_tier"]) == (-2, "Cold")


def test_no_active_engagement_model_gives_no_points_or_tier():
    EngagementModel.objects.update(is_active=False)
    cid = one_customer_with([("purchase", DAY, "1000.00")] * 12)
    metrics_recompute(as_of=AS_OF)
    assert (stored()[cid]["engagement_points"], stored()[cid]["engagement_tier"]) == (0, "")


# --- writing ----------------------------------------------------------------------------------


def test_second_run_changes_no_rows_and_only_changed_rows_are_rewritten():
    rng = random.Random(11)
    ids = make_customers(60)
    save_events(random_events(rng, ids, orphan_id=max(ids) + 1))
    first = metrics_recompute(as_of=AS_OF)
    stamps = dict(CustomerMetrics.objects.values_list("customer_id", "computed_at"))

    second = metrics_recompute(as_of=AS_OF)
    assert (second.inserted, second.rows_changed) == (0, 0)
    assert first.rows_changed == len(ids)

    # A later as-of with nothing new: only the rows whose day counts moved are rewritten.
    third = metrics_recompute(as_of=AS_OF + timedelta(hours=1))
    after = {
        cid: (computed_at, as_of)
        for cid, computed_at, as_of in CustomerMetrics.objects.values_list(
            "customer_id", "computed_at", "as_of"
        )
    }
    rewritten = [cid for cid, (computed_at, _) in after.items() if computed_at != stamps[cid]]
    assert len(rewritten) == third.rows_changed < len(ids)
    assert all(after[cid][1] == AS_OF + timedelta(hours=1) for cid in rewritten)
    assert all(after[cid][1] == AS_OF for cid in ids if cid not in rewritten)


def test_every_customer_gets_exactly_one_row():
    ids = make_customers(5)
    set_emails({ids[0]: (1, 1, 1)})
    result = metrics_recompute(as_of=AS_OF)
    assert result.inserted == 4
    assert sorted(CustomerMetrics.objects.values_list("customer_id", flat=True)) == sorted(ids)
    assert CustomerMetrics.objects.filter(as_of=AS_OF, computed_at__isnull=False).count() == 5


def test_email_counts_are_never_overwritten_and_feed_engagement():
    ids = make_customers(3)
    set_emails({ids[0]: (10, 6, 5), ids[1]: (3, 2, 1)})
    save_events([RefEvent(ids[0], "purchase", AS_OF - DAY, Decimal("1.00"))])

    metrics_recompute(as_of=AS_OF)
    CustomerMetrics.objects.filter(customer_id=ids[1]).update(emails_clicked=2)
    result = metrics_recompute(as_of=AS_OF)

    rows = stored()
    assert [
        (rows[c]["emails_sent"], rows[c]["emails_opened"], rows[c]["emails_clicked"]) for c in ids
    ] == [
        (10, 6, 5),
        (3, 2, 2),
        (0, 0, 0),
    ]
    # Default model: 5 clicks -> 15 points, 2 clicks -> 10; the click change was picked up.
    assert rows[ids[0]]["engagement_points"] == 5 + 30 + 3 + 15
    assert rows[ids[1]]["engagement_points"] == 10
    assert result.rows_changed == 1


def test_progress_reports_each_step_and_timings():
    make_customers(2)
    seen: list[str] = []
    result = metrics_recompute(as_of=AS_OF, progress=seen.append)
    assert seen == list(METRIC_FAMILIES)
    assert list(result.seconds) == list(METRIC_FAMILIES)
    assert result.total_seconds >= 0


def test_runs_twice_inside_one_outer_transaction():
    cid = one_customer_with([("purchase", DAY, "1.00")])
    with transaction.atomic():
        metrics_recompute(as_of=AS_OF)
        result = metrics_recompute(as_of=AS_OF + 2 * DAY)
    assert result.rows_changed == 1
    assert stored()[cid]["recency_days"] == 3


def test_recompute_is_atomic(monkeypatch):
    ids = make_customers(3)
    set_emails({ids[0]: (1, 1, 1)})
    original = metrics_module._step_write

    def write_then_fail(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("worker lost")

    monkeypatch.setattr(metrics_module, "_step_write", write_then_fail)
    with pytest.raises(RuntimeError):
        metrics_recompute(as_of=AS_OF)
    # The update of the existing row and the inserted rows were rolled back together.
    assert list(CustomerMetrics.objects.values_list("customer_id", "frequency", "computed_at")) == [
        (ids[0], 99, None)
    ]


def test_a_failing_statement_leaves_the_metrics_untouched(monkeypatch):
    ids = make_customers(2)
    monkeypatch.setattr(
        metrics_module, "_WRITTEN_COLUMNS", (*metrics_module._WRITTEN_COLUMNS, "nope")
    )
    with pytest.raises(DatabaseError):
        metrics_recompute(as_of=AS_OF)
    assert not CustomerMetrics.objects.filter(customer_id__in=ids).exists()
    monkeypatch.undo()
    assert metrics_recompute(as_of=AS_OF).inserted == 2  # the connection is still usable


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"as_of": AS_OF.replace(tzinfo=None)}, "as_of"),
        ({"as_of": AS_OF, "purchase_types": []}, "purchase_types"),
        ({"as_of": AS_OF, "purchase_types": [""]}, "purchase_types"),
        ({"as_of": AS_OF, "purchase_types": "purchase"}, "purchase_types"),
    ],
)
def test_bad_arguments_are_refused(kwargs, field):
    with pytest.raises(ServiceError) as exc:
        metrics_recompute(**kwargs)
    assert exc.value.field == field


def test_invalid_rfm_segment_rule_fails_before_writing():
    make_customers(2)
    Segment.objects.filter(slug="loyal").update(rule={"r": [3, 3], "f": [4, 6]})
    with pytest.raises(ServiceError, match="'loyal'") as exc:
        metrics_recompute(as_of=AS_OF)
    assert exc.value.field == "rule.f[1]"
    assert not CustomerMetrics.objects.exists()


def test_invalid_active_engagement_model_fails_before_writing():
    make_customers(2)
    EngagementModel.objects.filter(is_active=True).update(definition={"rules": [], "tiers": []})
    with pytest.raises(ServiceError, match="engagement model") as exc:
        metrics_recompute(as_of=AS_OF)
    assert exc.value.field == "definition.tiers"
    assert not CustomerMetrics.objects.exists()


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ([1, 5], "rule"),
        ({"r": [1, 5]}, "rule.f"),
        ({"r": [1, 5], "f": [1, 5], "x": [1, 1]}, "rule.x"),
        ({"r": [1, 5, 5], "f": [1, 5]}, "rule.r"),
        ({"r": [0, 5], "f": [1, 5]}, "rule.r[0]"),
        ({"r": [1, 5], "f": [1, True]}, "rule.f[1]"),
        ({"r": [1, 5], "f": [1, 2.0]}, "rule.f[1]"),
        ({"r": [4, 3], "f": [1, 5]}, "rule.r"),
        ({"r": [1, 5], "f": [1, 5], "m": [6, 6]}, "rule.m[0]"),
    ],
)
def test_rfm_segment_rule_validate_names_the_offending_path(rule, field):
    with pytest.raises(ServiceError) as exc:
        rfm_segment_rule_validate(rule)
    assert exc.value.field == field


def test_default_rfm_segments_are_valid():
    for _, rule in DEFAULT_SEGMENTS:
        rfm_segment_rule_validate(rule)
    assert rfm_segments_in_db() == DEFAULT_SEGMENTS


@pytest.mark.postgres
def test_a_summary_holding_events_after_as_of_is_not_used(require_postgres, monkeypatch):
    """A historical as-of reads the events: the summary would count later ones."""
    customer = one_customer_with([("purchase", timedelta(days=2), "10.00")])
    Event.objects.create(customer_id=customer, type="purchase", occurred_at=AS_OF + DAY)
    use_event_source("summary")
    monkeypatch.setattr(
        metrics_module, "_summarized_groups", lambda *a, **kw: pytest.fail("summary used")
    )
    metrics_recompute(as_of=AS_OF)
    assert stored()[customer]["frequency"] == 1


@pytest.mark.postgres
def test_a_first_recompute_loads_the_empty_table_then_builds_its_indexes(require_postgres):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    table = CustomerMetrics._meta.db_table

    def indexes() -> list[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s ORDER BY 1",
                [table],
            )
            return cursor.fetchall()

    before = indexes()
    assert any("pkey" in name for name, _ in before) and len(before) >= 3
    rng = random.Random(5)
    ids = make_customers(40)
    save_events(random_events(rng, ids, orphan_id=max(ids) + 1))
    with CaptureQueriesContext(connection) as queries:
        first = metrics_recompute(as_of=AS_OF)
    assert (first.inserted, first.rows_changed) == (len(ids), len(ids))
    assert any("DROP CONSTRAINT" in q["sql"] for q in queries.captured_queries)
    assert indexes() == before
    # What it stored is what the row-by-row path computes: a full recompute changes nothing.
    again = metrics_recompute(as_of=AS_OF, full=True)
    assert (again.inserted, again.rows_changed) == (0, 0)
    # With a row stored, the indexes stay (the row-by-row path).
    CustomerMetrics.objects.exclude(customer_id=ids[0]).delete()
    with CaptureQueriesContext(connection) as queries:
        third = metrics_recompute(as_of=AS_OF, full=True)
    assert third.inserted == len(ids) - 1
    assert not any("DROP CONSTRAINT" in q["sql"] for q in queries.captured_queries)
    assert indexes() == before


@pytest.mark.postgres
def test_window_counts_are_grouped_without_hashing_and_the_rest_as_usual(require_postgres):
    """The 90-day window's per-customer counts are made on their own with hash aggregation off
    (sorted runs from the (customer, time) index are faster there); the statement that joins
    them to the summary's grouping runs with the recompute's usual settings."""
    from django.db import connection

    customer = one_customer_with([("purchase", timedelta(days=2), "10.00")])
    use_event_source("summary")
    seen = {}

    def spy(execute, sql, params, many, context):
        for table in ("metrics_window", "metrics_agg"):
            if f"CREATE TEMP TABLE {table} " in sql:
                raw = context["cursor"].cursor
                raw.execute("SELECT current_setting('enable_hashagg')")
                seen[table] = raw.fetchone()[0]
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        metrics_recompute(as_of=AS_OF)
    assert seen == {"metrics_window": "off", "metrics_agg": "on"}
    assert stored()[customer]["event_counts_30d"] == {"purchase": 1}
