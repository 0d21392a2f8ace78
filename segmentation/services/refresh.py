"""The refresh pipeline: customer metrics, RFM scores, engagement tiers, then every segment.

One run at a time: on PostgreSQL an advisory lock guards the pipeline, so the hourly schedule,
a marketer's button and an ops command never overlap; a run whose worker died is marked
failed by the next run, or by the next request for one (running, yet nobody holds the
lock). Progress (step, steps done, timings) is saved on the ``RefreshRun`` as the pipeline
goes, in its own small updates, so pages can poll it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import sql
from django.utils import timezone

from abtest.models import JobStatus
from segmentation.models import RefreshRun, Segment
from segmentation.services.bulk import analyze_if_stale, vacuum
from segmentation.services.event_summary import event_summary_sync
from segmentation.services.metrics import METRIC_FAMILIES, metrics_recompute
from segmentation.services.segments import segments_refresh_all

#: The pipeline's first step: the event summary catches up with the events (PostgreSQL).
SUMMARY_STEP = "Event summary"
logger = logging.getLogger(__name__)
_LOCK_KEY = 7_320_001  # arbitrary, fixed: the refresh pipeline's advisory lock
#: A pending or running run older than this is presumed dead (its worker stopped).
STALE_AFTER = timedelta(hours=2)
#: A run still pending this long was never picked up (its task was lost): a new request
#: starts another run instead of waiting on it.
PENDING_STALE_AFTER = timedelta(minutes=15)
INTERRUPTED = "Interrupted (the worker stopped before finishing)."


class RefreshBusy(Exception):
    """Another refresh run holds the lock."""


def refresh_in_progress() -> bool | None:
    """Whether a run holds the pipeline lock right now; None where there is no lock (SQLite,
    where development runs the pipeline in-process)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND classid = 0 AND objid = %s AND objsubid = 1)",
            [_LOCK_KEY],
        )
        return cursor.fetchone()[0]


@contextmanager
def _pipeline_lock() -> Iterator[None]:
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
        if not cursor.fetchone()[0]:
            raise RefreshBusy
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])


def refresh_run_create(
    *, as_of: datetime | None = None, trigger: str = "manual", created_by=None
) -> RefreshRun:
    """Record a pending run; the caller executes it (``refresh_run_execute``) or enqueues it."""
    return RefreshRun.objects.create(
        as_of=as_of or timezone.now(), trigger=trigger, created_by=created_by
    )


class _ProgressWriter:
    """Saves a run's progress where pollers can see it at once.

    The metrics step reports progress from inside its own transaction; on PostgreSQL progress
    therefore goes through a second, autocommit connection. (SQLite allows one writer at a
    time, and in development the pipeline runs in-process anyway: there it uses the default
    connection.)
    """

    def __init__(self) -> None:
        self.side = None
        # Only when the run row is committed (the pipeline is not itself inside a caller's
        # transaction) can another connection see it.
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            self.side = connections.create_connection(DEFAULT_DB_ALIAS)

    def __call__(self, run: RefreshRun, **fields) -> None:
        for name, value in fields.items():
            setattr(run, name, value)
        if self.side is None or not connection.in_atomic_block:
            RefreshRun.objects.filter(pk=run.pk).update(**fields)
            return
        query = RefreshRun.objects.filter(pk=run.pk).query.chain(sql.UpdateQuery)
        query.add_update_values(fields)
        with self.side.cursor() as cursor:
            cursor.execute(*query.get_compiler(connection=self.side).as_sql())

    def close(self) -> None:
        if self.side is not None:
            self.side.close()


def _update(run: RefreshRun, **fields) -> None:
    for name, value in fields.items():
        setattr(run, name, value)
    RefreshRun.objects.filter(pk=run.pk).update(**fields)


def refresh_run_execute(*, run: RefreshRun, full_metrics: bool = False) -> RefreshRun:
    """Run the whole pipeline for ``run``; returns it with its final status.

    ``full_metrics`` recomputes every customer's aggregates even when an incremental
    recompute is possible (see ``metrics_recompute``)."""
    try:
        with _pipeline_lock():
            RefreshRun.objects.filter(status=JobStatus.RUNNING).exclude(pk=run.pk).update(
                status=JobStatus.FAILED, message=INTERRUPTED, finished_at=timezone.now()
            )
            _execute(run, full_metrics=full_metrics)
    except RefreshBusy:
        # A run already running here is a task delivered again while it still runs: left be.
        if run.status != JobStatus.RUNNING:
            _update(
                run,
                status=JobStatus.FAILED,
                message="Another refresh was running; this one was skipped.",
                finished_at=timezone.now(),
            )
    return run


