"""Benchmark: rule-segment preview COUNT over realistic rules, 1M customers, 10M events.

    .venv/bin/python bench/bench_preview.py [--runs 15]    # ~1-2 min on a built database
                                                          # (+ ~5 min to build it once)

On the shared database ``abtest_bench_loaded`` (see ``bench/_support.py``; its metrics, RFM
segments and the benchmark's rule segments are refreshed first when they are missing or were
computed by other code), each rule's preview count, ``segment_preview(rule=...,
sample_size=0)`` (what the builder page and the API run: compile + COUNT in the preview's
transaction, with its work_mem and time limit), is run once to warm up and then
``--runs`` times; we print the median and p95 per rule and over all runs, and name the
slowest rule (by p95). The full ``segment_preview`` (count + the 10-customer sample) is timed
too, over all rules. Baseline,
same run: ``SELECT count(*) FROM segmentation_customer`` (median). Goal: p95 under 300 ms.
Diagnostic, same run: the COUNT of every customer joined with their metrics row, no condition
(preview settings): what a rule testing customer fields and metrics of most customers pays
before testing anything.

Runaway plans are contained: the app's own 15 s limit cancels a preview (reported as
"> 15000"), and a rule whose warm-up takes over 2 s gets 3 timed runs instead of 15. The
plans of the three slowest rules go to stderr (EXPLAIN ANALYZE; plain EXPLAIN if cancelled).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import (
    LOADED_DB,
    Row,
    code_fingerprint,
    django_setup,
    ensure_rule_segments,
    fmt,
    goal,
    loaded_database,
    log,
    median,
    meta_get,
    meta_set,
    p95,
    print_table,
    refresh_in_child,
    reset_derived,
    timed,
)

GOAL_P95_MS = 300.0
#: The app cancels a preview after this long (segmentation.selectors.PREVIEW_TIMEOUT_SECONDS).
TIMEOUT_MS = 15_000.0
#: A rule whose warm-up takes longer than this gets only SLOW_RUNS timed runs.
SLOW_MS = 2_000.0
SLOW_RUNS = 3

#: (name, rule): customer fields, attributes, metrics and scores, event windows ("at least k
#: in the last d days", "never", "fewer than"), segment membership, nested any/all.
RULES: tuple[tuple[str, dict], ...] = (
    (
        "customer fields: subscribed, English locale, has email",
        {
            "all": [
                {"field": "subscription_status", "op": "eq", "value": "subscribed"},
                {"field": "locale", "op": "in", "value": ["en-US", "en-GB"]},
                {"field": "email", "op": "is_set"},
            ]
        },
    ),
    (
        "customer fields: gmail address, signed up in the last 90 days",
        {
            "all": [
                {"field": "email", "op": "contains", "value": "@gmail."},
                {"field": "created_at", "op": "within_last_days", "value": 90},
            ]
        },
    ),
    (
        "attributes: pro/enterprise plan, age 25-40, Berlin or Munich",
        {
            "all": [
                {"field": "attributes.plan", "op": "in", "value": ["pro", "enterprise"]},
                {"field": "attributes.age", "op": "between", "value": [25, 40]},
                {"field": "attributes.city", "op": "in", "value": ["Berlin", "Munich"]},
            ]
        },
    ),
    (
        "metrics: 3+ purchases and spent 100+",
        {
            "all": [
                {"field": "metrics.frequency", "op": "gte", "value": 3},
                {"field": "metrics.monetary", "op": "gte", "value": 100},
            ]
        },
    ),
    (
        "scores/tier: R>=4 and F>=4, or tier Star",
        {
            "any": [
                {
                    "all": [
                        {"field": "metrics.r_score", "op": "gte", "value": 4},
                        {"field": "metrics.f_score", "op": "gte", "value": 4},
                    ]
                },
                {"field": "metrics.engagement_tier", "op": "eq", "value": "Star"},
            ]
        },
    ),
    (
        "event window: 2+ purchases in the last 30 days",
        {"all": [{"event": "purchase", "op": "at_least", "count": 2, "days": 30}]},
    ),
    (
        "event window: 5+ page views in 7 days, never purchased",
        {
            "all": [
                {"event": "page_view", "op": "at_least", "count": 5, "days": 7},
                {"event": "purchase", "op": "never"},
            ]
        },
    ),
    (
        "event window: no session in 90 days, clicked an email in 30",
        {
            "all": [
                {"event": "session", "op": "never", "days": 90},
                {"event": "email_click", "op": "at_least", "count": 1, "days": 30},
            ]
        },
    ),
    (
        "event window: fewer than 2 purchases ever, active in the last 14 days",
        {
            "all": [
                {"event": "purchase", "op": "fewer_than", "count": 2},
                {"field": "metrics.last_activity_at", "op": "within_last_days", "value": 14},
            ]
        },
    ),
    (
        "segments: champions, not lapsed high value",
        {
            "all": [
                {"segment": "champions", "op": "in"},
                {"segment": "bench-lapsed-high-value", "op": "not_in"},
            ]
        },
    ),
    (
        "nested any/all: subscribed and (recent pro buyer or recent clicker or active)",
        {
            "all": [
                {"field": "subscription_status", "op": "eq", "value": "subscribed"},
                {
                    "any": [
                        {
                            "all": [
                                {"field": "attributes.plan", "op": "eq", "value": "pro"},
                                {"event": "purchase", "op": "at_least", "count": 1, "days": 90},
                            ]
                        },
                        {
                            "all": [
                                {"field": "metrics.recency_days", "op": "lte", "value": 30},
                                {
                                    "event": "email_click",
                                    "op": "at_least",
                                    "count": 1,
                                    "days": 30,
                                },
                            ]
                        },
                        {"field": "metrics.last_activity_at", "op": "within_last_days", "value": 7},
                    ]
                },
            ]
        },
    ),
)


#: What bringing every customer's row together with their metrics row costs, before any
#: condition is tested (the "diagnostic" row): what a rule testing customer fields and
#: metrics of most customers pays at least.
JOIN_FLOOR_SQL = (
    "SELECT count(*) FROM segmentation_customer c "
    "JOIN segmentation_customermetrics m ON m.customer_id = c.id"
)


def ensure_refreshed(db: str, end: dt.datetime) -> dt.datetime:
    """Metrics and segments computed by the current code; returns their as-of (the "now")."""
    meta = meta_get(db)
    if meta.get("refreshed_code") == code_fingerprint() and meta.get("refreshed_as_of"):
        return dt.datetime.fromisoformat(meta["refreshed_as_of"])
    # From scratch (a first run): the quickest way to correct metrics and memberships.
    reset_derived(db)
    with timed("refresh metrics and segments (code changed or never refreshed)"):
        refresh_in_child(db, end)
    meta_set(db, refreshed_code=code_fingerprint(), refreshed_as_of=end.isoformat())
    return end


@dataclass
class RuleTiming:
    name: str
    rule: dict
    count: int | None = None
    runs: list[float] = field(default_factory=list)  # ms; a cancelled run counts as the limit
    timed_out: bool = False

    @property
    def p95(self) -> float:
        return p95(self.runs)

    def show(self, value: float) -> str:
        return f"> {value:.0f}" if self.timed_out and value >= TIMEOUT_MS else f"{value:.0f}"


def _count_sql(rule: dict, now: dt.datetime) -> tuple[str, tuple]:
    from django.db import connection

    from segmentation.rules import rule_matches

    captured: list[tuple[str, tuple]] = []

    def capture(execute, sql, params, many, context):
        if not sql.startswith("SELECT COUNT(*)"):
            return execute(sql, params, many, context)  # e.g. segment slugs to ids
        captured.append((sql, params))
        raise _Captured

    with connection.execute_wrapper(capture), contextlib.suppress(_Captured):
        rule_matches(rule, now=now).ids.count()
    return captured[-1]


class _Captured(Exception):
    pass


def explain_to_stderr(timing: RuleTiming, now: dt.datetime) -> None:
    """The plan of a rule's preview COUNT on stderr (EXPLAIN ANALYZE unless it timed out)."""
    from django.db import connection, transaction

    from abtest.db import postgres_local_settings
    from segmentation.selectors import preview_postgres_settings

    sql, params = _count_sql(timing.rule, now)
    how = "EXPLAIN" if timing.timed_out else "EXPLAIN (ANALYZE, BUFFERS)"
    with (
        transaction.atomic(),
        postgres_local_settings(**preview_postgres_settings()),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"{how} {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    try:
        shown = sql % tuple(params)
    except (TypeError, ValueError):
        shown = f"{sql} {params}"
    print(f"\n{how}, {timing.name}:\n{shown}\n{plan}\n", file=sys.stderr, flush=True)


def measure(timing: RuleTiming, fn, runs: int) -> None:
    """One warm-up (which gives the count), then ``runs`` timed runs (only ``SLOW_RUNS`` when
    the warm-up took longer than ``SLOW_MS``); a run cancelled by the statement timeout ends
    the rule's runs."""
    from django.db import OperationalError

    from segmentation.selectors import SegmentPreviewTooSlow

    for index in range(runs + 1):
        started = time.perf_counter()
        try:
            value = fn()
        except (OperationalError, SegmentPreviewTooSlow) as error:
            if isinstance(error, OperationalError) and "statement timeout" not in str(error):
                raise
            timing.timed_out = True
            timing.runs.append(TIMEOUT_MS)
            return
        elapsed = (time.perf_counter() - started) * 1000
        if index == 0:
            timing.count = value
            if elapsed > SLOW_MS:
                runs = min(runs, SLOW_RUNS)
        else:
            timing.runs.append(elapsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)

    loaded = loaded_database()
    django_setup(loaded.name)
    if ensure_rule_segments():
        meta_set(LOADED_DB, refreshed_code="")  # new segments: their membership is missing
    now = ensure_refreshed(loaded.name, loaded.end)

    from django.db import connection
    from django.db.backends.signals import connection_created

    from segmentation.selectors import segment_preview

    def guard(sender, connection, **kwargs) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {int(TIMEOUT_MS)}")

    connection_created.connect(guard)
    connection.close()  # the next query opens a guarded connection

    def count_all() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM segmentation_customer")
            return cursor.fetchone()[0]

    base_timing = RuleTiming("count(*)", {})
    measure(base_timing, count_all, args.runs)
    base = median(base_timing.runs)

    def count_joined() -> int:
        """``JOIN_FLOOR_SQL`` in a preview's transaction (its settings)."""
        from django.db import transaction

        from abtest.db import postgres_local_settings
        from segmentation.selectors import preview_postgres_settings

        with (
            transaction.atomic(),
            postgres_local_settings(**preview_postgres_settings()),
            connection.cursor() as cursor,
        ):
            cursor.execute(JOIN_FLOOR_SQL)
            return cursor.fetchone()[0]

    join_timing = RuleTiming("join", {})
    measure(join_timing, count_joined, args.runs)
    timings: list[RuleTiming] = []
    for name, rule in RULES:
        timing = RuleTiming(name, rule)
        # What the builder page and the API run: compile + COUNT in the preview's transaction
        # (its work_mem and time limit), without the sample.
        measure(
            timing,
            lambda rule=rule: segment_preview(rule=rule, now=now, sample_size=0).count,
            args.runs,
        )
        timings.append(timing)
        count = "?" if timing.count is None else f"{timing.count:,}"
        log(
            f"{name}: {count} customers, median {timing.show(median(timing.runs))} ms, "
            f"p95 {timing.show(timing.p95)} ms ({len(timing.runs)} runs)"
        )
    full = RuleTiming("segment_preview", {})
    for timing in timings:
        if not timing.timed_out:
            measure(full, lambda rule=timing.rule: segment_preview(rule=rule, now=now), 3)

    ranked = sorted(timings, key=lambda t: t.p95, reverse=True)
    for timing in ranked[:3]:
        explain_to_stderr(timing, now)
    slowest = ranked[0]
    all_runs = [ms for timing in timings for ms in timing.runs]
    overall = RuleTiming("all", {}, runs=all_runs, timed_out=any(t.timed_out for t in timings))
    rows: list[Row] = [
        (
            f"preview count: {t.name} ({'?' if t.count is None else f'{t.count:,}'})",
            f"{t.show(median(t.runs))} / {t.show(t.p95)}",
            "ms median / p95",
            f"{base:.0f}",
            f"{t.p95 / base:.1f}x",
        )
        for t in timings
    ]
    rows += [
        (
            f"preview count: all {len(RULES)} rules, median",
            overall.show(median(all_runs)),
            "ms",
            f"{base:.0f}",
            f"{median(all_runs) / base:.1f}x",
        ),
        (
            f"preview count: all {len(RULES)} rules, p95",
            overall.show(overall.p95),
            "ms",
            f"{base:.0f}",
            f"{overall.p95 / base:.1f}x",
        ),
        (
            "segment_preview (count + 10-customer sample), rules that finish, p95",
            fmt(full.p95) if full.runs else "n/a",
            "ms",
            f"{base:.0f}",
            f"{full.p95 / base:.1f}x" if full.runs else "n/a",
        ),
        (
            "diagnostic: every customer joined with their metrics row, no condition, COUNT",
            f"{median(join_timing.runs):.0f} / {join_timing.p95:.0f}",
            "ms median / p95",
            f"{base:.0f}",
            f"{join_timing.p95 / base:.1f}x",
        ),
        (
            "baseline: SELECT count(*) FROM segmentation_customer, median",
            f"{base:.0f}",
            "ms",
            "-",
            "-",
        ),
    ]
    print_table(
        rows,
        intro=(
            f"1M customers, 10M events; rules evaluated at {now:%Y-%m-%d %H:%M} UTC (where "
            f"the data ends). Each rule: 1 warm-up + {args.runs} runs of the preview count "
            f"(compile + COUNT; {SLOW_RUNS} runs when the warm-up took over {SLOW_MS:.0f} ms; "
            f"the app's {TIMEOUT_MS / 1000:.0f} s limit, shown as '> limit'). Slowest rule "
            f"(p95): {slowest.name} ({slowest.show(slowest.p95)} ms). segment_preview: "
            "1 warm-up + 3 runs per rule that finishes."
        ),
    )
    goal(
        f"preview count p95 < {GOAL_P95_MS:.0f} ms over all rules "
        f"({overall.show(overall.p95)} ms; slowest rule: {slowest.name}, "
        f"p95 {slowest.show(slowest.p95)} ms)",
        overall.p95 < GOAL_P95_MS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
