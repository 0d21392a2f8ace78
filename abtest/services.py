"""Writes for the platform shell: worker heartbeats."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from abtest.models import WorkerHeartbeat


def heartbeat_record(*, queue: str, hostname: str) -> WorkerHeartbeat:
    """Record that a worker on ``hostname`` just consumed a heartbeat from ``queue``."""
    heartbeat, _ = WorkerHeartbeat.objects.update_or_create(
        queue=queue, hostname=hostname, defaults={"seen_at": timezone.now()}
    )
    return heartbeat


def heartbeat_request(*, queue: str) -> None:
    """Ask a worker on ``queue`` to check in, once the current transaction commits."""
    from abtest.tasks import heartbeat_task

    transaction.on_commit(lambda: heartbeat_task.apply_async(kwargs={"queue": queue}, queue=queue))


def heartbeat_prune(*, older_than: timedelta = timedelta(days=7)) -> int:
    """Forget workers not seen for ``older_than``; returns how many rows went."""
    deleted, _ = WorkerHeartbeat.objects.filter(seen_at__lt=timezone.now() - older_than).delete()
    return deleted
