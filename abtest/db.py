"""Small database helpers shared by the apps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, connection


def _set_local(cursor, settings: dict[str, str]) -> list[str]:
    """``SET LOCAL`` each setting, in one statement; returns the values they had (the select
    list is evaluated left to right, so each value is read before it is set)."""
    calls = ", ".join(["current_setting(%s), set_config(%s, %s, true)"] * len(settings))
    cursor.execute(
        f"SELECT {calls}",
        [part for name, value in settings.items() for part in (name, name, value)],
    )
    return list(cursor.fetchone()[::2])


@contextmanager
def postgres_local_settings(**settings: str) -> Iterator[None]:
    """PostgreSQL settings (``work_mem="128MB"``) for the block, inside the current transaction.

    Must run inside ``transaction.atomic()``. The old values come back when the block ends
    normally (so an outer transaction does not inherit them); when it raises, the caller's
    atomic block rolls back, which undoes them too. Does nothing on other databases.
    """
    if connection.vendor != "postgresql" or not settings:
        yield
        return
    with connection.cursor() as cursor:
        previous = _set_local(cursor, settings)
    yield
    with connection.cursor() as cursor:
        _set_local(cursor, dict(zip(settings, previous, strict=True)))


def is_statement_timeout(error: DatabaseError) -> bool:
    """Whether PostgreSQL cancelled the statement (``statement_timeout``, SQLSTATE 57014)."""
    return getattr(error.__cause__, "sqlstate", None) == "57014"
