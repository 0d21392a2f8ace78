from django.db import models


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
