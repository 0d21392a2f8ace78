"""Benchmark: event ingestion through the HTTP API (POST /api/v1/events/), 10,000 per request.

    .venv/bin/python bench/bench_ingest.py [--events 2000000] [--concurrency 2,3,4]   # ~4 min

A scratch database (``abtest_bench_ingest``, dropped at the end unless ``BENCH_KEEP=1``) gets
the 1M generated customers (by COPY), an integrator user and an API token. gunicorn serves
``abtest.wsgi`` with 2 sync worker processes (DEBUG off, Redis cache for throttling, a user
throttle high enough not to interfere). The client POSTs prebuilt 10,000-event JSON bodies
over persistent connections from a few threads and checks every response (all accepted, none
rejected or duplicate) and the final row count.

First a short sweep of client concurrency (``--sweep-events`` each, empty table each time),
then the measured run: ``--events`` events at the best concurrency into an empty event table,
then the first 200,000 of them again (all duplicates: the idempotency path). Baseline, same
run: a bare ``COPY`` of the same events (customer ids resolved, same columns) into the same,
empty ``segmentation_event`` table with all its indexes (best of two, before and after).
``ratio`` = figure / baseline.
"""

from __future__ import annotations

import argparse
import http.client
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import (
    DB_PREFIX,
    EVENT_COPY_COLUMNS,
    ROOT,
    bench_env,
    checkpoint,
    connect,
    copy_bytes,
    data_end,
    django_setup,
    event_copy_text,
    event_data,
    event_dicts,
    external_ids,
    fmt,
    goal,
    load_customers,
    log,
    no_gc,
    print_table,
    ratio,
    scratch_database,
    timed,
)

DB = f"{DB_PREFIX}_ingest"
BATCH = 10_000
WORKERS = 2
GOAL_RATE = 50_000
GOAL_RATIO = 0.5
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_token(db: str) -> str:
    django_setup(db)
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    user = User.objects.create_user("bench-integrator", password=None)
    user.groups.add(Group.objects.get(name="Integrators"))
    return Token.objects.create(user=user).key


class Server:
    """gunicorn on a free port against the bench database."""

    def __init__(self, db: str, workers: int):
        self.port = free_port()
        env = bench_env(
            db,
            REDIS_URL=REDIS_URL,
            ALLOWED_HOSTS="127.0.0.1",
            API_THROTTLE_USER="100000000/minute",
            SECURE_SSL_REDIRECT="0",
            # whitenoise warns once per worker that collectstatic has not run: not our concern
            PYTHONWARNINGS="ignore:No directory at",
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "abtest.wsgi",
                "--workers",
                str(workers),
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--timeout",
                "300",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("gunicorn did not answer in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def post_all(
    port: int, token: str, bodies: list[bytes], sizes: list[int], concurrency: int
) -> tuple[float, dict[str, int]]:
    """POST every body from ``concurrency`` threads (one keep-alive connection each);
    returns (seconds, summed counts). Raises on any unexpected response."""
    work: queue.Queue[int] = queue.Queue()
    for index in range(len(bodies)):
        work.put(index)
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "requests": 0}
    lock = threading.Lock()
    errors: list[str] = []
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def client() -> None:
        import json

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while not errors:
                try:
                    index = work.get_nowait()
                except queue.Empty:
                    return
                conn.request("POST", "/api/v1/events/", body=bodies[index], headers=headers)
                response = conn.getresponse()
                payload = response.read()
                if response.status != 200:
                    errors.append(f"HTTP {response.status}: {payload[:300]!r}")
                    return
                result = json.loads(payload)
                rejected = len(result["rejected"])
                if result["accepted"] + result["duplicates"] + rejected != sizes[index]:
                    errors.append(f"counts do not add up: {result}")
                    return
                with lock:
                    totals["accepted"] += result["accepted"]
                    totals["duplicates"] += result["duplicates"]
                    totals["rejected"] += rejected
                    totals["requests"] += 1
        except Exception as error:  # reported below, with the others
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"ingestion failed: {errors[0]}")
    return seconds, totals


def warm_up(port: int, token: str, workers: int) -> None:
    """Load the app in every worker: a few tiny batches for an unknown customer (rejected)."""
    body = (
        b'[{"customer": "bench-nobody", "type": "page_view", '
        b'"occurred_at": "2024-01-01T00:00:00Z"}]'
    )
    post_all(port, token, [body] * (4 * workers), [1] * (4 * workers), workers * 2)


def event_count(db: str) -> int:
    with connect(db) as conn:
        return conn.execute("SELECT count(*) FROM segmentation_event").fetchone()[0]


def truncate_events(db: str) -> None:
    with connect(db) as conn:
        conn.execute("TRUNCATE segmentation_event RESTART IDENTITY")
    checkpoint(db)


