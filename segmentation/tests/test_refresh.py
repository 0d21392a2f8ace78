"""The refresh pipeline: metrics then segments, progress, one run at a time, tasks, command."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from abtest.models import JobStatus
from segmentation.models import CustomerMetrics, RefreshRun, Segment
from segmentation.services import refresh
from segmentation.services.metrics import METRIC_FAMILIES
from segmentation.services.segments import segment_create
from segmentation.tasks import refresh_run_task, refresh_scheduled_task
from segmentation.tests.factories import CustomerFactory, EventFactory, PurchaseFactory

pytestmark = pytest.mark.django_db
AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


@pytest.fixture
def shop():
    ann = CustomerFactory(external_id="ann")
    bob = CustomerFactory(external_id="bob")
    CustomerFactory(external_id="cy")
    for day in (1, 10, 20):
        PurchaseFactory(customer=ann, occurred_at=datetime(2024, 6, day, tzinfo=UTC))
    PurchaseFactory(customer=bob, occurred_at=datetime(2023, 1, 1, tzinfo=UTC))
    EventFactory(customer=bob, type="session", occurred_at=datetime(2024, 6, 30, tzinfo=UTC))
    return segment_create(
        name="Repeat buyers",
        kind="rule",
        rule={"all": [{"field": "metrics.frequency", "op": "gte", "value": 2}]},
    )


def test_a_run_recomputes_metrics_then_every_segment_and_records_progress(shop):
    run = refresh.refresh_now(as_of=AS_OF)
    assert run.status == JobStatus.SUCCEEDED, run.message
    run.refresh_from_db()
    segments = Segment.objects.exclude(kind="static").count()
    assert run.steps_total == 1 + len(METRIC_FAMILIES) + segments
    assert run.steps_done == run.steps_total and run.percent == 100
    assert set(METRIC_FAMILIES) <= set(run.timings)
    assert "Segment Repeat buyers (repeat-buyers)" in run.timings
    assert CustomerMetrics.objects.count() == 3
    assert CustomerMetrics.objects.get(customer__external_id="ann").as_of == AS_OF
    shop.refresh_from_db()
    assert shop.size == 1 and shop.refreshed_at == AS_OF


def test_a_failing_step_marks_the_run_failed(shop, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(refresh, "segments_refresh_all", broken)
    run = refresh.refresh_run_create(as_of=AS_OF)
    with pytest.raises(RuntimeError):
        refresh.refresh_run_execute(run=run)
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED and "disk full" in run.message


def test_runs_left_running_by_a_dead_worker_are_marked_failed(shop):
    dead = RefreshRun.objects.create(as_of=AS_OF, status=JobStatus.RUNNING)
    refresh.refresh_now(as_of=AS_OF)
    dead.refresh_from_db()
    assert dead.status == JobStatus.FAILED and "Interrupted" in dead.message


def test_submit_reuses_an_active_run_and_ignores_stale_ones(
    shop, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        first = refresh.refresh_run_submit()
        again = refresh.refresh_run_submit()
    assert first.pk == again.pk and len(callbacks) == 1
    RefreshRun.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(hours=3))
    with django_capture_on_commit_callbacks():
        assert refresh.refresh_run_submit().pk != first.pk


def test_the_task_runs_only_pending_runs(shop):
    run = refresh.refresh_run_create(as_of=AS_OF)
    refresh_run_task(run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED
    finished_at = run.finished_at
    refresh_run_task(run.pk)  # a redelivered message does nothing
    run.refresh_from_db()
    assert run.finished_at == finished_at


def test_the_scheduled_task_refreshes_as_of_now(shop):
    refresh_scheduled_task()
    run = RefreshRun.objects.get()
    assert run.trigger == "schedule" and run.status == JobStatus.SUCCEEDED
    assert abs((run.as_of - timezone.now()).total_seconds()) < 60


@pytest.mark.postgres
def test_only_one_run_at_a_time(shop, require_postgres):
    with connection.cursor() as cursor:
        # Another session holds the pipeline lock: simulate with a second connection.
        from django.db import DEFAULT_DB_ALIAS, connections

        other = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            with other.cursor() as other_cursor:
                other_cursor.execute("SELECT pg_advisory_lock(%s)", [refresh._LOCK_KEY])
            run = refresh.refresh_now(as_of=AS_OF)
            assert run.status == JobStatus.FAILED and "skipped" in run.message
        finally:
            # Unlock before closing: the server releases a closed session's locks only when
            # its backend gets round to the disconnect, which the next run could beat.
            with other.cursor() as other_cursor:
                other_cursor.execute("SELECT pg_advisory_unlock(%s)", [refresh._LOCK_KEY])
            other.close()
        cursor.execute("SELECT 1")
    run = refresh.refresh_now(as_of=AS_OF)
    assert run.status == JobStatus.SUCCEEDED, run.message


def test_recompute_command(shop):
    out = io.StringIO()
    call_command("recompute_segments", "--as-of", "2024-07-01", stdout=out)
    assert "done as of 2024-07-01 00:00 UTC" in out.getvalue()
    assert "Purchases" in out.getvalue() or METRIC_FAMILIES[0] in out.getvalue()
    assert CustomerMetrics.objects.get(customer__external_id="ann").recency_days == 11
    with pytest.raises(CommandError, match="not an ISO 8601"):
        call_command("recompute_segments", "--as-of", "last tuesday")
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31"):
        with pytest.raises(CommandError, match="out of range"):
            call_command("recompute_segments", "--as-of", value)
    assert RefreshRun.objects.count() == 1


MANAGE = str(Path(__file__).resolve().parents[2] / "manage.py")


def test_recompute_command_usage_errors_are_not_tracebacks():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, MANAGE, "recompute_segments", "--as-of", "garbage"],
        capture_output=True,
        text=True,
        env={**os.environ, "SECRET_KEY": "x"},
        timeout=120,
    )
    assert done.returncode == 2
    assert "argument --as-of: 'garbage' is not an ISO 8601" in done.stderr
    assert "Traceback" not in done.stderr


def test_recompute_command_can_rebuild_the_event_summary(shop):
    from django.db import connection

    from segmentation.models import CustomerEventSummary

    out = io.StringIO()
    call_command(
        "recompute_segments", "--as-of", "2024-07-01", "--rebuild-event-summary", stdout=out
    )
    assert "done as of 2024-07-01" in out.getvalue()
    if connection.vendor == "postgresql":
        assert "Event summary rebuilt from" in out.getvalue()
        assert CustomerEventSummary.objects.exists()
    else:
        assert "nothing to do" in out.getvalue()
    assert CustomerMetrics.objects.get(customer__external_id="ann").recency_days == 11


def test_recompute_command_can_force_a_full_metrics_recompute(shop, monkeypatch):
    calls = []
    real = refresh.metrics_recompute
    monkeypatch.setattr(
        refresh,
        "metrics_recompute",
        lambda **kwargs: calls.append(kwargs["full"]) or real(**kwargs),
    )
    call_command("recompute_segments", "--as-of", "2024-07-01", stdout=io.StringIO())
    call_command("recompute_segments", "--as-of", "2024-07-01", "--full", stdout=io.StringIO())
    assert calls == [False, True]
    assert CustomerMetrics.objects.get(customer__external_id="ann").recency_days == 11


class _HeldLock:
    """The pipeline lock held by another session, as a running worker holds it."""

    def __enter__(self):
        from django.db import DEFAULT_DB_ALIAS, connections

        self.other = connections.create_connection(DEFAULT_DB_ALIAS)
        with self.other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [refresh._LOCK_KEY])
        return self

    def __exit__(self, *exc):
        with self.other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [refresh._LOCK_KEY])
        self.other.close()


def test_a_running_run_whose_worker_died_does_not_block_a_new_one(
    shop, require_postgres, django_capture_on_commit_callbacks
):
    dead = RefreshRun.objects.create(as_of=AS_OF, status=JobStatus.RUNNING)
    with _HeldLock():
        assert refresh.refresh_in_progress() is True
        with django_capture_on_commit_callbacks():
            assert refresh.refresh_run_submit().pk == dead.pk  # alive while the lock is held
    assert refresh.refresh_in_progress() is False
    with django_capture_on_commit_callbacks():
        new = refresh.refresh_run_submit()
    assert new.pk != dead.pk
    dead.refresh_from_db()
    assert dead.status == JobStatus.FAILED and "Interrupted" in dead.message


def test_a_task_delivered_again_reruns_a_dead_run_and_leaves_a_live_one(shop, require_postgres):
    run = RefreshRun.objects.create(as_of=AS_OF, status=JobStatus.RUNNING)
    with _HeldLock():
        refresh_run_task(run.pk)  # still running elsewhere: left be
        run.refresh_from_db()
        assert run.status == JobStatus.RUNNING
        refresh.refresh_run_execute(run=run)  # the same through the service
        run.refresh_from_db()
        assert run.status == JobStatus.RUNNING
    refresh_run_task(run.pk)  # its worker died (acks_late requeued the task): run again
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.message


def test_a_pending_run_never_picked_up_does_not_block_a_new_one(
    shop, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        lost = refresh.refresh_run_submit()  # its task never runs
    RefreshRun.objects.filter(pk=lost.pk).update(
        created_at=timezone.now() - refresh.PENDING_STALE_AFTER - timedelta(minutes=1)
    )
    with django_capture_on_commit_callbacks():
        assert refresh.refresh_run_submit().pk != lost.pk
    lost.refresh_from_db()
    assert lost.status == JobStatus.FAILED and "No worker" in lost.message


def test_an_unreachable_broker_fails_the_run_with_a_reason(
    shop, monkeypatch, django_capture_on_commit_callbacks
):
    """The broker is outside the process: its failure is injected at the send."""
    from kombu.exceptions import OperationalError

    def unreachable(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

    monkeypatch.setattr(refresh_run_task, "delay", unreachable)
    with django_capture_on_commit_callbacks(execute=True):
        run = refresh.refresh_run_submit()
    run.refresh_from_db()
    assert run.status == JobStatus.FAILED
    assert "Could not queue the refresh" in run.message and "broker" in run.message
    monkeypatch.undo()
    with django_capture_on_commit_callbacks():
        assert refresh.refresh_run_submit().pk != run.pk


@pytest.mark.django_db(transaction=True)
def test_a_refresh_leaves_the_tables_previews_read_by_index_all_visible(require_postgres):
    """Previews read the event summary and the metrics by index only, which needs their pages
    marked all-visible: the pipeline vacuums what it rewrote (autovacuum may be off or
    behind; it is off on the CI server)."""
    from segmentation.models import CustomerEventSummary, SegmentMembership

    customers = CustomerFactory.create_batch(300)
    for customer in customers:
        PurchaseFactory(customer=customer, occurred_at=datetime(2024, 6, 1, tzinfo=UTC))
    segment_create(
        name="Buyers",
        kind="rule",
        rule={"all": [{"event": "purchase", "op": "at_least", "count": 1}]},
    )
    tables = [
        model._meta.db_table for model in (CustomerEventSummary, CustomerMetrics, SegmentMembership)
    ]

    def not_all_visible() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT relname FROM pg_class WHERE relname = ANY(%s) "
                "AND relallvisible < relpages ORDER BY relname",
                [tables],
            )
            return [row[0] for row in cursor.fetchall()]

    assert refresh.refresh_now(as_of=AS_OF).status == JobStatus.SUCCEEDED
    assert not_all_visible() == []
    for customer in customers[::2]:  # an hour later: the fold and the recompute update rows
        PurchaseFactory(customer=customer, occurred_at=datetime(2024, 6, 30, tzinfo=UTC))
    assert refresh.refresh_now(as_of=AS_OF + timedelta(hours=1)).status == JobStatus.SUCCEEDED
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {tables[0]} WHERE count = 2")
        assert cursor.fetchone()[0] == 150, "the fold updated the summary"
    assert not_all_visible() == []
