"""Benchmark: the full refresh pipeline (metrics + RFM + tiers + every segment), 1M customers.

    .venv/bin/python bench/bench_refresh.py [--timeout-factor 10]
    # ~5 min (+ ~4 min the first time: builds the shared 10M-event database)

On the shared database ``abtest_bench_loaded`` (1M customers, 10M events; see
``bench/_support.py``) with the default RFM segments and five rule segments created through
``segment_create``, times ``refresh_now()`` in a fresh Python process (as a worker would run
it), reading its peak RSS (VmHWM):

1. first run: no metrics, no memberships yet (derived tables emptied first);
2. an hour later: 10,000 new events, as_of one hour on (the hourly refresh: little changed),
   with the table statistics as the app leaves them (this server runs without autovacuum);
3. diagnostic: the same again after ``ANALYZE`` of the metrics and membership tables (what
   autovacuum would eventually do), to tell stale statistics from the pipeline's own cost.

A run still going after ``--timeout-factor`` times the baseline (at least 180 s) is stopped
(its queries terminated) and reported as "> limit".

Baseline, same run: ``CREATE TABLE AS SELECT customer_id, count(*), sum(value),
min(occurred_at), max(occurred_at) FROM segmentation_event GROUP BY customer_id`` (best of
two, before and after). ``ratio`` = figure / baseline (goal: at most 2x).

Floors, same run, after the runs: the three parts of the work every first run does, each
timed bare (``floors``): the metrics' own per-customer aggregate of the events as
``CREATE TABLE AS``, writing a metrics row per customer into an empty copy of the table and
building its indexes, and the same for the current memberships; with their sum.

Peak memory must not grow with the number of events: the first run is repeated on a scratch
database with the same 1M customers and 2M events (every 5th event) and both peaks are
printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import (
    DB_PREFIX,
    LOADED_DB,
    PYTHON,
    ROOT,
    RefreshFigures,
    RefreshTimeout,
    Row,
    bench_env,
    checkpoint,
    code_fingerprint,
    connect,
    data_end,
    django_setup,
    ensure_rule_segments,
    event_data,
    fmt,
    goal,
    load_customers,
    load_events,
    loaded_database,
    log,
    meta_set,
    print_table,
    ratio,
    refresh_in_child,
    reset_derived,
    scratch_database,
    timed,
    vacuum_analyze,
)

GOAL_RATIO = 2.0
#: Peak RSS at 10M events may exceed the 2M-event peak by at most this much.
MEMORY_TOLERANCE_MB = 25.0
HOUR_EVENTS = 10_000
HOUR_SOURCE = "bench-hour"

BASELINE_SQL = (
    "CREATE TABLE bench_customer_agg AS SELECT customer_id, count(*) AS n, sum(value) AS total, "
    "min(occurred_at) AS first_at, max(occurred_at) AS last_at "
    "FROM segmentation_event GROUP BY customer_id"
)


def baseline(db: str) -> float:
    checkpoint(db)
    with connect(db) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_customer_agg")
        with timed("baseline: CREATE TABLE AS per-customer aggregate") as t:
            conn.execute(BASELINE_SQL)
        conn.execute("DROP TABLE bench_customer_agg")
    return t[0]


@dataclass(frozen=True)
class Floors:
    """Work every first run must do, each timed bare (see ``floors``), in seconds."""

    aggregate: float
    metrics_write: float
    memberships_write: float
    memberships: int

    @property
    def total(self) -> float:
        return self.aggregate + self.metrics_write + self.memberships_write


_INDEX_TARGET = re.compile(r"^(CREATE (?:UNIQUE )?INDEX) \S+ ON \S+")


def _write_copy(conn, table: str, where: str, label: str) -> tuple[float, int]:
    """Rows of ``table`` staged in a temporary table, then timed: a new empty table of the
    same shape, one INSERT without its indexes, then each index built (the cheapest way to
    write a whole table: what dropping and rebuilding the indexes around a load gives)."""
    conn.execute("DROP TABLE IF EXISTS bench_floor_rows")
    conn.execute("DROP TABLE IF EXISTS bench_floor_copy")
    conn.execute(f"CREATE TEMP TABLE bench_floor_rows AS SELECT * FROM {table} {where}")
    rows = conn.execute("SELECT count(*) FROM bench_floor_rows").fetchone()[0]
    indexes = [
        definition
        for (definition,) in conn.execute(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass",
            [table],
        ).fetchall()
    ]
    conn.execute("CHECKPOINT")
    with timed(label) as t:
        conn.execute(f"CREATE TABLE bench_floor_copy (LIKE {table} INCLUDING DEFAULTS)")
        conn.execute("INSERT INTO bench_floor_copy SELECT * FROM bench_floor_rows")
        for definition in indexes:
            # "CREATE [UNIQUE] INDEX name ON public.table USING ..." -> on the copy.
            conn.execute(_INDEX_TARGET.sub(r"\1 ON bench_floor_copy", definition))
    conn.execute("DROP TABLE bench_floor_copy")
    conn.execute("DROP TABLE bench_floor_rows")
    return t[0], rows


def floors(db: str) -> Floors:
    """Three parts of a first run, each timed bare after the runs (which leave the rows to
    copy): the metrics' own per-customer aggregate of the events (purchases, activity, counts
    per type over 30 and 90 days) as ``CREATE TABLE AS``; writing a metrics row per customer;
    writing the current memberships. Every first run does this work, and more (the event
    summary, the scores, the tiers and the segments' queries)."""
    checkpoint(db)
    with connect(db) as conn:
        types = [
            t
            for (t,) in conn.execute(
                "SELECT DISTINCT type FROM segmentation_customereventsummary ORDER BY 1"
            ).fetchall()
        ]
        end = conn.execute("SELECT max(occurred_at) FROM segmentation_event").fetchone()[0]
        windows = "".join(
            f", count(*) FILTER (WHERE e.type = %(t{i})s AND e.occurred_at > %(d30)s) AS n30_{i}"
            f", count(*) FILTER (WHERE e.type = %(t{i})s AND e.occurred_at > %(d90)s) AS n90_{i}"
            for i in range(len(types))
        )
        params = {f"t{i}": t for i, t in enumerate(types)}
        params |= {"d30": end - dt.timedelta(days=30), "d90": end - dt.timedelta(days=90)}
        sql = (
            "CREATE TABLE bench_floor_agg AS SELECT e.customer_id, "
            "count(*) FILTER (WHERE e.type = 'purchase') AS frequency, "
            "sum(CAST(e.value * 100 AS BIGINT)) FILTER (WHERE e.type = 'purchase') AS cents, "
            "min(e.occurred_at) FILTER (WHERE e.type = 'purchase') AS first_purchase_at, "
            "max(e.occurred_at) FILTER (WHERE e.type = 'purchase') AS last_purchase_at, "
            "max(e.occurred_at) AS last_activity_at, "
            "count(*) FILTER (WHERE e.occurred_at > %(d30)s) AS events_30d, "
            f"count(*) FILTER (WHERE e.occurred_at > %(d90)s) AS events_90d{windows} "
            "FROM segmentation_event e GROUP BY e.customer_id"
        )
        conn.execute("DROP TABLE IF EXISTS bench_floor_agg")
        conn.execute("SET work_mem = '256MB'")
        with timed("floor: the metrics' per-customer aggregate, CREATE TABLE AS") as t:
            conn.execute(sql, params)
        conn.execute("DROP TABLE bench_floor_agg")
        metrics, _ = _write_copy(
            conn, "segmentation_customermetrics", "", "floor: write a metrics row per customer"
        )
        memberships, count = _write_copy(
            conn,
            "segmentation_segmentmembership",
            "WHERE left_at IS NULL",
            "floor: write the current memberships",
        )
    return Floors(t[0], metrics, memberships, count)


def remove_hours(db: str) -> None:
    """Remove the previous run's extra hours of events, if any."""
    with connect(db) as conn:
        deleted = conn.execute(
            "DELETE FROM segmentation_event WHERE source = %s", [HOUR_SOURCE]
        ).rowcount
    if deleted:
        log(f"removed {deleted:,} events of a previous run's extra hour")
        vacuum_analyze(db, "segmentation_event")


def add_hour(db: str, start: dt.datetime, tag: str) -> None:
    """An hour of new traffic after ``start``: 10,000 events of existing customers."""
    with connect(db) as conn:
        conn.execute(
            """
            INSERT INTO segmentation_event
                (customer_id, type, occurred_at, value, properties, source, event_id)
            SELECT customer_id, type, %(start)s::timestamptz + (id %% 3600) * interval '1 second',
                   value, properties, %(source)s, %(tag)s || id
            FROM segmentation_event WHERE id %% 1000 = 7 AND source = '' ORDER BY id LIMIT %(n)s
            """,
            {"start": start, "source": HOUR_SOURCE, "tag": tag, "n": HOUR_EVENTS},
        )
    checkpoint(db)


def analyze_derived(db: str) -> None:
    """What autovacuum would eventually do to the tables a refresh rewrites."""
    with connect(db) as conn:
        for table in ("segmentation_customermetrics", "segmentation_segmentmembership"):
            conn.execute(f"ANALYZE {table}")


def refresh(db: str, as_of: dt.datetime, label: str, timeout: float) -> RefreshFigures | None:
    """One refresh in a child process; None when it ran out of time."""
    with timed(f"refresh_now ({label})"):
        try:
            figures = refresh_in_child(db, as_of, timeout=timeout)
        except RefreshTimeout as error:
            log(f"  {error}; its queries were cancelled")
            return None
    log(
        f"  {figures.seconds:.1f} s, peak RSS {figures.peak_rss_mb:.0f} MB "
        f"(before: {figures.start_rss_mb:.0f} MB); steps: {figures.timings}"
    )
    return figures


def seconds_row(label: str, figures: RefreshFigures | None, base: float, timeout: float) -> Row:
    if figures is None:
        return (label, f"> {timeout:.0f}", "s", fmt(base), f"> {timeout / base:.0f}x")
    return (label, fmt(figures.seconds), "s", fmt(base), ratio(figures.seconds, base))


def rss_row(label: str, figures: RefreshFigures | None, base: RefreshFigures | None) -> Row:
    value = None if figures is None else figures.peak_rss_mb
    reference = None if base is None else base.peak_rss_mb
    return (label, fmt(value), "MB", fmt(reference), ratio(value, reference))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--timeout-factor",
        type=float,
        default=10.0,
        help="stop a refresh after this many baselines (at least 180 s)",
    )
    args = parser.parse_args(argv)

    loaded = loaded_database()
    db, end = loaded.name, loaded.end
    django_setup(db)
    created = ensure_rule_segments()
    if created:
        log(f"created {created} rule segments")
    from django.db import connection

    from segmentation.models import Segment

    segments = Segment.objects.exclude(kind="static").count()
    connection.close()

    remove_hours(db)
    reset_derived(db)
    base = [baseline(db)]
    timeout = max(180.0, args.timeout_factor * base[0])
    hour = dt.timedelta(hours=1)
    first = refresh(db, end, "first run, 10M events", timeout)
    add_hour(db, end, "h1-")
    hourly = refresh(db, end + hour, "an hour later, 10,000 new events", timeout)
    analyze_derived(db)
    add_hour(db, end + hour, "h2-")
    analyzed = refresh(db, end + 2 * hour, "another hour, after ANALYZE", timeout)
    meta_set(
        LOADED_DB,
        refreshed_code=code_fingerprint(),
        refreshed_as_of=(end + 2 * hour).isoformat(),
    )
    base.append(baseline(db))
    agg_seconds = min(base)
    floor = floors(db)

    small_events = event_data().every(5)
    with scratch_database(f"{DB_PREFIX}_refresh") as small:
        with timed("load 1M customers"):
            load_customers(small, end=data_end())
        with timed(f"load {len(small_events):,} events"):
            load_events(small, small_events, end=end)
        _create_segments_in(small)
        small_base = baseline(small)
        small_first = refresh(
            small, end, f"first run, {len(small_events) / 1e6:g}M events", timeout
        )

    small_label = f"{len(small_events) / 1e6:g}M"
    rows = [
        seconds_row(
            f"refresh: metrics + RFM + tiers + {segments} segments, 1M customers, 10M events, "
            "first run",
            first,
            agg_seconds,
            timeout,
        ),
        seconds_row(
            f"refresh: an hour later ({HOUR_EVENTS:,} new events), statistics as the app "
            "leaves them",
            hourly,
            agg_seconds,
            timeout,
        ),
        seconds_row(
            "refresh: another hour later, after ANALYZE of metrics and memberships (diagnostic)",
            analyzed,
            agg_seconds,
            timeout,
        ),
        rss_row(
            f"refresh: worker peak RSS, 10M events, first run (baseline: {small_label})",
            first,
            small_first,
        ),
        rss_row(
            f"refresh: worker peak RSS, 10M events, hourly run (baseline: {small_label})",
            hourly,
            small_first,
        ),
        seconds_row(
            f"refresh: same pipeline, 1M customers, {small_label} events, first run",
            small_first,
            small_base,
            timeout,
        ),
        *(
            (f"floor: {label}", fmt(seconds), "s", fmt(agg_seconds), ratio(seconds, agg_seconds))
            for label, seconds in (
                (
                    "the metrics' own per-customer aggregate (purchases, activity, counts per "
                    "type over 30/90 days), CREATE TABLE AS",
                    floor.aggregate,
                ),
                (
                    "write 1M metrics rows into an empty table, then build its indexes",
                    floor.metrics_write,
                ),
                (
                    f"write the {floor.memberships:,} current memberships the same way",
                    floor.memberships_write,
                ),
                ("the three together (a first run does all three, and more)", floor.total),
            )
        ),
        (
            "baseline: CREATE TABLE AS per-customer aggregate, 10M events, best of 2",
            fmt(agg_seconds),
            "s",
            "-",
            "-",
        ),
    ]
    steps = "n/a" if first is None else ", ".join(f"{k}: {v}" for k, v in first.timings.items())
    print_table(
        rows,
        intro=(
            f"1M customers, 10M events over 18 months ending {end:%Y-%m-%d}; refresh_now() in "
            "a fresh process (time excludes interpreter start and Django setup; a run is "
            f"stopped after {timeout:.0f} s). Baseline runs: "
            f"{', '.join(f'{s:.1f} s' for s in base)}. Peak RSS is the worker's VmHWM; its "
            f"baseline is the same first run over {small_label} events. Step timings (s), "
            f"first run: {steps}"
        ),
    )
    for label, figures in (("first run", first), ("hourly run", hourly)):
        seconds = timeout if figures is None else figures.seconds
        goal(
            f"{label} <= {GOAL_RATIO:g}x bare CREATE TABLE AS "
            f"({'>' if figures is None else ''}{seconds / agg_seconds:.2f}x)",
            figures is not None and seconds <= GOAL_RATIO * agg_seconds,
        )
    if first is not None and small_first is not None:
        growth = first.peak_rss_mb - small_first.peak_rss_mb
        goal(
            f"peak RSS does not grow with events (10M: {first.peak_rss_mb:.0f} MB, "
            f"{small_label}: {small_first.peak_rss_mb:.0f} MB, {growth:+.0f} MB)",
            growth <= MEMORY_TOLERANCE_MB,
        )
    else:
        goal("peak RSS does not grow with events (a run did not finish)", False)
    return 0


def _create_segments_in(db: str) -> None:
    """The same rule segments in another database: a child process with Django on ``db``."""
    code = (
        "import sys; sys.path.insert(0, '.'); "
        "from bench._support import django_setup, ensure_rule_segments; "
        f"django_setup({db!r}); "
        "print(f'rule segments created: {ensure_rule_segments()}', file=sys.stderr)"
    )
    subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=bench_env(db), check=True)


if __name__ == "__main__":
    sys.exit(main())
