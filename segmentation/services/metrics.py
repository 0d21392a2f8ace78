"""Customer metrics, RFM scores, RFM segments and engagement tiers, recomputed set-based.

``metrics_recompute(as_of=...)`` rewrites ``CustomerMetrics`` for every customer in a few SQL
statements; no event or customer row is ever loaded into Python. The definitions below are
exact (they are checked against an independent reference in the tests) and are explained to
marketers in ``docs/marketers/rfm-and-engagement.md``.

Definitions
-----------
- Only events with ``occurred_at <= as_of`` count, so a recompute at a historical as-of is
  reproducible. Events whose customer no longer exists are ignored.
- Purchases are events whose ``type`` is in ``purchase_types`` (default: the setting
  ``PURCHASE_EVENT_TYPES``). ``frequency`` is their count, ``monetary`` the exact decimal sum of
  their ``value`` (a NULL value adds 0), ``first_purchase_at`` / ``last_purchase_at`` the first
  and last of their times.
- ``recency_days = floor((as_of - last_purchase_at) / 86400 s)``: whole days, so a purchase
  exactly 30 x 24 h before the as-of is 30 days old and one a microsecond later 29.
- ``last_activity_at`` is the time of the last event of any type.
- ``event_counts_30d`` / ``event_counts_90d``: ``{type: count}`` of events of every type with
  ``as_of - 30 days < occurred_at <= as_of`` (resp. 90 days); types with no event are left out,
  so a customer with no recent event has ``{}``.
- Only customers with at least one purchase are scored; N is their number. For F and M,
  ``score = 1 + floor(5 * w / N)`` where w is the number of scored customers with a strictly
  smaller frequency (monetary); for R, w is the number with a strictly larger
  ``recency_days``. In SQL w is the running count of customers per distinct value, minus the
  value's own (as ``RANK() - 1``), and the division is integer division, so ties always share
  a score; scores run 1..5.
- Customers without purchases get frequency 0, monetary 0, NULL recency and scores, and an
  empty ``rfm_segment``; they still get activity, counts and engagement points and tier.
- ``rfm_segment`` is the slug of the first RFM ``Segment`` (by ``position``, then name) whose
  rule ``{"r": [lo, hi], "f": [lo, hi]}`` (optionally also ``"m": [lo, hi]``) contains the
  customer's scores, or ``""``.
- ``engagement_points`` / ``engagement_tier`` come from the active ``EngagementModel`` (see
  ``segmentation.services.engagement``); with no active model they are 0 and ``""``.
- ``emails_sent`` / ``emails_opened`` / ``emails_clicked`` belong to the campaigns app: they are
  read (engagement rules may use them) and never written here.

Writing
-------
Each family is one statement that fills a temporary table: (1, 2) purchase and activity
aggregates and per-type counts over 30 and 90 days, in one scan of the events (the types in
the window are found first by skipping through the (type, occurred_at) index); (3, 4) scores
and RFM segment of the customers who bought, from (1); (5) every customer's new
values with engagement points and tier, compared in SQL (``IS DISTINCT FROM``) with the stored
row and kept only where they differ. Then those rows are updated and the missing ones
inserted, so an hourly run writes only what changed. ``as_of`` and ``computed_at`` on a row
are those of the last recompute that changed it.

Incremental recomputes (PostgreSQL)
-----------------------------------
A recompute records what it read in ``MetricsState`` (as-of, last event id, purchase types).
The next one, if it is at most :data:`INCREMENTAL_MAX_STEP` later, uses the same purchase
types and the event summary can serve its as-of, aggregates again only the *stale*
customers (``_step_stale``: events added, updated or deleted since, events between the two
as-ofs or crossing a window edge, customers without a computed row) and reads everyone
else's aggregates back from their stored row, which by construction are what a full
recompute would give. Recency, days since the last activity, scores and RFM segments are
still computed for everyone; points and tiers for the rows whose inputs moved (everyone's
when the points model changed). Triggers list customers whose events were updated or
deleted, who were deleted, or whose email counts changed (``StaleCustomerMetrics``).
``full=True`` forces a full recompute.

The whole recompute is one transaction (nested in the caller's, if any); on PostgreSQL it also
holds a transaction-level advisory lock so two recomputes never interleave. Engagement rules
read the email counts as they are when the tiers are computed; a count the campaigns app
changes during the recompute is kept, and reflected in the tier by the next recompute.

Vendors: PostgreSQL is the production fast path; SQLite (>= 3.33) is supported for
development. The differences live in :class:`_Dialect`: exact money on SQLite is summed in
integer cents (its decimals are REAL), and time differences are computed in integer
microseconds from Django's text timestamps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from abtest.db import postgres_local_settings
from abtest.errors import ServiceError
from segmentation.models import (
    Customer,
    CustomerEventSummary,
    CustomerMetrics,
    Event,
    MetricsState,
    Segment,
    SegmentKind,
    StaleCustomerMetrics,
)
from segmentation.services.bulk import indexes_dropped
from segmentation.services.engagement import (
    engagement_model_active_definition,
    engagement_sql_compile,
)
from segmentation.services.event_summary import SummaryCutoff, event_summary_cutoff

#: The steps of a recompute, in order. ``progress`` is called with each label once the step
#: is done, and ``MetricsRecomputeResult.seconds`` is keyed by them.
METRIC_FAMILIES: tuple[str, ...] = (
    "Purchases, activity and event counts",
    "RFM scores and segments",
    "Engagement tiers",
    "Saving changed metrics",
)
_AGGREGATES, _SCORES, _ENGAGEMENT, _WRITE = METRIC_FAMILIES

#: Type/count pairs per JSON-building call (PostgreSQL functions take at most 100 arguments).
_JSON_PAIRS_PER_CALL = 40

#: An incremental recompute may move the as-of on by at most this much (further, recomputing
#: everyone is about as fast: most customers would be stale).
INCREMENTAL_MAX_STEP = timedelta(days=7)
#: The id of the single ``MetricsState`` row.
STATE_ID = 1

#: The temporary table of the per-customer event counts in the 90-day window (event summary
#: path).
_WINDOW_TABLE = "metrics_window"

#: Windows of ``event_counts_30d`` / ``event_counts_90d``.
WINDOW_30D = timedelta(days=30)
WINDOW_90D = timedelta(days=90)

#: PostgreSQL settings for the recompute's transaction only: memory for the aggregation's hash
#: tables and the sorts of the scores (so they do not spill to disk).
POSTGRES_SETTINGS: dict[str, str] = {"work_mem": "256MB"}
#: And for an incremental recompute: its statements are many and short, and JIT compiling
#: them costs more than it saves (0.5 s of a 4 s recompute at 1M customers).
INCREMENTAL_POSTGRES_SETTINGS: dict[str, str] = {
    "jit": "off",
    # The stale customers' rows are read by index (a few thousand lookups in hot pages);
    # with the default cost of a random read, PostgreSQL scans whole tables instead.
    "random_page_cost": "1.1",
}
#: pg_advisory_xact_lock key: serialises concurrent recomputes.
ADVISORY_LOCK_KEY = 0x5E6_3E7

RFM_SCORE_MIN, RFM_SCORE_MAX = 1, 5
RFM_SEGMENT_MAX_LENGTH = 100  # CustomerMetrics.rfm_segment

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Columns that follow from the aggregates alone (unchanged for a customer who is not stale).
_AGGREGATE_COLUMNS = (
    "first_purchase_at",
    "last_purchase_at",
    "frequency",
    "monetary",
    "last_activity_at",
    "event_counts_30d",
    "event_counts_90d",
    "events_30d",
    "events_90d",
)
#: Columns that depend on the as-of, on the other customers or on the RFM and points models.
_DERIVED_COLUMNS = (
    "recency_days",
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "engagement_points",
    "engagement_tier",
)
# Columns the recompute owns (emails_* belong to campaigns and are never written).
_WRITTEN_COLUMNS = _AGGREGATE_COLUMNS + _DERIVED_COLUMNS


@dataclass(frozen=True)
class MetricsRecomputeResult:
    """What a recompute did.

    ``customers``: customers (each now has exactly one metrics row); ``scored``: customers
    with at least one purchase (N); ``inserted``: metrics rows created; ``rows_changed``:
    rows inserted or whose values changed (0 when nothing changed since the last run at the
    same as-of); ``incremental``: whether only some customers' aggregates were recomputed
    (``recomputed`` of them; everyone's otherwise); ``seconds``: duration of each step of
    :data:`METRIC_FAMILIES`.
    """

    as_of: datetime
    customers: int
    scored: int
    inserted: int
    rows_changed: int
    recomputed: int = 0
    incremental: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def rfm_segment_rule_validate(rule: Any) -> None:
    """Check an RFM segment's rule ``{"r": [lo, hi], "f": [lo, hi], "m"?: [lo, hi]}``.

    Bounds are whole numbers 1..5 with lo <= hi. Raises :class:`ServiceError` whose ``field``
    names the offending path (``rule.r``, ``rule.f[1]``...). Exposed for the admin form.
    """
    if not isinstance(rule, dict):
        raise ServiceError("rule: must be an object.", field="rule")
    unknown = sorted(set(rule) - {"r", "f", "m"})
    if unknown:
        raise ServiceError(f"rule.{unknown[0]}: is not a known key.", field=f"rule.{unknown[0]}")
    for key in ("r", "f", "m"):
        path = f"rule.{key}"
        if key not in rule:
            if key == "m":
                continue
            raise ServiceError(f"{path}: is required.", field=path)
        bounds = rule[key]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ServiceError(f"{path}: must be a list [lo, hi].", field=path)
        for i, bound in enumerate(bounds):
            if (
                not isinstance(bound, int)
                or isinstance(bound, bool)
                or not RFM_SCORE_MIN <= bound <= RFM_SCORE_MAX
            ):
                raise ServiceError(
                    f"{path}[{i}]: must be a whole number from {RFM_SCORE_MIN} to {RFM_SCORE_MAX}.",
                    field=f"{path}[{i}]",
                )
        if bounds[0] > bounds[1]:
            raise ServiceError(f"{path}: lo must not exceed hi.", field=path)


def _rfm_segments() -> list[tuple[str, dict]]:
    """(slug, rule) of the RFM segments in match order, validated."""
    rows = (
        Segment.objects.filter(kind=SegmentKind.RFM)
        .order_by("position", "name", "pk")
        .values_list("slug", "rule")
    )
    segments = []
    for slug, rule in rows:
        try:
            rfm_segment_rule_validate(rule)
        except ServiceError as exc:
            raise ServiceError(
                f"RFM segment {slug!r} has an invalid rule: {exc.message}", field=exc.field
            ) from exc
        if len(slug) > RFM_SEGMENT_MAX_LENGTH:
            raise ServiceError(
                f"RFM segment slug {slug!r} is longer than {RFM_SEGMENT_MAX_LENGTH} characters.",
                field="slug",
            )
        segments.append((slug, rule))
    return segments


class _Dialect:
    """The few SQL fragments that differ between PostgreSQL and SQLite."""

    def __init__(self) -> None:
        self.postgres = connection.vendor == "postgresql"
        if not self.postgres and connection.vendor != "sqlite":
            raise ServiceError(f"Metrics recompute does not support {connection.vendor}.")
        self.temp = "pg_temp" if self.postgres else "temp"
        self.distinct = "IS DISTINCT FROM" if self.postgres else "IS NOT"
        self.empty_json = "CAST('{}' AS jsonb)" if self.postgres else "'{}'"
        # Keeps PostgreSQL from pulling a subquery up into its parent (which would repeat
        # the engagement points expression inside the tier CASE).
        self.fence = " OFFSET 0" if self.postgres else ""

    def create_temp_table(self, cursor, name: str, select: str, params: Sequence[Any]) -> None:
        cursor.execute(f"DROP TABLE IF EXISTS {self.temp}.{name}")
        if self.postgres:
            # A utility statement takes no bound parameters, so let the driver inline them
            # (quoted) even when server-side binding is configured. CREATE TABLE AS may run
            # its SELECT with parallel workers, which INSERT ... SELECT may not.
            sql = f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {select}"
            cursor.execute(connection.ops.compose_sql(sql, list(params)))
        else:
            cursor.execute(f"CREATE TEMP TABLE {name} AS {select}", list(params))

    def analyze_temp_table(self, cursor, name: str) -> None:
        """PostgreSQL keeps no statistics on temporary tables unless asked: without them, the
        joins of the engagement step hash the wrong sides (measured: 30% slower at 1M)."""
        if self.postgres:
            cursor.execute(f"ANALYZE {self.temp}.{name}")

    def drop_temp_table(self, cursor, name: str) -> None:
        cursor.execute(f"DROP TABLE IF EXISTS {self.temp}.{name}")

    def datetime_param(self, value: datetime) -> Any:
        return connection.ops.adapt_datetimefield_value(value)

    def monetary_sum(self, condition: str) -> str:
        """The exact sum of purchase values, in integer cents: values have two decimals, and
        a BIGINT sum is both exact and much cheaper than a NUMERIC one (on SQLite, whose
        decimals are REAL, the rounding makes each value exact)."""
        if self.postgres:
            return f"coalesce(sum(CAST(e.value * 100 AS BIGINT)) FILTER (WHERE {condition}), 0)"
        return f"coalesce(sum(CAST(round(e.value * 100) AS INTEGER)) FILTER (WHERE {condition}), 0)"

    def monetary_cents(self, column: str) -> str:
        """The integer cents ``monetary_sum`` produced (ranks sort them exactly and fast)."""
        return column

    def monetary_value(self, column: str) -> str:
        """The amount from the cents ``monetary_sum`` produced."""
        if self.postgres:
            return f"CAST(CAST({column} AS NUMERIC) / 100 AS NUMERIC(16, 2))"
        return f"({column}) / 100.0"

    def whole_days_before(self, as_of: datetime, column: str) -> tuple[str, list[Any]]:
        """floor((as_of - column) / 1 day) as an integer, exactly (NULL when column is)."""
        if self.postgres:
            # The difference of two timestamptz is an interval whose days are whole 24-hour
            # periods (truncated, so floored: column is never after as_of) and whose time is
            # the rest; date_part reads the days exactly, and without the NUMERIC arithmetic
            # of extract(epoch ...) (3x faster over a million rows).
            sql = f"CAST(date_part('day', CAST(%s AS timestamptz) - {column}) AS INTEGER)"
            return sql, [as_of]
        # Django stores 'YYYY-MM-DD HH:MM:SS[.ffffff]' (UTC): whole seconds + microseconds.
        # The fraction is cut off before strftime, which would round it to milliseconds.
        micros = (
            f"(CAST(strftime('%%s', substr({column}, 1, 19)) AS INTEGER) * 1000000 + CASE WHEN "
            f"length({column}) > 20 THEN CAST(substr({column} || '00000', 21, 6) AS INTEGER) "
            "ELSE 0 END)"
        )
        # Events counted are never after as_of, so the difference is >= 0 and integer
        # division (which truncates) is floor.
        return f"((%s - {micros}) / 86400000000)", [_epoch_micros(as_of)]

    def json_counts(self, pairs: list[tuple[str, str]]) -> str:
        """A JSON object of ``(key placeholder, count expression)`` pairs, without the keys
        whose count is 0 (``{}`` when all are). Each placeholder takes ``json_key(key)``."""
        if not pairs:
            return self.empty_json
        chunks = [
            pairs[start : start + _JSON_PAIRS_PER_CALL]
            for start in range(0, len(pairs), _JSON_PAIRS_PER_CALL)
        ]
        if self.postgres:
            # Written as text and read once as jsonb: building it with jsonb_build_object and
            # jsonb_strip_nulls costs 60% more (about 3 s of a first recompute at 1M
            # customers). Keys arrive JSON-encoded, with their colon.
            texts = []
            for chunk in chunks:
                parts = ", ".join(
                    f"CASE WHEN {count} <> 0 THEN CAST({key} AS TEXT) || {count} END"
                    for key, count in chunk
                )
                texts.append(f"NULLIF(concat_ws(',', {parts}), '')")
            return f"CAST('{{' || concat_ws(',', {', '.join(texts)}) || '}}' AS jsonb)"
        # SQLite: a JSON merge patch drops the keys whose value is null.
        merged = "'{}'"
        for chunk in chunks:
            args = ", ".join(f"{key}, NULLIF({count}, 0)" for key, count in chunk)
            merged = f"json_patch({merged}, json_object({args}))"
        return merged

    def json_key(self, key: str) -> str:
        """The parameter for a key placeholder of ``json_counts``."""
        return json.dumps(key) + ":" if self.postgres else key


def _epoch_micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _window_types(cursor, d: _Dialect, *, as_of: datetime) -> list[str]:
    """The event types with an event in the 90 days up to as_of: a skip scan of the
    (type, occurred_at) index, a few probes per type, never a scan of the events."""
    cursor.execute(
        f"""
        WITH RECURSIVE {_types_cte()}
        SELECT t.type FROM t
        WHERE t.type IS NOT NULL AND EXISTS (
            SELECT 1 FROM {Event._meta.db_table} e
            WHERE e.type = t.type AND e.occurred_at > %s AND e.occurred_at <= %s
        )
        ORDER BY t.type
        """,
        [d.datetime_param(as_of - WINDOW_90D), d.datetime_param(as_of)],
    )
    return [row[0] for row in cursor.fetchall()]


def _step_aggregates(
    cursor,
    d: _Dialect,
    *,
    as_of: datetime,
    purchase_types: list[str],
    cutoff: SummaryCutoff | None,
    only: str | None = None,
    into: str = "metrics_agg",
) -> None:
    """Families 1 and 2 in one scan of the events: purchase and activity aggregates, and the
    per-type event counts over the 30 and 90 days up to as_of, into the temporary table
    ``into``.

    The types are known beforehand (``_window_types``), so each count is a filtered aggregate
    of the one per-customer group. Events of customers that no longer exist are dropped here,
    so they never count. ``only`` names a temporary table of ``customer_id`` of existing
    customers: then only those are aggregated (an incremental recompute; it needs the event
    summary).
    """
    placeholders = ", ".join(["%s"] * len(purchase_types))
    is_purchase = f"e.type IN ({placeholders})"
    recency_sql, recency_params = d.whole_days_before(as_of, "g.last_purchase_at")
    activity_sql, activity_params = d.whole_days_before(as_of, "g.last_activity_at")
    types = _window_types(cursor, d, as_of=as_of)
    since_30d = d.datetime_param(as_of - WINDOW_30D)
    since_90d = d.datetime_param(as_of - WINDOW_90D)
    type_counts = []
    type_params: list[Any] = []
    for index, event_type in enumerate(types):
        type_counts.append(
            f"count(*) FILTER (WHERE e.type = %s AND e.occurred_at > %s) AS n30_{index}, "
            f"count(*) FILTER (WHERE e.type = %s AND e.occurred_at > %s) AS n90_{index}"
        )
        type_params += [event_type, since_30d, event_type, since_90d]
    # The customers in ``only`` are known to exist.
    exists = (
        ""
        if only
        else f"WHERE EXISTS (SELECT 1 FROM {Customer._meta.db_table} c WHERE c.id = g.customer_id)"
    )
    counts_30d = d.json_counts([("%s", f"g.n30_{i}") for i in range(len(types))])
    counts_90d = d.json_counts([("%s", f"g.n90_{i}") for i in range(len(types))])
    type_columns = "".join(", " + c for c in type_counts)
    if _summary_usable(cutoff, as_of):
        # All-time aggregates from the event summary (plus the events after its cutoff); only
        # the 90-day window is read from the events.
        restrict = (
            f" AND e.customer_id IN (SELECT x.customer_id FROM {d.temp}.{only} x)" if only else ""
        )
        grouped, grouped_params = _summarized_groups(
            d,
            as_of=as_of,
            is_purchase=is_purchase.replace("e.type", "t.type"),
            cutoff=cutoff,
            only=only,
        )
        window_columns = "".join(f", w.n30_{i}, w.n90_{i}" for i in range(len(types)))
        window_sql = f"""
            SELECT e.customer_id,
                   count(*) FILTER (WHERE e.occurred_at > %s) AS events_30d,
                   count(*) AS events_90d
                   {type_columns}
            FROM {Event._meta.db_table} e
            WHERE e.occurred_at > %s AND e.occurred_at <= %s{restrict}
            GROUP BY e.customer_id
        """
        # The window's counts first, on their own: without hash aggregation PostgreSQL reads
        # the window in customer order from the (customer, time) index and counts each run,
        # instead of hashing millions of events (at 1M customers and 5M events in 90 days:
        # 1.4 s against 4 s). The summary's grouping below stays hashed, which is faster there.
        with postgres_local_settings(enable_hashagg="off"):
            d.create_temp_table(
                cursor,
                _WINDOW_TABLE,
                window_sql,
                [since_30d, *type_params, since_90d, d.datetime_param(as_of)],
            )
        d.analyze_temp_table(cursor, _WINDOW_TABLE)
        grouped_sql = f"""
            SELECT s.*, coalesce(w.events_30d, 0) AS events_30d,
                   coalesce(w.events_90d, 0) AS events_90d
                   {window_columns}
            FROM ({grouped}) s
            LEFT JOIN {d.temp}.{_WINDOW_TABLE} w ON w.customer_id = s.customer_id
        """
        group_params = [*(purchase_types * 4), *grouped_params]
    else:
        if only:
            raise ServiceError("An incremental recompute needs the event summary.")
        grouped_sql = f"""
            SELECT e.customer_id,
                   count(*) FILTER (WHERE {is_purchase}) AS frequency,
                   {d.monetary_sum(is_purchase)} AS monetary,
                   min(e.occurred_at) FILTER (WHERE {is_purchase}) AS first_purchase_at,
                   max(e.occurred_at) FILTER (WHERE {is_purchase}) AS last_purchase_at,
                   max(e.occurred_at) AS last_activity_at,
                   count(*) FILTER (WHERE e.occurred_at > %s) AS events_30d,
                   count(*) FILTER (WHERE e.occurred_at > %s) AS events_90d
                   {type_columns}
            FROM {Event._meta.db_table} e
            WHERE e.occurred_at <= %s
            GROUP BY e.customer_id
        """
        group_params = [
            *(purchase_types * 4),
            since_30d,
            since_90d,
            *type_params,
            d.datetime_param(as_of),
        ]
    select = f"""
        SELECT g.customer_id, g.frequency, g.monetary, g.first_purchase_at,
               g.last_purchase_at, g.last_activity_at,
               {recency_sql} AS recency_days,
               {activity_sql} AS days_since_last_activity,
               {counts_30d} AS counts_30d,
               {counts_90d} AS counts_90d,
               g.events_30d, g.events_90d
        FROM ({grouped_sql}) g
        {exists}
    """
    keys = [d.json_key(t) for t in types]
    params = [*recency_params, *activity_params, *keys, *keys, *group_params]
    d.create_temp_table(cursor, into, select, params)


def _summary_usable(cutoff: SummaryCutoff | None, as_of: datetime) -> bool:
    """Whether the all-time aggregates at as_of can be read from the event summary: it exists
    and holds no event after as_of (a historical as-of reads the events)."""
    return cutoff is not None and (
        cutoff.max_occurred_at is None or cutoff.max_occurred_at <= as_of
    )


def _summarized_groups(
    d: _Dialect, *, as_of: datetime, is_purchase: str, cutoff: SummaryCutoff, only: str | None
) -> tuple[str, list[Any]]:
    """Per customer: purchase count, cents, first and last purchase and last activity, from
    the event summary rows (``t``) and the events after its cutoff (none after as_of); only
    of the customers in the temporary table ``only`` when given."""
    restrict = f" IN (SELECT x.customer_id FROM {d.temp}.{only} x)" if only else ""
    rows = (
        f"SELECT customer_id, type, count, value_cents, first_at, last_at "
        f"FROM {CustomerEventSummary._meta.db_table}"
        + (f" WHERE customer_id{restrict}" if only else "")
    )
    params: list[Any] = []
    if cutoff.newer:
        rows += f"""
            UNION ALL
            SELECT e.customer_id, e.type, count(*), {d.monetary_sum("TRUE")},
                   min(e.occurred_at), max(e.occurred_at)
            FROM {Event._meta.db_table} e
            WHERE e.id > %s AND e.occurred_at <= %s{" AND e.customer_id" + restrict if only else ""}
            GROUP BY e.customer_id, e.type
        """
        params += [cutoff.last_event_id, d.datetime_param(as_of)]
    sql = f"""
        SELECT t.customer_id,
               CAST(coalesce(sum(t.count) FILTER (WHERE {is_purchase}), 0) AS BIGINT)
                   AS frequency,
               CAST(coalesce(sum(t.value_cents) FILTER (WHERE {is_purchase}), 0) AS BIGINT)
                   AS monetary,
               min(t.first_at) FILTER (WHERE {is_purchase}) AS first_purchase_at,
               max(t.last_at) FILTER (WHERE {is_purchase}) AS last_purchase_at,
               max(t.last_at) AS last_activity_at
        FROM ({rows}) t
        GROUP BY t.customer_id
    """
    return sql, params


@dataclass(frozen=True)
class _Increment:
    """What an incremental recompute starts from: the previous recompute's as-of and the
    last event id it had read (all smaller ids included)."""

    previous_as_of: datetime
    after_event_id: int
    #: Whether the engagement points model differs from the one the previous run applied.
    engagement_changed: bool


def _increment_plan(
    *,
    d: _Dialect,
    as_of: datetime,
    purchase_types: list[str],
    cutoff: SummaryCutoff | None,
    definition: dict | None,
    full: bool,
) -> _Increment | None:
    """An incremental recompute is possible when the previous one left its state, used the
    same purchase types, was at most :data:`INCREMENTAL_MAX_STEP` before as_of (never after),
    and the event summary can serve as_of and has not moved back (a ``TRUNCATE`` of the
    events resets both), and some metrics row is stored. Otherwise None: recompute everyone.

    With no row stored (the metrics were emptied since), every customer would be stale: the
    full recompute computes the same rows faster (at 1M customers, 6 s against 9-11 s)."""
    if full or not d.postgres or not _summary_usable(cutoff, as_of):
        return None
    state = MetricsState.objects.select_for_update().filter(pk=STATE_ID).first()
    if (
        state is None
        or not CustomerMetrics.objects.exists()
        or not state.last_event_id
        or state.as_of is None
        or state.purchase_types != purchase_types
        or cutoff.last_event_id < state.last_event_id
        or not state.as_of <= as_of <= state.as_of + INCREMENTAL_MAX_STEP
    ):
        return None
    return _Increment(
        previous_as_of=state.as_of,
        after_event_id=state.last_event_id,
        engagement_changed=state.engagement != definition,
    )


def _types_cte() -> str:
    """``t(type)``: every event type, by skipping through the (type, occurred_at) index."""
    events = Event._meta.db_table
    return f"""t(type) AS (
        SELECT min(type) FROM {events}
        UNION ALL
        SELECT (SELECT min(e.type) FROM {events} e WHERE e.type > t.type) FROM t
        WHERE t.type IS NOT NULL
    )"""


def _step_stale(cursor, d: _Dialect, *, as_of: datetime, increment: _Increment) -> int:
    """The customers whose aggregates may differ from their stored row, into the temporary
    table ``metrics_stale``; returns their number.

    A customer's aggregates at as_of equal those at the previous as-of unless one of their
    events was added since (id after the previous run's last), was updated or deleted (the
    triggers list them in ``StaleCustomerMetrics``, claimed here), occurred between the two
    as-ofs, or left the 30- or 90-day window between them; or the customer has no computed
    row yet. Recency and days since the last activity follow from the stored times.
    """
    events = Event._meta.db_table
    metrics = CustomerMetrics._meta.db_table
    previous = increment.previous_as_of
    parts = [f"SELECT e.customer_id FROM {events} e WHERE e.id > %s"]
    params: list[Any] = [increment.after_event_id]
    for window in (timedelta(0), WINDOW_30D, WINDOW_90D):
        if previous < as_of:
            parts.append(
                f"SELECT e.customer_id FROM t JOIN {events} e ON e.type = t.type "
                "AND e.occurred_at > %s AND e.occurred_at <= %s"
            )
            params += [d.datetime_param(previous - window), d.datetime_param(as_of - window)]
    # Customers without a computed row: only looked for when the counts say there are some
    # (each row belongs to an existing customer, one row per customer; one snapshot).
    cursor.execute(
        f"SELECT (SELECT count(*) FROM {Customer._meta.db_table}), "
        f"(SELECT count(*) FROM {metrics} WHERE computed_at IS NOT NULL)"
    )
    customers, computed = cursor.fetchone()
    if customers != computed:
        parts.append(
            f"SELECT c.id FROM {Customer._meta.db_table} c WHERE NOT EXISTS (SELECT 1 FROM "
            f"{metrics} m WHERE m.customer_id = c.id AND m.computed_at IS NOT NULL)"
        )
    union = " UNION ALL ".join(parts)
    d.create_temp_table(
        cursor, "metrics_stale_found", f"WITH RECURSIVE {_types_cte()} {union}", params
    )
    # Claim the list the triggers keep; the rows of customers deleted since (a trigger lists
    # them there) go, as nobody reads them again.
    cursor.execute(
        f"WITH claimed AS (DELETE FROM {StaleCustomerMetrics._meta.db_table} "
        "RETURNING customer_id), "
        f"gone AS (DELETE FROM {metrics} m USING claimed x "
        "WHERE m.customer_id = x.customer_id AND NOT EXISTS ("
        f"SELECT 1 FROM {Customer._meta.db_table} c WHERE c.id = m.customer_id)) "
        f"INSERT INTO {d.temp}.metrics_stale_found SELECT customer_id FROM claimed"
    )
    d.analyze_temp_table(cursor, "metrics_stale_found")
    d.create_temp_table(
        cursor,
        "metrics_stale",
        f"SELECT DISTINCT x.customer_id FROM {d.temp}.metrics_stale_found x WHERE EXISTS ("
        f"SELECT 1 FROM {Customer._meta.db_table} c WHERE c.id = x.customer_id)",
        [],
    )
    d.drop_temp_table(cursor, "metrics_stale_found")
    d.analyze_temp_table(cursor, "metrics_stale")
    cursor.execute(f"SELECT count(*) FROM {d.temp}.metrics_stale")
    return int(cursor.fetchone()[0])


def _step_aggregates_incremental(
    cursor,
    d: _Dialect,
    *,
    as_of: datetime,
    purchase_types: list[str],
    cutoff: SummaryCutoff,
    increment: _Increment,
) -> int:
    """``metrics_agg`` as :func:`_step_aggregates` makes it, but of the stale customers only,
    and ``metrics_rank`` (recency, frequency, cents) of every customer who bought: the stale
    ones from ``metrics_agg``, everyone else from their stored row (recency at as_of).
    Returns the number of stale customers."""
    stale = _step_stale(cursor, d, as_of=as_of, increment=increment)
    _step_aggregates(
        cursor,
        d,
        as_of=as_of,
        purchase_types=purchase_types,
        cutoff=cutoff,
        only="metrics_stale",
    )
    recency_sql, recency_params = d.whole_days_before(as_of, "m.last_purchase_at")
    select = f"""
        SELECT m.customer_id, {recency_sql} AS recency_days,
               CAST(m.frequency AS BIGINT) AS frequency,
               CAST(m.monetary * 100 AS BIGINT) AS monetary
        FROM {CustomerMetrics._meta.db_table} m
        WHERE m.frequency > 0 AND {_stored_condition(d, "m")}
        UNION ALL
        SELECT a.customer_id, a.recency_days, a.frequency, a.monetary
        FROM {d.temp}.metrics_agg a
        WHERE a.frequency > 0
    """
    d.create_temp_table(cursor, "metrics_rank", select, recency_params)
    return stale


def _step_scores(
    cursor, d: _Dialect, *, segments: list[tuple[str, dict]], source: str = "metrics_agg"
) -> int:
    """Families 3 and 4: R, F, M scores and the RFM segment of the customers who bought.

    N is the number of customers with a purchase; w the number of them with a strictly
    smaller frequency (monetary), or a strictly larger ``recency_days``: the running count of
    customers per distinct value, in that order, minus the value's own. The score is
    ``1 + (5 * w) / N`` in integer division, so ties always share a score. Money is ranked in
    integer cents (exact, and faster than NUMERIC).
    Returns N.
    """
    segment_whens: list[str] = []
    segment_params: list[Any] = []
    for slug, rule in segments:
        conditions = []
        for key in ("r", "f", "m"):
            if key in rule:
                conditions.append(
                    f"s.{key}_score BETWEEN CAST(%s AS INTEGER) AND CAST(%s AS INTEGER)"
                )
                segment_params.extend(int(bound) for bound in rule[key])
        segment_whens.append(f"WHEN {' AND '.join(conditions)} THEN CAST(%s AS TEXT)")
        segment_params.append(slug)
    segment_sql = f"CASE {' '.join(segment_whens)} ELSE '' END" if segment_whens else "''"

    cursor.execute(f"SELECT count(*) FROM {d.temp}.{source} WHERE frequency > 0")
    n = int(cursor.fetchone()[0])

    table = f"{d.temp}.{source}"

    def below(column: str, order: str) -> str:
        """Per distinct value of ``column``: w, the number of scored customers before it in
        ``order`` (strictly smaller, or larger for DESC). Grouping first sorts a few hundred
        values instead of every customer, as ``rank() - 1`` over the customers would."""
        return f"""(
            SELECT g.v, CAST(sum(g.n) OVER (ORDER BY g.v {order}) AS BIGINT) - g.n AS w
            FROM (SELECT {column} AS v, count(*) AS n FROM {table}
                  WHERE frequency > 0 GROUP BY {column}) g
        )"""

    def rank(key: str) -> str:
        return f"CAST(1 + (5 * (rank() OVER (ORDER BY {key}) - 1)) / %s AS INTEGER)"

    if d.postgres:  # hash joins to the grouped values
        scores = f"""
            SELECT a.customer_id,
                   CAST(1 + (5 * r.w) / %s AS INTEGER) AS r_score,
                   CAST(1 + (5 * f.w) / %s AS INTEGER) AS f_score,
                   CAST(1 + (5 * m.w) / %s AS INTEGER) AS m_score
            FROM {table} a
            JOIN {below("recency_days", "DESC")} r ON r.v = a.recency_days
            JOIN {below("frequency", "ASC")} f ON f.v = a.frequency
            JOIN {below(d.monetary_cents("monetary"), "ASC")} m
                ON m.v = {d.monetary_cents("a.monetary")}
            WHERE a.frequency > 0
        """
    else:  # SQLite would join the grouped subqueries by nested loops: rank() instead
        scores = f"""
            SELECT a.customer_id,
                   {rank("a.recency_days DESC")} AS r_score,
                   {rank("a.frequency ASC")} AS f_score,
                   {rank(d.monetary_cents("a.monetary") + " ASC")} AS m_score
            FROM {table} a
            WHERE a.frequency > 0
        """
    select = f"""
        SELECT s.customer_id, s.r_score, s.f_score, s.m_score, {segment_sql} AS rfm_segment
        FROM ({scores}) s
    """
    # N is a parameter rather than count(*) OVER (), which would buffer every row again.
    d.create_temp_table(cursor, "metrics_scores", select, [*segment_params, n, n, n])
    for name in ("metrics_agg", "metrics_scores"):
        d.analyze_temp_table(cursor, name)
    return n


def _recomputed_rows(d: _Dialect, *, stale_only: bool) -> str:
    """The engagement step's input rows (``y``) for the customers whose aggregates are in
    ``metrics_agg``: every customer, or (``stale_only``) those in ``metrics_stale``."""
    old = ",\n".join(f"e.{column} AS old_{column}" for column in (*_WRITTEN_COLUMNS, "computed_at"))
    stale_join = f"JOIN {d.temp}.metrics_stale x ON x.customer_id = c.id" if stale_only else ""
    return f"""
        SELECT c.id AS customer_id, e.customer_id IS NOT NULL AS has_row, TRUE AS stale,
               coalesce(e.emails_sent, 0) AS emails_sent,
               coalesce(e.emails_opened, 0) AS emails_opened,
               coalesce(e.emails_clicked, 0) AS emails_clicked,
               a.first_purchase_at, a.last_purchase_at, a.recency_days,
               coalesce(a.frequency, 0) AS frequency,
               {d.monetary_value("coalesce(a.monetary, 0)")} AS monetary,
               a.last_activity_at, a.days_since_last_activity,
               coalesce(a.counts_30d, {d.empty_json}) AS event_counts_30d,
               coalesce(a.counts_90d, {d.empty_json}) AS event_counts_90d,
               coalesce(a.events_30d, 0) AS events_30d,
               coalesce(a.events_90d, 0) AS events_90d,
               s.r_score, s.f_score, s.m_score,
               coalesce(s.rfm_segment, '') AS rfm_segment,
               {old}
        FROM {Customer._meta.db_table} c
        {stale_join}
        LEFT JOIN {CustomerMetrics._meta.db_table} e ON e.customer_id = c.id
        LEFT JOIN {d.temp}.metrics_agg a ON a.customer_id = c.id
        LEFT JOIN {d.temp}.metrics_scores s ON s.customer_id = c.id
    """


def _stored_rows(d: _Dialect, *, as_of: datetime, increment: _Increment) -> tuple[str, list[Any]]:
    """The engagement step's input rows (``y``) for the customers who are not stale: their
    aggregates as stored, recency and days since the last activity at as_of.

    Unless the points model changed, only the rows whose other inputs moved are returned:
    recency or days since the last activity (a day boundary passed), scores or RFM segment.
    The rest would get the points and tier they have (their aggregates are unchanged, and a
    change of email counts makes a customer stale).
    """
    recency_sql, recency_params = d.whole_days_before(as_of, "e.last_purchase_at")
    activity_sql, activity_params = d.whole_days_before(as_of, "e.last_activity_at")
    before_sql, before_params = d.whole_days_before(increment.previous_as_of, "e.last_activity_at")
    moved, moved_params = "", []
    if not increment.engagement_changed:
        moved = f"""
          AND (s.r_score {d.distinct} e.r_score OR s.f_score {d.distinct} e.f_score
               OR s.m_score {d.distinct} e.m_score
               OR coalesce(s.rfm_segment, '') {d.distinct} e.rfm_segment
               OR {recency_sql} {d.distinct} e.recency_days
               OR {activity_sql} {d.distinct} {before_sql})"""
        moved_params = [*recency_params, *activity_params, *before_params]
    # The stored aggregates are the new ones: never compared (stale is false) nor written
    # (see _step_write), so not copied, except those the points model reads.
    old = ",\n".join(
        f"NULL AS old_{column}" if column in _AGGREGATE_COLUMNS else f"e.{column} AS old_{column}"
        for column in (*_WRITTEN_COLUMNS, "computed_at")
    )
    sql = f"""
        SELECT e.customer_id, TRUE AS has_row, FALSE AS stale,
               e.emails_sent, e.emails_opened, e.emails_clicked,
               NULL AS first_purchase_at, NULL AS last_purchase_at,
               {recency_sql} AS recency_days,
               e.frequency, e.monetary, NULL AS last_activity_at,
               {activity_sql} AS days_since_last_activity,
               NULL AS event_counts_30d, NULL AS event_counts_90d, e.events_30d, e.events_90d,
               s.r_score, s.f_score, s.m_score,
               coalesce(s.rfm_segment, '') AS rfm_segment,
               {old}
        FROM {CustomerMetrics._meta.db_table} e
        LEFT JOIN {d.temp}.metrics_scores s ON s.customer_id = e.customer_id
        WHERE {_stored_condition(d, "e")}{moved}
    """
    return sql, [*recency_params, *activity_params, *moved_params]


def _stored_condition(d: _Dialect, alias: str) -> str:
    """Rows of an incremental recompute whose aggregates are read back: computed before, and
    not stale. (Their customers exist: a deleted customer is stale, and the rows of customers
    deleted earlier were dropped.)"""
    return f"""{alias}.computed_at IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM {d.temp}.metrics_stale x
                          WHERE x.customer_id = {alias}.customer_id)"""


def _step_engagement(
    cursor, d: _Dialect, *, definition: dict | None, rows: str, rows_params: Sequence[Any]
) -> int:
    """Family 5 and the comparison: the new values of the customers in ``rows`` with
    engagement points and tier, kept only where they differ from the stored row (or there is
    none, or it was never computed). The stored row also gives the campaigns app's email
    counts, which the points model may use. Returns the number of rows to write.

    ``rows`` yields, per customer, the new metrics, ``has_row``, ``stale`` (whether the
    aggregates were recomputed: only then can they differ from the stored ones) and the
    stored values as ``old_<column>``.
    """
    if definition is None:
        points_sql, points_params, tier_sql, tier_params = "0", (), "''", ()
    else:
        compiled = engagement_sql_compile(
            definition=definition,
            metric_sql={
                "frequency": "y.frequency",
                "monetary": "y.monetary",
                "recency_days": "y.recency_days",
                "emails_sent": "y.emails_sent",
                "emails_opened": "y.emails_opened",
                "emails_clicked": "y.emails_clicked",
                "r_score": "y.r_score",
                "f_score": "y.f_score",
                "m_score": "y.m_score",
                "days_since_last_activity": "y.days_since_last_activity",
                "events_30d": "y.events_30d",
                "events_90d": "y.events_90d",
            },
            points_sql="z.engagement_points",
            exact_decimals=d.postgres,
        )
        points_sql, points_params = compiled.points_sql, compiled.points_params
        tier_sql, tier_params = compiled.tier_sql, compiled.tier_params

    def differ(columns) -> str:
        return " OR ".join(f"w.old_{column} {d.distinct} w.{column}" for column in columns)

    select = f"""
        SELECT w.customer_id, w.has_row, w.stale, {", ".join(f"w.{c}" for c in _WRITTEN_COLUMNS)}
        FROM (
            SELECT z.*, {tier_sql} AS engagement_tier
            FROM (
                SELECT y.*, {points_sql} AS engagement_points
                FROM ({rows}) y{d.fence}
            ) z
        ) w
        WHERE NOT w.has_row OR w.old_computed_at IS NULL OR {differ(_DERIVED_COLUMNS)}
           OR (w.stale AND ({differ(_AGGREGATE_COLUMNS)}))
    """
    d.create_temp_table(cursor, "metrics_new", select, [*tier_params, *points_params, *rows_params])
    cursor.execute(f"SELECT count(*) FROM {d.temp}.metrics_new")
    return int(cursor.fetchone()[0])


def _step_write(cursor, d: _Dialect, *, as_of: datetime, computed_at: datetime) -> tuple[int, int]:
    """Write the changed rows: update the existing ones, insert the missing ones.

    Returns (rows inserted, rows inserted or updated). A row another transaction inserts
    meanwhile (the campaigns app counting an email) is left alone until the next run.
    New rows go in in customer order: a first recompute inserts a million of them, and in
    the hash join's order every insert lands on a random leaf of the primary key (measured
    at 1M rows: 12-14 s unordered, 5 s ordered, the sort included).
    """
    table = CustomerMetrics._meta.db_table
    stamps = [d.datetime_param(as_of), d.datetime_param(computed_at)]
    columns = ", ".join(_WRITTEN_COLUMNS)
    values = ", ".join(f"n.{column}" for column in _WRITTEN_COLUMNS)
    insert = f"""
        INSERT INTO {table} (customer_id, {columns}, emails_sent, emails_opened,
            emails_clicked, as_of, computed_at)
        SELECT n.customer_id, {values}, 0, 0, 0, %s, %s
        FROM {d.temp}.metrics_new n
        WHERE NOT n.has_row
    """
    if d.postgres and _empty_and_locked(cursor, table):
        # A first recompute (or one after the metrics were emptied): every row is new, so
        # load them all and build the indexes afterwards (measured at 1M rows: 5.7 s
        # instead of 14 s), with the table locked, so that nobody inserts one meanwhile.
        with indexes_dropped(cursor, table, primary_key=True):
            cursor.execute(insert, stamps)
            inserted = max(cursor.rowcount, 0)
        return inserted, inserted
    # Usually a few rows (index lookups), sometimes all of them (one hash join).
    d.analyze_temp_table(cursor, "metrics_new")
    # The aggregates of a customer who was not stale are unchanged (and not in metrics_new).
    assignments = ", ".join(
        f"{column} = CASE WHEN n.stale THEN n.{column} ELSE m.{column} END"
        if column in _AGGREGATE_COLUMNS
        else f"{column} = n.{column}"
        for column in _WRITTEN_COLUMNS
    )
    cursor.execute(
        f"""
        UPDATE {table} AS m
        SET {assignments}, as_of = %s, computed_at = %s
        FROM {d.temp}.metrics_new n
        WHERE m.customer_id = n.customer_id AND n.has_row
        """,
        stamps,
    )
    updated = max(cursor.rowcount, 0)
    cursor.execute(f"{insert} ORDER BY n.customer_id ON CONFLICT (customer_id) DO NOTHING", stamps)
    inserted = max(cursor.rowcount, 0)
    return inserted, updated + inserted


def _empty_and_locked(cursor, table: str) -> bool:
    """Whether ``table`` has no row; if so it is locked against every other transaction until
    this one ends (checked again under the lock: a row may have come meanwhile)."""
    cursor.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {table})")
    if not cursor.fetchone()[0]:
        return False
    cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    cursor.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {table})")
    return cursor.fetchone()[0]


def metrics_recompute(
    *,
    as_of: datetime,
    purchase_types: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    full: bool = False,
) -> MetricsRecomputeResult:
    """Recompute every customer's metrics, RFM scores and segment, and engagement tier.

    ``as_of`` (timezone-aware) is the instant the metrics describe: later events are ignored.
    ``purchase_types`` defaults to ``settings.PURCHASE_EVENT_TYPES``. ``progress`` is called
    with the label of each step of :data:`METRIC_FAMILIES` as it finishes; it runs inside the
    recompute's transaction, so database writes it makes on the same connection are only
    seen by others once the recompute commits (and are rolled back if it fails).

    Raises :class:`ServiceError` (before writing anything) for a naive ``as_of``, no purchase
    types, an invalid RFM segment rule or an invalid active engagement model.
    """
    if timezone.is_naive(as_of):
        raise ServiceError("as_of must be timezone-aware.", field="as_of")
    if purchase_types is None:
        purchase_types = settings.PURCHASE_EVENT_TYPES
    if isinstance(purchase_types, str):
        raise ServiceError("purchase_types must be a list of event types.", field="purchase_types")
    types = sorted({str(t) for t in purchase_types if str(t)})
    if not types:
        raise ServiceError("Name at least one purchase event type.", field="purchase_types")

    d = _Dialect()
    seconds: dict[str, float] = {}

    def run(label: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = step()
        seconds[label] = round(time.perf_counter() - started, 4)
        if progress is not None:
            progress(label)
        return value

    with (
        transaction.atomic(),
        postgres_local_settings(**POSTGRES_SETTINGS),
        ExitStack() as settings_stack,
        connection.cursor() as cursor,
    ):
        if d.postgres:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
        segments = _rfm_segments()
        definition = engagement_model_active_definition()
        computed_at = timezone.now()

        cutoff = event_summary_cutoff() if d.postgres else None
        increment = _increment_plan(
            d=d,
            as_of=as_of,
            purchase_types=types,
            cutoff=cutoff,
            definition=definition,
            full=full,
        )
        if increment is not None:
            settings_stack.enter_context(postgres_local_settings(**INCREMENTAL_POSTGRES_SETTINGS))
            recomputed = run(
                _AGGREGATES,
                lambda: _step_aggregates_incremental(
                    cursor,
                    d,
                    as_of=as_of,
                    purchase_types=types,
                    cutoff=cutoff,
                    increment=increment,
                ),
            )
            source = "metrics_rank"
            stored_sql, rows_params = _stored_rows(d, as_of=as_of, increment=increment)
            rows = _recomputed_rows(d, stale_only=True) + " UNION ALL " + stored_sql
        else:
            if d.postgres:
                # Everyone is recomputed, so the list of stale customers is moot; and the
                # rows of customers that no longer exist go (the next incremental recompute
                # reads the stored rows back).
                cursor.execute(f"DELETE FROM {StaleCustomerMetrics._meta.db_table}")
                cursor.execute(
                    f"DELETE FROM {CustomerMetrics._meta.db_table} m WHERE NOT EXISTS ("
                    f"SELECT 1 FROM {Customer._meta.db_table} c WHERE c.id = m.customer_id)"
                )
            run(
                _AGGREGATES,
                lambda: _step_aggregates(
                    cursor, d, as_of=as_of, purchase_types=types, cutoff=cutoff
                ),
            )
            recomputed = None
            source, rows, rows_params = "metrics_agg", _recomputed_rows(d, stale_only=False), []
        scored = run(_SCORES, lambda: _step_scores(cursor, d, segments=segments, source=source))
        run(
            _ENGAGEMENT,
            lambda: _step_engagement(
                cursor, d, definition=definition, rows=rows, rows_params=rows_params
            ),
        )
        inserted, changed = run(
            _WRITE, lambda: _step_write(cursor, d, as_of=as_of, computed_at=computed_at)
        )
        cursor.execute(f"SELECT count(*) FROM {Customer._meta.db_table}")
        customers = int(cursor.fetchone()[0])
        if d.postgres:
            MetricsState.objects.update_or_create(
                pk=STATE_ID,
                defaults={
                    "as_of": as_of,
                    # Every event up to the summary's cutoff was committed before this
                    # recompute began (see event_summary), so it has been read.
                    "last_event_id": cutoff.last_event_id if cutoff is not None else 0,
                    "purchase_types": types,
                    "engagement": definition,
                    "computed_at": computed_at,
                },
            )
        for name in (
            _WINDOW_TABLE,
            "metrics_agg",
            "metrics_scores",
            "metrics_new",
            "metrics_stale",
            "metrics_rank",
        ):
            d.drop_temp_table(cursor, name)

    return MetricsRecomputeResult(
        as_of=as_of,
        customers=customers,
        scored=scored,
        inserted=inserted,
        rows_changed=changed,
        recomputed=customers if recomputed is None else recomputed,
        incremental=recomputed is not None,
        seconds=seconds,
    )
