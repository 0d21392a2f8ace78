"""The event summary (PostgreSQL): sync, fold, rewrites by triggers, and the insert guard."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from django.db import connection, connections

from segmentation.models import Customer, CustomerEventSummary, Event, EventSummaryState
from segmentation.services import event_summary
from segmentation.services.event_summary import (
    INSERT_LOCK_KEY,
    POSTGRES_SETTINGS,
    REBUILD_POSTGRES_SETTINGS,
    event_summary_cutoff,
    event_summary_sync,
)
from segmentation.tests.factories import CustomerFactory
from segmentation.tests.summary_helpers import expected_summary, stored_summary

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def add(customer: Customer, type_: str, days: float, value: str | None = None) -> Event:
    return Event.objects.create(
        customer=customer,
        type=type_,
        occurred_at=T0 + days * DAY,
        value=Decimal(value) if value is not None else None,
    )


@pytest.fixture
def people(require_postgres):
    alice, bob, carol = (CustomerFactory(external_id=n) for n in ("alice", "bob", "carol"))
    add(alice, "purchase", 0, "10.25")
    add(alice, "purchase", 5, "0.75")
    add(alice, "session", 1)
    add(bob, "purchase", 2, "100.00")
    add(bob, "page_view", 3, "3.00")  # a value on any type is summed for that type
    return {"alice": alice, "bob": bob, "carol": carol}


def test_nothing_to_read_before_the_first_sync(people):
    assert event_summary_cutoff() is None


def test_first_sync_builds_then_syncs_fold_new_events_in(people):
    first = event_summary_sync()
    assert first.rebuilt and first.events == 5
    assert stored_summary() == expected_summary()
    assert stored_summary()[(people["alice"].pk, "purchase")] == (2, 1100, T0, T0 + 5 * DAY)

    add(people["alice"], "purchase", -3, "1.00")  # earlier than the first: moves first_at
    add(people["alice"], "purchase", 9, "2.00")
    add(people["carol"], "email_click", 4)
    cutoff = event_summary_cutoff()
    assert cutoff.newer and cutoff.last_event_id == first.last_event_id
    assert len(stored_summary()) == 4  # not folded in yet

    second = event_summary_sync()
    assert not second.rebuilt and second.events == 3
    assert second.previous_event_id == first.last_event_id
    assert stored_summary() == expected_summary()
    assert stored_summary()[(people["alice"].pk, "purchase")] == (
        4,
        1400,
        T0 - 3 * DAY,
        T0 + 9 * DAY,
    )
    state = EventSummaryState.objects.get()
    assert state.last_event_id == Event.objects.latest("pk").pk
    assert state.max_occurred_at == T0 + 9 * DAY
    assert not event_summary_cutoff().newer

    third = event_summary_sync()
    assert third.events == 0 and third.last_event_id == second.last_event_id


def test_rebuild_recomputes_everything_and_keeps_the_indexes(people):
    event_summary_sync()
    CustomerEventSummary.objects.update(count=99)  # damage it
    result = event_summary_sync(rebuild=True)
    assert result.rebuilt and result.events == 5
    assert stored_summary() == expected_summary()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1",
            [CustomerEventSummary._meta.db_table],
        )
        names = [row[0] for row in cursor.fetchall()]
    assert names == [
        "event_summary_customer_type",
        "event_summary_last",
        "segmentation_customereventsummary_pkey",
    ]


@pytest.mark.parametrize("ordered", [True, False], ids=["index-ordered", "hashed"])
def test_both_ways_of_rebuilding_summarize_every_event(people, monkeypatch, ordered):
    monkeypatch.setattr(event_summary, "_events_mostly_visible", lambda cursor: ordered)
    event_summary_sync()
    CustomerEventSummary.objects.update(count=99, value_cents=1)  # damage it
    result = event_summary_sync(rebuild=True)
    assert result.rebuilt and result.events == 5
    assert stored_summary() == expected_summary()


def test_the_ordered_rebuild_leaves_out_the_events_after_the_cutoff(people):
    """It summarizes every event it can see; the customers with one after the cutoff (here
    committed before the rebuild, as a concurrent insert would be) are summarized again from
    the events up to it."""
    cutoff = Event.objects.order_by("-id").values_list("id", flat=True)[0]
    add(people["alice"], "session", 9)
    add(people["alice"], "purchase", 10, "7.50")
    add(people["carol"], "purchase", 4, "5.00")
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {CustomerEventSummary._meta.db_table}")
        event_summary._rebuild(cursor, upto=cutoff, ordered=True)
    assert stored_summary() == expected_summary(upto=cutoff)
    assert not CustomerEventSummary.objects.filter(customer=people["carol"]).exists()
    assert CustomerEventSummary.objects.get(customer=people["alice"], type="purchase").count == 2


def _work_mem() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('work_mem')")
        return cursor.fetchone()[0]


def test_a_rebuild_groups_with_more_memory_and_gives_it_back(people):
    """The rebuild's grouping gets room for millions of groups; a fold keeps the usual
    setting, and the caller's transaction gets its own value back either way."""
    seen = []

    def spy(execute, sql, params, many, context):
        if sql.lstrip().startswith(f"INSERT INTO {CustomerEventSummary._meta.db_table}"):
            raw = context["cursor"].cursor
            raw.execute("SELECT current_setting('work_mem')")
            seen.append(raw.fetchone()[0])
        return execute(sql, params, many, context)

    before = _work_mem()
    with connection.execute_wrapper(spy):
        assert event_summary_sync().rebuilt
        add(people["carol"], "session", 7)
        assert not event_summary_sync().rebuilt
    assert seen == [REBUILD_POSTGRES_SETTINGS["work_mem"], POSTGRES_SETTINGS["work_mem"]]
    assert _work_mem() == before
    assert stored_summary() == expected_summary()


