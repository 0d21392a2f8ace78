"""Incremental metrics recomputes (PostgreSQL): only the customers whose events changed are
aggregated again, and the result is exactly what a full recompute gives."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F

from segmentation.models import (
    Customer,
    CustomerMetrics,
    EngagementModel,
    Event,
    MetricsState,
    StaleCustomerMetrics,
)
from segmentation.services import metrics as metrics_module
from segmentation.services.engagement import engagement_model_active_definition
from segmentation.services.event_summary import event_summary_sync
from segmentation.services.metrics import INCREMENTAL_MAX_STEP, metrics_recompute
from segmentation.tests.metrics_reference import AS_OF, DAY, US, RefEvent, reference_metrics
from segmentation.tests.test_metrics import (
    DEFAULT_SEGMENTS,
    assert_matches,
    stored,
)

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

HOUR = timedelta(hours=1)
TYPES = ["purchase", "purchase", "session", "page_view", "email_click"]


@pytest.fixture(autouse=True)
def _postgres(require_postgres):
    """The incremental path needs the event summary, which only PostgreSQL has."""


_numbers = itertools.count()


def make_customers(n: int) -> list[int]:
    """New customers (numbered on from any deleted ones)."""
    made = Customer.objects.bulk_create(
        Customer(external_id=f"i{number:05d}", email=f"i{number:05d}@example.com")
        for number in itertools.islice(_numbers, n)
    )
    return [customer.pk for customer in made]


def db_events() -> list[RefEvent]:
    return [
        RefEvent(cid, type_, at, value)
        for cid, type_, at, value in Event.objects.values_list(
            "customer_id", "type", "occurred_at", "value"
        )
    ]


def db_emails() -> dict[int, tuple[int, int, int]]:
    return {
        cid: (sent, opened, clicked)
        for cid, sent, opened, clicked in CustomerMetrics.objects.values_list(
            "customer_id", "emails_sent", "emails_opened", "emails_clicked"
        )
    }


def expected_now(as_of) -> dict[int, dict]:
    return reference_metrics(
        customer_ids=list(Customer.objects.values_list("pk", flat=True)),
        events=db_events(),
        as_of=as_of,
        purchase_types=["purchase"],
        rfm_segments=DEFAULT_SEGMENTS,
        engagement=engagement_model_active_definition(),
        emails=db_emails(),
    )


def random_event(rng: random.Random, cid: int, at) -> Event:
    type_ = rng.choice(TYPES)
    value = Decimal(rng.randrange(1, 20000)) / 100 if type_ == "purchase" else None
    return Event(customer_id=cid, type=type_, occurred_at=at, value=value)


def edge_times(rng: random.Random, previous, as_of) -> list:
    """Times on and around the edges an as-of step moves: events entering the aggregates
    and leaving the 30- and 90-day windows."""
    times = []
    for window in (timedelta(0), timedelta(days=30), timedelta(days=90)):
        lo, hi = previous - window, as_of - window
        times += [lo, lo + US, hi, hi + US, lo + (hi - lo) * rng.random()]
    return times


def check_totals() -> None:
    for counts_30d, counts_90d, n30, n90 in CustomerMetrics.objects.values_list(
        "event_counts_30d", "event_counts_90d", "events_30d", "events_90d"
    ):
        assert (sum(counts_30d.values()), sum(counts_90d.values())) == (n30, n90)


#: A points model on every input that moves without the customer's events changing: days
#: since the last activity, recency, scores, email counts (and window totals, which do not).
CUSTOM_MODEL = {
    "rules": [
        {"metric": "days_since_last_activity", "bands": [{"max": 2, "points": 40}]},
        {"metric": "recency_days", "bands": [{"max": 3, "points": 25}, {"max": 40, "points": 5}]},
        {"metric": "events_30d", "bands": [{"min": 3, "points": 4}]},
        {"metric": "emails_opened", "bands": [{"min": 10, "points": 9}]},
        {"metric": "m_score", "bands": [{"min": 4, "points": 11}]},
    ],
    "tiers": [
        {"name": "Hot", "min_points": 50},
        {"name": "Warm", "min_points": 10},
        {"name": "Cold", "min_points": 0},
    ],
}


def activate(definition: dict, name: str = "Custom") -> None:
    EngagementModel.objects.update(is_active=False)
    EngagementModel.objects.create(name=name, definition=definition, is_active=True)


@pytest.mark.parametrize("model", ["default", "custom"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_history_of_incremental_recomputes_matches_the_reference(seed, model):
    if model == "custom":
        activate(CUSTOM_MODEL)
    rng = random.Random(seed)
    ids = make_customers(80)
    start = AS_OF
    Event.objects.bulk_create(
        random_event(rng, rng.choice(ids), start - timedelta(days=rng.uniform(0, 400)))
        for _ in range(600)
    )
    event_summary_sync()
    first = metrics_recompute(as_of=start, purchase_types=["purchase"])
    assert not first.incremental
    assert_matches(expected_now(start), stored())

    as_of = start
    steps = [HOUR, 6 * HOUR, DAY + 3 * HOUR, 2 * DAY, HOUR, 3 * DAY, HOUR, 0 * HOUR]
    for number, step in enumerate(steps):
        previous, as_of = as_of, as_of + step
        ids = list(Customer.objects.values_list("pk", flat=True))
        sync = number % 3 != 2
        # Events of existing customers at the edges the step moves, and in the past; events
        # occurring after the new as-of wait (unsynced, so the summary can serve this as-of).
        new = [
            random_event(rng, rng.choice(ids), at)
            for at in edge_times(rng, previous, as_of)
            if at <= as_of or not sync
        ]
        new += [
            random_event(rng, rng.choice(ids), as_of - timedelta(days=rng.uniform(0, 200)))
            for _ in range(15)
        ]
        if not sync:
            new += [random_event(rng, rng.choice(ids), as_of + HOUR * rng.random())]
        Event.objects.bulk_create(new)
        # Old events now on the window edges, so that they leave the windows during the step.
        for old in Event.objects.order_by("?")[:4]:
            old.occurred_at = rng.choice(edge_times(rng, previous, as_of)[5:])
            old.save(update_fields=["occurred_at"])
        # Fixes and deletions (triggers list the customers) ...
        for event in Event.objects.filter(occurred_at__lte=previous).order_by("?")[:3]:
            event.type, event.value = "purchase", Decimal("12.34")
            event.save(update_fields=["type", "value"])
        Event.objects.filter(pk__in=Event.objects.order_by("?").values("pk")[:3]).delete()
        # ... a customer gone, new customers (one with events), email counts from campaigns.
        Customer.objects.filter(pk=rng.choice(ids)).delete()
        fresh = make_customers(2)
        Event.objects.create(
            customer_id=fresh[0], type="purchase", occurred_at=previous, value=Decimal("5")
        )
        CustomerMetrics.objects.filter(pk__in=rng.sample(ids, 5)).update(
            emails_clicked=rng.randrange(30), emails_opened=rng.randrange(30)
        )
        if sync:
            event_summary_sync()

        result = metrics_recompute(as_of=as_of, purchase_types=["purchase"])

        assert result.incremental, f"step {number}"
        assert result.recomputed < result.customers
        assert_matches(expected_now(as_of), stored())
        check_totals()
        assert not StaleCustomerMetrics.objects.exists()


def history(n_customers: int = 30, seed: int = 5) -> list[int]:
    rng = random.Random(seed)
    ids = make_customers(n_customers)
    Event.objects.bulk_create(
        random_event(rng, rng.choice(ids), AS_OF - timedelta(days=rng.uniform(0, 200)))
        for _ in range(200)
    )
    event_summary_sync()
    assert not metrics_recompute(as_of=AS_OF).incremental
    return ids


def test_an_hour_later_only_the_changed_customers_are_aggregated():
    ids = history()
    Event.objects.create(customer_id=ids[3], type="purchase", occurred_at=AS_OF + HOUR / 2)
    result = metrics_recompute(as_of=AS_OF + HOUR)
    assert result.incremental
    # The new event's customer, and those whose events crossed an edge in that hour.
    edges = Event.objects.filter(
        occurred_at__gt=AS_OF - timedelta(days=90), occurred_at__lte=AS_OF + HOUR - timedelta(90)
    ).values_list("customer_id", flat=True)
    assert 1 <= result.recomputed <= 1 + len(set(edges))
    assert stored()[ids[3]]["last_purchase_at"] == AS_OF + HOUR / 2
    assert_matches(expected_now(AS_OF + HOUR), stored())


def test_state_records_the_last_recompute():
    history()
    state = MetricsState.objects.get()
    assert state.as_of == AS_OF
    assert state.purchase_types == ["purchase"]
    assert state.last_event_id == Event.objects.order_by("-pk").values_list("pk", flat=True)[0]


@pytest.mark.parametrize(
    "change",
    ["full", "types", "backwards", "too_far", "truncate", "no_state", "summary_ahead", "emptied"],
)
def test_a_full_recompute_when_an_increment_cannot_be_trusted(change):
    ids = history()
    as_of, kwargs = AS_OF + HOUR, {}
    if change == "full":
        kwargs["full"] = True
    elif change == "types":
        kwargs["purchase_types"] = ["purchase", "order"]
    elif change == "backwards":
        as_of = AS_OF - HOUR
    elif change == "too_far":
        as_of = AS_OF + INCREMENTAL_MAX_STEP + US
    elif change == "truncate":
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {Event._meta.db_table}")
        Event.objects.create(customer_id=ids[0], type="purchase", occurred_at=AS_OF)
        event_summary_sync()
    elif change == "no_state":
        MetricsState.objects.all().delete()
    elif change == "emptied":  # every customer would be stale: the full path is faster
        CustomerMetrics.objects.all().delete()
    elif change == "summary_ahead":  # the summary holds an event after the as-of
        Event.objects.create(customer_id=ids[0], type="session", occurred_at=as_of + DAY)
        event_summary_sync()
    result = metrics_recompute(as_of=as_of, **kwargs)
    assert not result.incremental
    assert result.recomputed == result.customers
    if change != "types":
        assert_matches(expected_now(as_of), stored())


def test_rewrites_are_listed_by_the_triggers_and_claimed_by_the_next_recompute():
    ids = history()
    event = Event.objects.filter(customer_id=ids[1]).first() or Event.objects.create(
        customer_id=ids[1], type="session", occurred_at=AS_OF - DAY
    )
    Event.objects.filter(customer_id=ids[2]).delete()
    event.customer_id = ids[4]
    event.save(update_fields=["customer"])
    assert set(StaleCustomerMetrics.objects.values_list("customer_id", flat=True)) >= {
        ids[1],
        ids[4],
    }
    result = metrics_recompute(as_of=AS_OF)
    assert result.incremental
    assert not StaleCustomerMetrics.objects.exists()
    assert_matches(expected_now(AS_OF), stored())


def test_a_failed_recompute_keeps_the_stale_list(monkeypatch):
    ids = history()
    Event.objects.filter(customer_id=ids[2]).delete()
    stale = set(StaleCustomerMetrics.objects.values_list("customer_id", flat=True))
    assert stale

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(metrics_module, "_step_scores", fail)
    with pytest.raises(RuntimeError):
        metrics_recompute(as_of=AS_OF + HOUR)
    assert set(StaleCustomerMetrics.objects.values_list("customer_id", flat=True)) == stale
    assert MetricsState.objects.get().as_of == AS_OF


def test_an_event_read_before_its_time_counts_once_its_time_comes():
    ids = history()
    Event.objects.create(
        customer_id=ids[6], type="purchase", occurred_at=AS_OF + 2 * HOUR, value=Decimal("7")
    )
    event_summary_sync()
    # The summary holds an event after this as-of: everyone is recomputed from the events.
    assert not metrics_recompute(as_of=AS_OF + HOUR).incremental
    assert_matches(expected_now(AS_OF + HOUR), stored())
    # Its id is now behind the state's, but its time falls in the step.
    result = metrics_recompute(as_of=AS_OF + 3 * HOUR)
    assert result.incremental
    assert stored()[ids[6]]["last_purchase_at"] == AS_OF + 2 * HOUR
    assert_matches(expected_now(AS_OF + 3 * HOUR), stored())


def test_a_customer_deleted_behind_the_orms_back_leaves_no_row_to_read_back():
    ids = history()
    gone = next(cid for cid, row in stored().items() if row["frequency"] > 0)
    with connection.cursor() as cursor:  # no ORM cascade: the metrics row stays behind
        cursor.execute(f"DELETE FROM {Customer._meta.db_table} WHERE id = %s", [gone])
    assert StaleCustomerMetrics.objects.filter(customer_id=gone).exists()
    result = metrics_recompute(as_of=AS_OF + HOUR)
    assert result.incremental
    assert gone not in stored()
    assert result.scored == sum(1 for row in stored().values() if row["frequency"] > 0)
    assert_matches(expected_now(AS_OF + HOUR), stored())
    assert len(ids) - 1 == len(stored())


def test_a_full_recompute_drops_the_rows_of_customers_that_no_longer_exist():
    ids = history()
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE segmentation_customer DISABLE TRIGGER customer_metrics_delete")
        cursor.execute(f"DELETE FROM {Customer._meta.db_table} WHERE id = %s", [ids[0]])
        cursor.execute("ALTER TABLE segmentation_customer ENABLE TRIGGER customer_metrics_delete")
    assert not metrics_recompute(as_of=AS_OF, full=True).incremental
    assert ids[0] not in stored()


def test_a_changed_points_model_is_applied_to_everyone():
    history()
    activate(CUSTOM_MODEL)
    result = metrics_recompute(as_of=AS_OF + HOUR)
    assert result.incremental
    assert_matches(expected_now(AS_OF + HOUR), stored())
    assert MetricsState.objects.get().engagement == CUSTOM_MODEL
    # And back: the previous model again.
    activate(CUSTOM_MODEL | {"tiers": [{"name": "All", "min_points": -1000}]}, name="Other")
    assert metrics_recompute(as_of=AS_OF + 2 * HOUR).incremental
    assert {row["engagement_tier"] for row in stored().values()} == {"All"}


def test_email_counts_changed_by_campaigns_make_the_customer_stale():
    activate(CUSTOM_MODEL)
    ids = history()
    CustomerMetrics.objects.filter(pk=ids[5]).update(emails_opened=12)
    CustomerMetrics.objects.filter(pk=ids[6]).update(emails_opened=F("emails_opened"))
    assert set(StaleCustomerMetrics.objects.values_list("customer_id", flat=True)) == {ids[5]}
    result = metrics_recompute(as_of=AS_OF)
    assert result.incremental
    assert_matches(expected_now(AS_OF), stored())
    assert stored()[ids[5]]["emails_opened"] == 12


@pytest.mark.parametrize("how", ["save", "update"])
@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_an_event_moved_after_the_as_of_no_longer_counts(how, full):
    """The update trigger re-summarizes the customer with the moved event's new time, past
    the summary's recorded newest time: the bound follows, so the recompute filters it out."""
    history()
    moved = Event.objects.filter(type="purchase").order_by("pk").first()
    if how == "save":
        moved.occurred_at = AS_OF + timedelta(days=30)
        moved.save()
    else:
        Event.objects.filter(pk=moved.pk).update(occurred_at=AS_OF + timedelta(days=30))
    metrics_recompute(as_of=AS_OF + HOUR, purchase_types=["purchase"], full=full)
    assert_matches(expected_now(AS_OF + HOUR), stored())
    assert stored()[moved.customer_id]["last_activity_at"] <= AS_OF + HOUR
