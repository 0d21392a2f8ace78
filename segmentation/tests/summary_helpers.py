"""Test helpers for the event summary (PostgreSQL): what it should hold, what it holds, and a
summary that stops at a chosen event so that readers must add the events after it."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection

from segmentation.models import CustomerEventSummary, Event, EventSummaryState
from segmentation.services.event_summary import (
    _AGGREGATE_SQL,
    STATE_ID,
    event_summary_sync,
)

#: How a test reads events: directly, from a summary of all of them, or from a summary of the
#: first half plus the newer events (PostgreSQL only: SQLite has no summary).
EVENT_SOURCES = (
    ["events", "summary", "summary+newer"]
    if "postgresql" in settings.DATABASES["default"]["ENGINE"]
    else ["events"]
)


def expected_summary(
    upto: int | None = None,
) -> dict[tuple[int, str], tuple[int, int, object, object]]:
    """(customer, type) -> (count, cents, first, last), computed in Python from the events
    (those with ``id <= upto`` when given)."""
    rows: dict[tuple[int, str], list] = {}
    events = Event.objects.all() if upto is None else Event.objects.filter(id__lte=upto)
    for customer_id, type_, value, at in events.values_list(
        "customer_id", "type", "value", "occurred_at"
    ):
        cents = int(value * 100) if value is not None else 0
        row = rows.get((customer_id, type_))
        if row is None:
            rows[(customer_id, type_)] = [1, cents, at, at]
        else:
            row[0] += 1
            row[1] += cents
            row[2] = min(row[2], at)
            row[3] = max(row[3], at)
    return {key: tuple(value) for key, value in rows.items()}


def stored_summary() -> dict[tuple[int, str], tuple[int, int, object, object]]:
    return {
        (customer_id, type_): (count, cents, first, last)
        for customer_id, type_, count, cents, first, last in (
            CustomerEventSummary.objects.values_list(
                "customer_id", "type", "count", "value_cents", "first_at", "last_at"
            )
        )
    }


def summarize_up_to(upto: int) -> None:
    """A summary of the events with ``id <= upto`` only, as a sync at that moment made it."""
    summary = CustomerEventSummary._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {summary}")
        cursor.execute(
            f"INSERT INTO {summary} (customer_id, type, count, value_cents, first_at, last_at) "
            + _AGGREGATE_SQL.format(events=Event._meta.db_table, restrict=""),
            {"after": 0, "upto": upto},
        )
    newest = (
        Event.objects.filter(pk__lte=upto)
        .order_by("-occurred_at")
        .values_list("occurred_at", flat=True)
    ).first()
    EventSummaryState.objects.update_or_create(
        pk=STATE_ID, defaults={"last_event_id": upto, "max_occurred_at": newest}
    )


def use_event_source(source: str) -> None:
    """Set the summary up for ``source`` (one of :data:`EVENT_SOURCES`) over the events
    stored now; the summary sources skip the test on SQLite, which has no summary."""
    if source == "events":
        return
    if connection.vendor != "postgresql":
        pytest.skip("the event summary is PostgreSQL's")
    if source == "summary":
        event_summary_sync()
        return
    ids = sorted(Event.objects.values_list("pk", flat=True))
    summarize_up_to(ids[len(ids) // 2] if ids else 0)