def test_deletes_and_updates_rewrite_the_customers_they_touch(people):
    alice, bob = people["alice"], people["bob"]
    event_summary_sync()
    Event.objects.filter(customer=alice, type="purchase", occurred_at=T0).delete()
    assert stored_summary() == expected_summary()
    assert stored_summary()[(alice.pk, "purchase")] == (1, 75, T0 + 5 * DAY, T0 + 5 * DAY)

    Event.objects.filter(customer=bob, type="page_view").update(
        type="purchase", value=Decimal("1.50"), occurred_at=T0 + 10 * DAY
    )
    assert stored_summary() == expected_summary()
    assert (bob.pk, "page_view") not in stored_summary()
    assert stored_summary()[(bob.pk, "purchase")] == (2, 10150, T0 + 2 * DAY, T0 + 10 * DAY)

    Event.objects.filter(customer=alice, type="session").update(customer=bob)
    assert stored_summary() == expected_summary()
    assert (alice.pk, "session") not in stored_summary()

    alice.delete()  # the ORM cascades to her events and summary rows
    assert stored_summary() == expected_summary()
    assert not any(customer == alice.pk for customer, _ in stored_summary())


def test_rewrites_leave_events_after_the_cutoff_to_the_next_sync(people):
    event_summary_sync()
    late = add(people["carol"], "purchase", 1, "5.00")
    Event.objects.filter(pk=late.pk).update(value=Decimal("6.00"))
    assert (people["carol"].pk, "purchase") not in stored_summary()
    event_summary_sync()
    assert stored_summary()[(people["carol"].pk, "purchase")] == (1, 600, T0 + DAY, T0 + DAY)


def test_truncating_the_events_empties_the_summary(people):
    event_summary_sync()
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Event._meta.db_table}")
    assert stored_summary() == {}
    assert event_summary_cutoff() is None
    add(people["bob"], "session", 1)
    assert event_summary_sync().rebuilt
    assert stored_summary() == expected_summary()


def test_every_insert_statement_takes_the_shared_guard(require_postgres):
    customer = CustomerFactory()  # customers are not guarded

    def guard_modes() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                "AND pid = pg_backend_pid()",
                [INSERT_LOCK_KEY],
            )
            return [row[0] for row in cursor.fetchall()]

    assert guard_modes() == []
    add(customer, "session", 2)
    assert guard_modes() == ["ShareLock"]  # until the transaction ends


def _conninfo() -> str:
    """For a second, independent connection to the test database."""
    settings = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=settings["NAME"],
        user=settings["USER"],
        host=settings["HOST"],
        port=settings["PORT"] or None,
        password=settings["PASSWORD"] or None,
    )


@pytest.mark.django_db(transaction=True)
def test_a_sync_waits_for_inserts_in_flight(require_postgres):
    """An event inserted by a transaction still open when the sync starts has an id below the
    ones committed after it: the sync must wait for it rather than skip past it."""
    customer = CustomerFactory()
    add(customer, "session", 0)
    event_summary_sync()
    conninfo = _conninfo()
    with psycopg.connect(conninfo) as other:
        other.execute(
            f"INSERT INTO {Event._meta.db_table} (customer_id, type, occurred_at, properties, "
            "source) VALUES (%s, 'purchase', %s, '{}', '')",
            [customer.pk, T0],
        )  # not committed: psycopg opened a transaction
        add(customer, "session", 1)  # committed, with a larger id

        done = threading.Event()

        def sync() -> None:
            try:
                event_summary_sync()
            finally:
                connections.close_all()
                done.set()

        worker = threading.Thread(target=sync)
        worker.start()
        time.sleep(0.5)
        assert not done.is_set(), "the sync did not wait for the open insert"
        other.commit()
        worker.join(10)
    assert done.is_set()
    assert stored_summary() == expected_summary()
    assert stored_summary()[(customer.pk, "purchase")][0] == 1


@pytest.mark.django_db(transaction=True)
def test_an_ordered_rebuild_mends_events_committed_after_its_cutoff(require_postgres, monkeypatch):
    """Another connection commits events after the rebuild read its cutoff and before it reads
    the events: the summary must stop at the cutoff, and the next sync folds them in."""
    alice, bob = CustomerFactory(), CustomerFactory()
    add(alice, "purchase", 0, "4.00")
    add(bob, "session", 1)
    conninfo = _conninfo()
    cutoff = Event.objects.order_by("-id").values_list("id", flat=True)[0]

    def meanwhile(cursor) -> bool:
        with psycopg.connect(conninfo) as other:  # commits on leaving
            other.execute(
                f"INSERT INTO {Event._meta.db_table} (customer_id, type, occurred_at, value, "
                "properties, source) VALUES (%s, 'purchase', %s, 6.5, '{}', ''), "
                "(%s, 'page_view', %s, NULL, '{}', '')",
                [alice.pk, T0 + 3 * DAY, bob.pk, T0 + 4 * DAY],
            )
        return True  # take the index-ordered path

    monkeypatch.setattr(event_summary, "_events_mostly_visible", meanwhile)
    result = event_summary_sync(rebuild=True)
    assert result.rebuilt and result.last_event_id == cutoff and result.events == 2
    assert stored_summary() == expected_summary(upto=cutoff)
    monkeypatch.undo()
    assert event_summary_sync().events == 2
    assert stored_summary() == expected_summary()
    assert stored_summary()[(alice.pk, "purchase")][:2] == (2, 1050)
