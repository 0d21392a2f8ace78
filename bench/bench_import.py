"""Benchmark: customer CSV import, 1,000,000 rows, through the app's import path.

    .venv/bin/python bench/bench_import.py          # ~2 minutes

In a scratch database (``abtest_bench_import``, fresh and migrated, dropped at the end unless
``BENCH_KEEP=1``), times ``segmentation.services.imports.csv_import`` (the code path of
``manage.py import_customers``) on a generated 1M-row customers CSV (12 columns, four of them
becoming attributes) into an empty customer table, then the same file again (every row
unchanged). Baseline, same run: a bare ``COPY`` of the same rows, in the columns the import
writes, into the same empty, indexed ``segmentation_customer`` table (best of two, before and
after the imports). For context, the same ``COPY`` into the issue's reference shape (primary key
+ unique external_id + unique lower(email)). ``ratio`` = figure / baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import (
    CUSTOMER_COPY_COLUMNS,
    DB_PREFIX,
    checkpoint,
    connect,
    copy_bytes,
    customer_files,
    django_setup,
    fmt,
    goal,
    log,
    print_table,
    ratio,
    scratch_database,
    timed,
)

GOAL_RATE = 60_000
GOAL_RATIO = 0.6
ISSUE_REFERENCE_RATE = 115_000  # the issue's bare COPY into the reference shape
DB = f"{DB_PREFIX}_import"

# Same content whichever path wrote it (ids and timestamps aside).
CHECKSUM_SQL = """
SELECT count(*), md5(string_agg(
    concat_ws('|', external_id, email, first_name, last_name, locale, time_zone,
              subscription_status, attributes::text), ',' ORDER BY external_id))
FROM segmentation_customer
"""


def truncate(db: str) -> None:
    with connect(db) as conn:
        conn.execute("TRUNCATE segmentation_customer RESTART IDENTITY CASCADE")


def bare_copy(db: str, table: str, payload: bytes, rows: int) -> float:
    """Seconds for one COPY of ``payload`` into empty ``table``, commit included."""
    checkpoint(db)
    statement = f"COPY {table} ({CUSTOMER_COPY_COLUMNS}) FROM STDIN (FORMAT csv)"
    with connect(db, autocommit=False) as conn, conn.cursor() as cur:
        with timed(f"bare COPY into {table}") as t:
            copy_bytes(cur, statement, payload)
            conn.commit()
        count = cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    if count != rows:
        raise RuntimeError(f"COPY stored {count:,} rows, expected {rows:,}")
    return t[0]


def checksum(db: str) -> tuple[int, str]:
    with connect(db) as conn:
        return conn.execute(CHECKSUM_SQL).fetchone()


def main() -> int:
    files = customer_files()
    rows = files.rows
    payload = files.copy.read_bytes()
    with scratch_database(DB) as db:
        django_setup(db)
        from segmentation.models import ImportKind
        from segmentation.services.imports import csv_import

        copy_seconds = [bare_copy(db, "segmentation_customer", payload, rows)]
        copied = checksum(db)
        truncate(db)

        checkpoint(db)
        with timed(f"csv_import {rows:,} rows (empty table)") as t:
            first = csv_import(files.csv, kind=ImportKind.CUSTOMERS)
        import_seconds = t[0]
        log(f"created {first.created:,}, rejected {first.rejected:,}")
        if first.created != rows or first.rejected:
            raise RuntimeError(f"import: {first}")
        if checksum(db) != copied:
            raise RuntimeError("the import stored different rows than the COPY baseline")

        checkpoint(db)
        with timed(f"csv_import {rows:,} rows again (nothing changes)") as t:
            again = csv_import(files.csv, kind=ImportKind.CUSTOMERS)
        reimport_seconds = t[0]
        log(f"unchanged {again.unchanged:,}, updated {again.updated:,}")
        if again.unchanged != rows or again.created or again.updated or again.rejected:
            raise RuntimeError(f"re-import changed something: {again}")

        truncate(db)
        copy_seconds.append(bare_copy(db, "segmentation_customer", payload, rows))

        with connect(db) as conn:
            conn.execute(
                "CREATE TABLE bench_customer_ref "
                "(LIKE segmentation_customer INCLUDING DEFAULTS INCLUDING IDENTITY)"
            )
            conn.execute("ALTER TABLE bench_customer_ref ADD PRIMARY KEY (id)")
            conn.execute("CREATE UNIQUE INDEX ON bench_customer_ref (external_id)")
            conn.execute("CREATE UNIQUE INDEX ON bench_customer_ref (lower(email))")
        reference_seconds = bare_copy(db, "bench_customer_ref", payload, rows)
        with connect(db) as conn:
            indexes = conn.execute(
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'segmentation_customer'"
            ).fetchone()[0]

    copy_rate = rows / min(copy_seconds)
    import_rate = rows / import_seconds
    reimport_rate = rows / reimport_seconds
    reference_rate = rows / reference_seconds
    table = [
        (
            "import: customers CSV, 1M rows, csv_import into empty table",
            fmt(import_rate),
            "rows/s",
            fmt(copy_rate),
            ratio(import_rate, copy_rate),
        ),
        (
            "import: same file again, 1M rows unchanged",
            fmt(reimport_rate),
            "rows/s",
            fmt(copy_rate),
            ratio(reimport_rate, copy_rate),
        ),
        (
            f"bare COPY, same rows, segmentation_customer ({indexes} indexes), best of 2",
            fmt(copy_rate),
            "rows/s",
            "-",
            "-",
        ),
        (
            "bare COPY, same rows, reference shape (PK + unique external_id + lower(email))",
            fmt(reference_rate),
            "rows/s",
            fmt(ISSUE_REFERENCE_RATE),
            ratio(reference_rate, ISSUE_REFERENCE_RATE),
        ),
    ]
    print_table(
        table,
        intro=(
            f"Customers CSV: {rows:,} rows, {files.csv.stat().st_size / 1e6:.0f} MB, 11 columns "
            "(4 become attributes). Import times include reading and parsing the file. "
            f"Bare COPY runs: {', '.join(f'{s:.1f} s' for s in copy_seconds)}; import "
            f"{import_seconds:.1f} s, re-import {reimport_seconds:.1f} s. The reference-shape "
            "baseline is the issue's figure (about 115,000 rows/s on this machine)."
        ),
    )
    for label, rate in (("import", import_rate), ("re-import", reimport_rate)):
        goal(f"{label} >= {GOAL_RATE:,} rows/s ({fmt(rate)})", rate >= GOAL_RATE)
        goal(
            f"{label} >= {GOAL_RATIO}x bare COPY ({rate / copy_rate:.2f}x)",
            rate >= GOAL_RATIO * copy_rate,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
