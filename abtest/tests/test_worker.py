"""A real Celery worker, a real broker and a real database, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection, transaction

from abtest import services
from abtest.models import WorkerHeartbeat

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    params = connection.settings_dict
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


@pytest.fixture
def celery_worker_process(require_postgres, require_redis, transactional_db):
    """A worker subprocess on a queue of its own, pointed at the test database."""
    queue = f"test-{uuid.uuid4().hex[:12]}"
    environ = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": require_redis,
        "DJANGO_SETTINGS_MODULE": "abtest.settings",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "abtest",
            "worker",
            "-Q",
            queue,
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{queue}@%h",
            "-l",
            "info",
        ],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield queue, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        connection.close()  # the worker held connections to this database


@pytest.mark.redis
@pytest.mark.postgres
def test_task_enqueued_on_commit_runs_in_a_real_worker(celery_worker_process):
    queue, process = celery_worker_process

    with transaction.atomic():
        services.heartbeat_request(queue=queue)
        # Nothing is sent until the transaction commits.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if WorkerHeartbeat.objects.filter(queue=queue).exists():
            break
        if process.poll() is not None:
            pytest.fail(f"worker exited early:\n{process.stdout.read()}")
        time.sleep(0.25)
    else:
        process.terminate()
        pytest.fail(f"the worker never recorded the heartbeat:\n{process.communicate()[0]}")

    heartbeat = WorkerHeartbeat.objects.get(queue=queue)
    assert heartbeat.hostname.startswith(f"{queue}@")


@pytest.mark.redis
@pytest.mark.postgres
def test_only_committed_transactions_enqueue(require_postgres, require_redis, transactional_db):
    from abtest.celery import app

    queue = f"test-{uuid.uuid4().hex[:12]}"
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)  # no worker listens here: messages stay queued
        try:
            with transaction.atomic():
                services.heartbeat_request(queue=queue)
            assert simple.qsize() == 1
            with transaction.atomic():
                services.heartbeat_request(queue=queue)
                transaction.set_rollback(True)
            assert simple.qsize() == 1
        finally:
            simple.clear()
            simple.close()
