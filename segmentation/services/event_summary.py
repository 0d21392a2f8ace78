"""The per-customer, per-type event summary (PostgreSQL): counts, values, first and last times.

``CustomerEventSummary`` holds, for every customer and event type, the number of events, the
sum of their values (integer cents) and the first and last ``occurred_at``, over the events up
to ``EventSummaryState.last_event_id`` (the *cutoff*). Rule conditions over all time ("never
purchased", "fewer than 2 purchases", "a session in the last 90 days") and the all-time
metrics read it instead of aggregating every event again; they add the events after the
cutoff, which are few because the refresh pipeline (and a short periodic task) moves the
cutoff forward with :func:`event_summary_sync`.

Why the cutoff is safe: event ids come from a sequence, so a transaction still inserting
could hold an id below the largest committed one. Every statement that inserts events takes
a shared advisory lock first (a statement trigger, migration 0006), and the sync reads the
largest id while holding that lock exclusively for an instant: at that moment no insert is in
flight, so every id up to the cutoff is committed and none can appear later.

Updates and deletes of events (an admin fix, a customer deleted) recompute the summary of the
customers they touch, in the same transaction (statement triggers with transition tables), so
the summary never counts an event that is gone. A ``TRUNCATE`` of the events empties it.
:data:`REWRITE_LOCK_KEY` serializes those rewrites with the sync.

On SQLite (development) there is no summary: rules and metrics read the events directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from abtest.db import postgres_local_settings
from segmentation.models import CustomerEventSummary, Event, EventSummaryState
from segmentation.services.bulk import indexes_dropped, vacuum

#: Shared by every statement inserting events (trigger); taken exclusively by the sync for the
#: instant it reads the largest event id. Keep in step with migration 0006.
INSERT_LOCK_KEY = 7_320_101
#: Serializes the sync with the triggers that rewrite the summary after updates and deletes.
REWRITE_LOCK_KEY = 7_320_102

STATE_ID = 1
#: For the sync's transaction: room for the grouping's hash table.
POSTGRES_SETTINGS = {"work_mem": "256MB"}
#: For a rebuild, which groups every event: room for the hash table of about four million
#: (customer, type) groups (hash tables may use twice ``work_mem``), so that it does not
#: spill to disk (10M events in 2M groups: 256MB spilled in five batches, and the rebuild's
#: INSERT took 14.1 s against 12.3 s with this).
REBUILD_POSTGRES_SETTINGS = {"work_mem": "512MB"}


def event_summary_enabled() -> bool:
    return connection.vendor == "postgresql"


@dataclass(frozen=True)
class SummaryCutoff:
    """How far the summary goes: events with ``id <= last_event_id`` are in it; ``newer`` says
    whether any event after the cutoff exists (readers then add those)."""

    last_event_id: int
    newer: bool
    max_occurred_at: datetime | None


def event_summary_cutoff() -> SummaryCutoff | None:
    """The summary's cutoff, or None when there is no summary to read (SQLite, never synced).

    Inside a transaction the state row is share-locked until the transaction ends, so a sync
    cannot move the cutoff between this read and the caller's queries.
    """
    if not event_summary_enabled():
        return None
    share = " FOR SHARE" if connection.in_atomic_block else ""
    # max(id) is one probe of the primary key; "EXISTS (... WHERE id > cutoff)" with the
    # cutoff from the row would be planned as a scan of every event when there is none.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT s.last_event_id, s.max_occurred_at, "
            f"(SELECT max(e.id) FROM {Event._meta.db_table} e) "
            f"FROM {EventSummaryState._meta.db_table} s WHERE s.id = %s{share}",
            [STATE_ID],
        )
        row = cursor.fetchone()
    if row is None or not row[0]:
        return None
    last_event_id, max_occurred_at, largest = row
    newer = largest is not None and largest > last_event_id
    return SummaryCutoff(last_event_id, bool(newer), max_occurred_at)


@dataclass(frozen=True)
class SummarySyncResult:
    previous_event_id: int
    last_event_id: int
    events: int  # events folded in (all of them on a rebuild)
    rebuilt: bool
    seconds: float


_AGGREGATE_SQL = """
SELECT e.customer_id, e.type, count(*) AS count,
       coalesce(sum(CAST(e.value * 100 AS BIGINT)), 0) AS value_cents,
       min(e.occurred_at) AS first_at, max(e.occurred_at) AS last_at