def _execute(run: RefreshRun, *, full_metrics: bool) -> None:
    writer = _ProgressWriter()
    try:
        _execute_with(run, writer, full_metrics=full_metrics)
    finally:
        writer.close()


def _execute_with(run: RefreshRun, _update: _ProgressWriter, *, full_metrics: bool) -> None:
    segments_total = Segment.objects.exclude(kind="static").count()
    _update(
        run,
        status=JobStatus.RUNNING,
        started_at=timezone.now(),
        steps_total=1 + len(METRIC_FAMILIES) + segments_total,
        steps_done=0,
        step="Starting",
        timings={},
    )
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def progress(done: str) -> None:
        """Called after each unit of work (a metric family, a segment) with its label."""
        nonlocal clock
        now = time.perf_counter()
        timings[done] = round(now - clock, 3)
        clock = now
        _update(run, step=done, steps_done=run.steps_done + 1, timings=dict(timings))

    try:
        analyze_if_stale("segmentation_customer", "segmentation_event")
        event_summary_sync()
        progress(SUMMARY_STEP)
        metrics_recompute(as_of=run.as_of, progress=progress, full=full_metrics)
        analyze_if_stale("segmentation_customermetrics", "segmentation_segmentmembership")
        segments_refresh_all(now=run.as_of, progress=progress)
        # For the previews and the next run: statistics (rules naming segments read the
        # memberships), and pages marked all-visible for index-only reads.
        analyze_if_stale("segmentation_segmentmembership")
        vacuum("segmentation_customermetrics", "segmentation_segmentmembership")
    except Exception as error:
        _update(
            run,
            status=JobStatus.FAILED,
            message=f"{type(error).__name__}: {error}",
            finished_at=timezone.now(),
        )
        raise
    _update(
        run,
        status=JobStatus.SUCCEEDED,
        step="Done",
        steps_done=run.steps_total,
        timings=timings,
        finished_at=timezone.now(),
    )


def refresh_now(
    *,
    as_of: datetime | None = None,
    trigger: str = "command",
    created_by=None,
    full_metrics: bool = False,
) -> RefreshRun:
    """Create and execute a run in this process (commands, demo data, tests)."""
    run = refresh_run_create(as_of=as_of, trigger=trigger, created_by=created_by)
    return refresh_run_execute(run=run, full_metrics=full_metrics)


def refresh_run_submit(*, created_by=None, trigger: str = "manual") -> RefreshRun:
    """Create a run as of now and execute it on a worker once the transaction commits.

    If a run is already pending or running, that run is returned instead of a new one.
    """
    from django.db import transaction

    from segmentation.tasks import refresh_run_task

    now = timezone.now()
    active = (
        RefreshRun.objects.filter(
            status__in=[JobStatus.PENDING, JobStatus.RUNNING], created_at__gte=now - STALE_AFTER
        )
        .order_by("-created_at")
        .first()
    )
    if active is not None and active.status == JobStatus.RUNNING and refresh_in_progress() is False:
        # Running, but nobody holds the lock: its worker died.
        _update(active, status=JobStatus.FAILED, message=INTERRUPTED, finished_at=now)
        active = None
    if (
        active is not None
        and active.status == JobStatus.PENDING
        and active.created_at < now - PENDING_STALE_AFTER
    ):
        _update(
            active,
            status=JobStatus.FAILED,
            message="No worker picked this refresh up; a new one was started.",
            finished_at=now,
        )
        active = None
    if active is not None:
        return active
    run = refresh_run_create(trigger=trigger, created_by=created_by)

    def enqueue() -> None:
        try:
            refresh_run_task.delay(run.pk)
        except Exception as error:  # the broker is unreachable: say so on the run
            logger.exception("Could not queue refresh run %s", run.pk)
            _update(
                run,
                status=JobStatus.FAILED,
                message=f"Could not queue the refresh ({error}); is the task broker up?",
                finished_at=timezone.now(),
            )

    transaction.on_commit(enqueue)
    return run
