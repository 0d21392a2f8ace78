import socket

from celery import shared_task

from abtest import services


@shared_task
def heartbeat_task(queue: str) -> None:
    """Record this worker as alive on ``queue`` (beat sends one per queue every minute)."""
    hostname = getattr(heartbeat_task.request, "hostname", None) or socket.gethostname()
    services.heartbeat_record(queue=queue, hostname=hostname)


@shared_task
def heartbeat_prune_task() -> None:
    services.heartbeat_prune()