FROM {events} e
WHERE e.id > %(after)s AND e.id <= %(upto)s{restrict}
GROUP BY e.customer_id, e.type
"""

#: A rebuild from the (customer_id, occurred_at) index, which includes the type: each
#: customer's events arrive together, so they are grouped by sorting a few rows at a time
#: instead of hashing every event (measured at 10M events, 2M groups: 7.7 s against 10.5 s).
#: Values are not in that index: their sums are hashed first, in a statement of their own
#: (``_REBUILD_VALUES_SQL``: sorting them with the rest would be slow where most events
#: carry a value). Both read every visible event, so rows after the cutoff are mended
#: afterwards (``_MEND_*``).
_REBUILD_VALUES_SQL = """
CREATE TEMP TABLE event_summary_values ON COMMIT DROP AS
SELECT e.customer_id, e.type, sum(CAST(e.value * 100 AS BIGINT)) AS cents
FROM {events} e
WHERE e.value IS NOT NULL
GROUP BY e.customer_id, e.type
"""
_REBUILD_ORDERED_SQL = """
INSERT INTO {summary} (customer_id, type, count, value_cents, first_at, last_at)
SELECT g.customer_id, g.type, g.count, coalesce(v.cents, 0), g.first_at, g.last_at
FROM (
    SELECT e.customer_id, e.type, count(*) AS count,
           min(e.occurred_at) AS first_at, max(e.occurred_at) AS last_at
    FROM {events} e
    GROUP BY e.customer_id, e.type
) g
LEFT JOIN pg_temp.event_summary_values v ON v.customer_id = g.customer_id AND v.type = g.type
"""
#: The customers with a visible event after the cutoff: their rows are summarized again from
#: the events up to the cutoff only.
_MEND_CUSTOMERS_SQL = """
CREATE TEMP TABLE event_summary_mend ON COMMIT DROP AS
SELECT DISTINCT e.customer_id FROM {events} e WHERE e.id > %(upto)s
"""
_MEND_DELETE_SQL = """
DELETE FROM {summary} s USING pg_temp.event_summary_mend m WHERE s.customer_id = m.customer_id
"""
_MEND_RESTRICT = " AND e.customer_id IN (SELECT m.customer_id FROM pg_temp.event_summary_mend m)"
#: The ordered rebuild reads the index alone only where the events' pages are marked
#: all-visible (autovacuum keeps them so); otherwise it would fetch every event from the
#: table in customer order, and hashing is faster.
ORDERED_REBUILD_MIN_VISIBLE = 0.9

_FOLD_SQL = """
INSERT INTO {summary} AS s (customer_id, type, count, value_cents, first_at, last_at)
{aggregate}
ORDER BY 1, 2
ON CONFLICT (customer_id, type) DO UPDATE SET
    count = s.count + EXCLUDED.count,
    value_cents = s.value_cents + EXCLUDED.value_cents,
    first_at = least(s.first_at, EXCLUDED.first_at),
    last_at = greatest(s.last_at, EXCLUDED.last_at)
