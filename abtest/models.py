from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class TrackedJob(models.Model):
    """What every background job shows while it runs: status, who started it, when, a message
    and a percentage. Subclasses say how far they are with ``progress()``."""

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    message = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def progress(self) -> tuple[int, int | None]:
        """(units done, units in all, or None while unknown)."""
        raise NotImplementedError

    @property
    def is_finished(self) -> bool:
        return self.status in {JobStatus.SUCCEEDED, JobStatus.FAILED}

    @property
    def percent(self) -> int:
        """100 once finished; otherwise at most 99, so a bar never looks done too early."""
        if self.is_finished:
            return 100
        done, total = self.progress()
        if not total:
            return 0
        return min(99, int(100 * done / total))


class WorkerHeartbeat(models.Model):
    """The last time a Celery worker on ``hostname`` consumed a heartbeat from ``queue``.

    Beat enqueues one heartbeat per queue every minute; ``/healthz`` and ops read the age.
    """

    queue = models.CharField(max_length=100)
    hostname = models.CharField(max_length=255)
    seen_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["queue", "hostname"], name="heartbeat_queue_host")
        ]
        ordering = ["queue", "hostname"]

    def __str__(self) -> str:
        return f"{self.queue}@{self.hostname}"
