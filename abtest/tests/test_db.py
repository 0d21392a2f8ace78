import pytest
from django.db import DataError, OperationalError, connection, transaction

from abtest.db import is_statement_timeout, postgres_local_settings

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def _setting(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return cursor.fetchone()[0]


def test_settings_hold_inside_the_block_and_come_back_after(require_postgres):
    before = (_setting("work_mem"), _setting("enable_hashjoin"))
    with transaction.atomic():
        with postgres_local_settings(work_mem="77MB", enable_hashjoin="off"):
            assert (_setting("work_mem"), _setting("enable_hashjoin")) == ("77MB", "off")
        assert (_setting("work_mem"), _setting("enable_hashjoin")) == before
    assert (_setting("work_mem"), _setting("enable_hashjoin")) == before


def test_a_failing_block_is_undone_by_its_transaction(require_postgres):
    before = _setting("statement_timeout")
    with (
        pytest.raises(OperationalError) as caught,
        transaction.atomic(),
        postgres_local_settings(statement_timeout="20ms"),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT pg_sleep(1)")
    assert is_statement_timeout(caught.value)
    assert _setting("statement_timeout") == before


def test_other_errors_are_not_timeouts(require_postgres):
    with pytest.raises(DataError) as caught, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1 / 0")
    assert not is_statement_timeout(caught.value)
