"""PostgreSQL bulk plumbing: ``COPY`` into a temporary staging table.

Bulk writers stage validated rows with ``COPY`` (the fastest way into PostgreSQL), then apply
them with one set-based statement (``INSERT ... ON CONFLICT`` / ``UPDATE ... FROM``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from django.db import connection

_json_encoder = msgspec.json.Encoder(decimal_format="number")


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def json_text(value: Any) -> str:
    """Encode ``value`` as JSON text for a jsonb column in a text-format COPY."""
    return _json_encoder.encode(value).decode()


def stage(cursor: Any, *, table: str, columns: Sequence[tuple[str, str]], rows: Iterable) -> None:
    """Create temporary ``table`` (dropped at commit) and ``COPY`` ``rows`` into it.

    ``columns`` are (name, SQL type) pairs; ``rows`` yields tuples in that order. Must run
    inside a transaction. Names come from code, never from input. A staging table left by
    an earlier call in the same transaction is replaced.
    """
    definition = ", ".join(f"{name} {sql_type}" for name, sql_type in columns)
    cursor.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")
    cursor.execute(f"CREATE TEMPORARY TABLE {table} ({definition}) ON COMMIT DROP")
    names = ", ".join(name for name, _ in columns)
    raw = getattr(cursor, "cursor", cursor)  # Django's CursorWrapper wraps psycopg's cursor
    with raw.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
