"""Celery tasks of the segmentation app (queue ``compute``). Thin: ids in, one service call."""

from __future__ import annotations

from celery import shared_task

from abtest.models import JobStatus
from segmentation.models import ImportJob, RefreshRun


@shared_task(acks_late=True)
def import_job_run_task(job_id: int) -> None:
    from segmentation.services.imports import import_job_run

    # Claim the job: only a pending job runs, so a redelivered message cannot import twice.
    claimed = ImportJob.objects.filter(pk=job_id, status=JobStatus.PENDING).update(
        status=JobStatus.RUNNING
    )
    if claimed:
        import_job_run(job=ImportJob.objects.get(pk=job_id))


@shared_task(acks_late=True)
def refresh_run_task(run_id: int) -> None:
    from segmentation.services.refresh import refresh_in_progress, refresh_run_execute

    run = RefreshRun.objects.filter(
        pk=run_id, status__in=[JobStatus.PENDING, JobStatus.RUNNING]
    ).first()
    if run is None:
        return
    # Running already: this is the task delivered again. Its worker died if nobody holds the
    # pipeline lock (acks_late requeues a killed worker's task): run it again then.
    if run.status == JobStatus.RUNNING and refresh_in_progress() is not False:
        return
    refresh_run_execute(run=run)


@shared_task
def refresh_scheduled_task() -> None:
    """Beat, hourly: metrics, RFM, tiers and segments as of now."""
    from segmentation.services.refresh import refresh_now

    refresh_now(trigger="schedule")


@shared_task
def event_summary_sync_task() -> None:
    """Beat, every few minutes: fold new events into the event summary, so that rule previews
    between hourly refreshes read few events beyond it (PostgreSQL; nothing on SQLite)."""
    from segmentation.services.event_summary import event_summary_sync

    event_summary_sync()