"""


def _largest_committed_id(cursor) -> int:
    """The largest event id, read while no insert is in flight (see the module docstring)."""
    cursor.execute("SELECT pg_advisory_lock(%s)", [INSERT_LOCK_KEY])
    try:
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {Event._meta.db_table}")
        return int(cursor.fetchone()[0])
    finally:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [INSERT_LOCK_KEY])


def _events_mostly_visible(cursor) -> bool:
    """Whether the planner's statistics say most of the events' pages are all-visible."""
    cursor.execute(
        "SELECT relpages > 0 AND relallvisible >= %s * relpages FROM pg_class "
        "WHERE oid = CAST(%s AS regclass)",
        [ORDERED_REBUILD_MIN_VISIBLE, Event._meta.db_table],
    )
    return bool(cursor.fetchone()[0])


def _rebuild(cursor, *, upto: int, ordered: bool) -> None:
    """Fill the (emptied) summary with the events up to ``upto``.

    Loading a million rows and then building each index is several times faster than
    maintaining the indexes row by row; the primary key too (measured at 2M summary rows:
    2.0 s to load and 0.5 s to build it, against 4.3 s with it).

    ``ordered`` groups the events in the order of the (customer_id, occurred_at) index
    (``_REBUILD_ORDERED_SQL``). Those statements cannot skip the events after ``upto``
    without reading the table, so they summarize every event they see, and the customers
    with an event after ``upto`` are summarized again from the events up to it. Every event
    up to ``upto`` was committed before this began (see the module docstring), so every
    statement sees them all, the same way (an update or delete waits for this transaction's
    rewrite lock before it can commit): the statements' views differ only in events after
    ``upto``, and an event after ``upto`` that one of them saw is still seen by the mending
    statements, which run later (commits are never undone).
    """
    summary = CustomerEventSummary._meta.db_table
    events = Event._meta.db_table
    with (
        postgres_local_settings(**REBUILD_POSTGRES_SETTINGS),
        indexes_dropped(cursor, summary, primary_key=True),
    ):
        if ordered:
            cursor.execute("DROP TABLE IF EXISTS pg_temp.event_summary_values")
            cursor.execute(_REBUILD_VALUES_SQL.format(events=events))
            cursor.execute("ANALYZE pg_temp.event_summary_values")
            with postgres_local_settings(enable_hashagg="off"):
                cursor.execute(_REBUILD_ORDERED_SQL.format(summary=summary, events=events))
            cursor.execute("DROP TABLE pg_temp.event_summary_values")
        else:
            cursor.execute(
                f"INSERT INTO {summary} (customer_id, type, count, value_cents, first_at, "
                f"last_at) {_AGGREGATE_SQL.format(events=events, restrict='')}",
                {"after": 0, "upto": upto},
            )
    if ordered:
        # After the indexes are back, so that the mending finds the rows by index.
        cursor.execute("DROP TABLE IF EXISTS pg_temp.event_summary_mend")
        cursor.execute(_MEND_CUSTOMERS_SQL.format(events=events), {"upto": upto})
        cursor.execute(_MEND_DELETE_SQL.format(summary=summary))
        cursor.execute(
            f"INSERT INTO {summary} (customer_id, type, count, value_cents, first_at, last_at) "
            + _AGGREGATE_SQL.format(events=events, restrict=_MEND_RESTRICT),
            {"after": 0, "upto": upto},
        )
        cursor.execute("DROP TABLE pg_temp.event_summary_mend")


def event_summary_sync(*, rebuild: bool = False) -> SummarySyncResult | None:
    """Bring the summary up to the latest committed event; None on SQLite.

    Folds the events after the cutoff in (one grouped upsert), or with ``rebuild`` (or the
    first time) recomputes the whole summary. Safe to run at any time and concurrently with
    ingestion; two syncs simply take turns.
    """
    if not event_summary_enabled():
        return None
    started = time.perf_counter()
    summary = CustomerEventSummary._meta.db_table
    events = Event._meta.db_table
    with (
        transaction.atomic(),
        postgres_local_settings(**POSTGRES_SETTINGS),
        connection.cursor() as cursor,
    ):
        upto = _largest_committed_id(cursor)
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [REWRITE_LOCK_KEY])
        state, _ = EventSummaryState.objects.select_for_update().get_or_create(pk=STATE_ID)
        after = state.last_event_id
        rebuilt = rebuild or after == 0
        if rebuilt:
            cursor.execute(f"TRUNCATE {summary}")
            after = 0
        elif upto <= after:
            return SummarySyncResult(after, after, 0, False, time.perf_counter() - started)
        aggregate = _AGGREGATE_SQL.format(events=events, restrict="")
        params = {"after": after, "upto": upto}
        if rebuilt:
            _rebuild(cursor, upto=upto, ordered=_events_mostly_visible(cursor))
        else:
            cursor.execute(_FOLD_SQL.format(summary=summary, aggregate=aggregate), params)
        if rebuilt:  # the summary is much smaller than the events
            cursor.execute(f"SELECT sum(count), max(last_at) FROM {summary}")
        else:
            cursor.execute(
                f"SELECT count(*), max(occurred_at) FROM {events} WHERE id > %s AND id <= %s",
                [after, upto],
            )
        folded, newest = cursor.fetchone()
        previous_newest = None if rebuilt else state.max_occurred_at
        if previous_newest is None or (newest is not None and newest > previous_newest):
            state.max_occurred_at = newest
        state.last_event_id = upto
        state.synced_at = timezone.now()
        state.save()
    if rebuilt:
        with connection.cursor() as cursor:
            # Statistics for the planner, and the visibility map for index-only scans (VACUUM
            # cannot run inside a transaction; autovacuum gets there otherwise).
            cursor.execute(
                f"{'ANALYZE' if connection.in_atomic_block else 'VACUUM (ANALYZE)'} {summary}"
            )
    else:
        # Folds update rows all over the table, and each clears its page's all-visible mark:
        # rules read the summary by index only while those marks are set.
        vacuum(summary)
    return SummarySyncResult(
        previous_event_id=0 if rebuilt else after,
        last_event_id=upto,
        events=int(folded or 0),
        rebuilt=rebuilt,
        seconds=round(time.perf_counter() - started, 4),
    )