def bare_copy(db: str, payload: bytes, rows: int) -> float:
    truncate_events(db)
    statement = f"COPY segmentation_event ({EVENT_COPY_COLUMNS}) FROM STDIN"
    with (
        connect(db, autocommit=False) as conn,
        conn.cursor() as cur,
        timed(f"bare COPY of {rows:,} events") as t,
    ):
        copy_bytes(cur, statement, payload)
        conn.commit()
    if event_count(db) != rows:
        raise RuntimeError("the bare COPY stored a different number of rows")
    return t[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--concurrency", default="2,3,4", help="client threads to sweep")
    parser.add_argument("--sweep-events", type=int, default=400_000)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    end = data_end()
    all_events = event_data()
    step = max(1, len(all_events) // args.events)
    events = all_events.every(step)
    events = type(events)(*(a[: args.events] for a in events.arrays()))
    rows = len(events)
    with timed(f"build {rows // BATCH} JSON bodies and the COPY text"):
        import msgspec

        items = event_dicts(events, end=end, ids=external_ids())
        with no_gc():
            bodies = [msgspec.json.encode(items[i : i + BATCH]) for i in range(0, rows, BATCH)]
        sizes = [min(BATCH, rows - i) for i in range(0, rows, BATCH)]
        del items
        copy_payload = event_copy_text(events, end=end)
    log(f"{len(bodies)} bodies of {BATCH:,} events, {len(bodies[0]) / 1e6:.2f} MB each")

    with scratch_database(DB) as db:
        with timed("load 1M customers"):
            load_customers(db, end=end)
        token = make_token(db)
        copy_seconds = [bare_copy(db, copy_payload, rows)]
        truncate_events(db)

        server = Server(db, WORKERS)
        try:
            server.wait_ready()
            warm_up(server.port, token, WORKERS)
            sweep: dict[int, float] = {}
            n_sweep = min(len(bodies), max(1, args.sweep_events // BATCH))
            for level in levels:
                truncate_events(db)
                seconds, totals = post_all(
                    server.port, token, bodies[:n_sweep], sizes[:n_sweep], level
                )
                sweep[level] = sum(sizes[:n_sweep]) / seconds
                log(f"sweep: concurrency {level}: {fmt(sweep[level])} events/s ({seconds:.1f} s)")
            best = max(sweep, key=sweep.__getitem__)

            truncate_events(db)
            log(f"measured run: {rows:,} events, concurrency {best}")
            seconds, totals = post_all(server.port, token, bodies, sizes, best)
            log(f"{seconds:.1f} s: {totals}")
            if totals["accepted"] != rows or totals["duplicates"] or totals["rejected"]:
                raise RuntimeError(f"unexpected totals: {totals}")
            if event_count(db) != rows:
                raise RuntimeError("the event table does not hold every event")
            api_rate = rows / seconds

            n_dup = min(20, len(bodies))
            dup_seconds, dup_totals = post_all(
                server.port, token, bodies[:n_dup], sizes[:n_dup], best
            )
            if dup_totals["duplicates"] != sum(sizes[:n_dup]):
                raise RuntimeError(f"re-sent events were not all duplicates: {dup_totals}")
            dup_rate = sum(sizes[:n_dup]) / dup_seconds
        finally:
            server.stop()
        copy_seconds.append(bare_copy(db, copy_payload, rows))

    copy_rate = rows / min(copy_seconds)
    table = [
        (
            f"ingest: HTTP API, {rows / 1e6:g}M events, {BATCH:,}/request, "
            f"{WORKERS} gunicorn workers, {best} client threads",
            fmt(api_rate),
            "events/s",
            fmt(copy_rate),
            ratio(api_rate, copy_rate),
        ),
        *(
            (
                f"ingest: sweep, {sum(sizes[:n_sweep]):,} events, {level} client threads",
                fmt(rate),
                "events/s",
                fmt(copy_rate),
                ratio(rate, copy_rate),
            )
            for level, rate in sweep.items()
        ),
        (
            f"ingest: {sum(sizes[:n_dup]):,} events sent again (all duplicates)",
            fmt(dup_rate),
            "events/s",
            fmt(copy_rate),
            ratio(dup_rate, copy_rate),
        ),
        (
            "bare COPY, same events, segmentation_event (all indexes), best of 2",
            fmt(copy_rate),
            "rows/s",
            "-",
            "-",
        ),
    ]
    print_table(
        table,
        intro=(
            f"{rows:,} events ({len(bodies)} requests of {BATCH:,}, "
            f"{len(bodies[0]) / 1e6:.1f} MB JSON each) for 1M customers, into an empty event "
            f"table; gunicorn sync workers: {WORKERS}. Bare COPY runs: "
            f"{', '.join(f'{s:.1f} s' for s in copy_seconds)}; API run {seconds:.1f} s."
        ),
    )
    goal(f"API ingestion >= {GOAL_RATE:,} events/s ({fmt(api_rate)})", api_rate >= GOAL_RATE)
    goal(
        f"API ingestion >= {GOAL_RATIO}x bare COPY ({api_rate / copy_rate:.2f}x)",
        api_rate >= GOAL_RATIO * copy_rate,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
