from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from abtest import services
from abtest.models import WorkerHeartbeat


def test_healthz_reports_database_and_broker_without_login(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True


def test_healthz_is_503_when_the_broker_does_not_answer(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["broker"]["ok"] is False
    assert "ConnectionError" in body["checks"]["broker"]["detail"]


def test_healthz_shows_the_latest_heartbeat_per_queue(client, db):
    services.heartbeat_record(queue="email", hostname="celery@a")
    WorkerHeartbeat.objects.create(
        queue="email", hostname="celery@old", seen_at=timezone.now() - timedelta(hours=1)
    )
    workers = client.get("/healthz").json()["workers"]
    assert workers["email"]["hostname"] == "celery@a"
    assert workers["email"]["age_seconds"] < 5


def test_heartbeat_prune_forgets_silent_workers(db):
    services.heartbeat_record(queue="compute", hostname="celery@fresh")
    WorkerHeartbeat.objects.create(
        queue="compute", hostname="celery@gone", seen_at=timezone.now() - timedelta(days=8)
    )
    assert services.heartbeat_prune() == 1
    assert list(WorkerHeartbeat.objects.values_list("hostname", flat=True)) == ["celery@fresh"]


def test_beat_schedules_a_heartbeat_on_each_queue(settings):
    queues = {
        entry["options"]["queue"]
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
        if entry["task"] == "abtest.tasks.heartbeat_task"
    }
    assert queues == {"email", "compute"}
