"""Reads for the platform shell: service health."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.utils import timezone

from abtest.models import WorkerHeartbeat


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    ms: float


@dataclass(frozen=True)
class Health:
    database: Check
    broker: Check
    workers: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.database.ok and self.broker.ok


def _timed(fn) -> Check:
    started = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:  # any failure means unhealthy: report it
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return Check(ok=ok, detail=detail, ms=round((time.perf_counter() - started) * 1000, 1))


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def _broker() -> str:
    if not settings.REDIS_URL:
        return "none: tasks run in-process"
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return "redis"


def health_check() -> Health:
    """Database and broker status, plus the last heartbeat seen per queue."""
    database = _timed(_database)
    workers: dict[str, dict] = {}
    if database.ok:
        now = timezone.now()
        for beat in WorkerHeartbeat.objects.order_by("queue", "-seen_at"):
            if beat.queue not in workers:
                workers[beat.queue] = {
                    "hostname": beat.hostname,
                    "seen_at": beat.seen_at.isoformat(),
                    "age_seconds": round((now - beat.seen_at).total_seconds()),
                }
    return Health(database=database, broker=_timed(_broker), workers=workers)
