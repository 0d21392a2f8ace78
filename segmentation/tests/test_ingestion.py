"""Bulk upsert of customers and ingestion of events: the same semantics on every database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from segmentation.models import Customer, Event
from segmentation.services.customers import customers_upsert
from segmentation.services.events import events_ingest
from segmentation.services.validation import RowInvalid, clean_customer, clean_event

pytestmark = pytest.mark.django_db


def upsert(*rows: dict):
    return customers_upsert(rows=[(i, clean_customer(row)) for i, row in enumerate(rows)])


def ingest(*rows: dict, create_customers: bool = False):
    return events_ingest(
        rows=[(i, clean_event(row)) for i, row in enumerate(rows)],
        create_customers=create_customers,
    )


def test_upsert_creates_then_updates_only_what_changed():
    result = upsert(
        {"external_id": "a", "email": "A@Example.com", "first_name": "Ann"},
        {"external_id": "b", "attributes": {"plan": "pro", "city": "Oslo"}},
    )
    assert (result.created, result.updated, result.unchanged, result.rejected) == (2, 0, 0, [])
    a = Customer.objects.get(external_id="a")
    assert a.email == "A@Example.com" and a.subscription_status == "subscribed"
    stamp = a.updated_at

    result = upsert(
        {"external_id": "a", "email": "A@Example.com", "first_name": "Ann"},
        {"external_id": "b", "attributes": {"plan": "team", "city": None}},
    )
    assert (result.created, result.updated, result.unchanged) == (0, 1, 1)
    a.refresh_from_db()
    assert a.updated_at == stamp, "an identical row changes nothing"
    assert Customer.objects.get(external_id="b").attributes == {"plan": "team"}


def test_fields_not_sent_are_kept_and_sent_fields_replace():
    upsert({"external_id": "a", "email": "a@example.com", "first_name": "Ann", "locale": "en"})
    upsert({"external_id": "a", "last_name": "Lee", "subscription_status": "unsubscribed"})
    a = Customer.objects.get(external_id="a")
    assert (a.email, a.first_name, a.last_name, a.locale) == ("a@example.com", "Ann", "Lee", "en")
    assert a.subscription_status == "unsubscribed"
    upsert({"external_id": "a", "email": None, "first_name": ""})
    a.refresh_from_db()
    assert a.email is None and a.first_name == "" and a.last_name == "Lee"


def test_attributes_merge_key_by_key():
    upsert({"external_id": "a", "attributes": {"plan": "pro", "seats": 3}})
    upsert({"external_id": "a", "attributes": {"seats": 5, "city": "Lima"}})
    assert Customer.objects.get(external_id="a").attributes == {
        "plan": "pro",
        "seats": 5,
        "city": "Lima",
    }


def test_a_null_attribute_removes_its_key_and_nested_nulls_are_kept():
    upsert({"external_id": "a", "attributes": {"plan": "pro", "prefs": {"tone": None}}})
    assert Customer.objects.get(external_id="a").attributes == {
        "plan": "pro",
        "prefs": {"tone": None},
    }
    result = upsert(
        {"external_id": "a", "attributes": {"plan": None, "seats": 2, "gone": None}},
        {"external_id": "b", "attributes": {"x": None, "y": [None, 1]}},
    )
    assert (result.created, result.updated) == (1, 1)
    assert Customer.objects.get(external_id="a").attributes == {
        "prefs": {"tone": None},
        "seats": 2,
    }
    assert Customer.objects.get(external_id="b").attributes == {"y": [None, 1]}


def test_repeated_external_ids_and_emails_in_a_batch_are_rejected_after_the_first():
    result = upsert(
        {"external_id": "a", "email": "x@example.com"},
        {"external_id": "a", "email": "y@example.com"},
        {"external_id": "b", "email": "X@EXAMPLE.COM"},
        {"external_id": "c", "email": "c@example.com"},
    )
    assert result.created == 2
    assert [(e.row, e.column) for e in result.rejected] == [(1, "external_id"), (2, "email")]
    assert "repeated (first at 0)" in result.rejected[0].reason
    assert Customer.objects.get(external_id="a").email == "x@example.com"


def test_an_email_owned_by_another_customer_is_rejected_case_insensitively():
    upsert({"external_id": "a", "email": "Ann@example.com"})
    result = upsert({"external_id": "b", "email": "ann@EXAMPLE.com"}, {"external_id": "c"})
    assert result.created == 1
    assert result.rejected[0].row == 0
    assert "belongs to customer 'a'" in result.rejected[0].reason
    assert not Customer.objects.filter(external_id="b").exists()


def test_customers_swapping_emails_in_one_batch_are_both_rejected():
    upsert({"external_id": "a", "email": "a@example.com"}, {"external_id": "b", "email": "b@x.io"})
    result = upsert(
        {"external_id": "a", "email": "b@x.io"}, {"external_id": "b", "email": "a@example.com"}
    )
    assert (result.created, result.updated, result.unchanged) == (0, 0, 0)
    assert [(e.row, e.column) for e in result.rejected] == [(0, "email"), (1, "email")]
    assert "belongs to customer 'b'" in result.rejected[0].reason
    assert dict(Customer.objects.values_list("external_id", "email")) == {
        "a": "a@example.com",
        "b": "b@x.io",
    }


def test_emails_are_checked_against_the_customers_as_they_were_before_the_batch():
    upsert({"external_id": "a", "email": "old@example.com"})
    result = upsert(
        {"external_id": "a", "email": "new@example.com"},
        {"external_id": "n", "email": "OLD@example.com"},
        {"external_id": "m", "email": "m@example.com"},
    )
    assert (result.created, result.updated) == (1, 1)
    assert [(e.row, e.column) for e in result.rejected] == [(1, "email")]
    assert "belongs to customer 'a'" in result.rejected[0].reason
    assert Customer.objects.get(external_id="a").email == "new@example.com"
    assert set(Customer.objects.values_list("external_id", flat=True)) == {"a", "m"}


def test_a_batch_counts_created_updated_and_unchanged_rows():
    upsert({"external_id": "a", "first_name": "Ann"}, {"external_id": "b", "first_name": "Bo"})
    stamp = Customer.objects.get(external_id="b").updated_at
    result = upsert(
        {"external_id": "a", "first_name": "Anne"},
        {"external_id": "b", "first_name": "Bo"},
        {"external_id": "c"},
    )
    assert (result.created, result.updated, result.unchanged, result.rejected) == (1, 1, 1, [])
    assert Customer.objects.get(external_id="a").first_name == "Anne"
    assert Customer.objects.get(external_id="b").updated_at == stamp


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ({}, "external_id"),
        ({"external_id": "  "}, "external_id"),
        ({"external_id": "x" * 256}, "external_id"),
        ({"external_id": "a", "email": "not-an-email"}, "email"),
        ({"external_id": "a", "email": "a@b"}, "email"),
        ({"external_id": "a", "locale": "english!"}, "locale"),
        ({"external_id": "a", "time_zone": "Mars/Base"}, "time_zone"),
        ({"external_id": "a", "subscription_status": "maybe"}, "subscription_status"),
        ({"external_id": "a", "attributes": ["not", "an", "object"]}, "attributes"),
        ({"external_id": "a", "first_name": "x" * 151}, "first_name"),
    ],
)
def test_invalid_customer_rows_name_the_column(row, column):
    with pytest.raises(RowInvalid) as error:
        clean_customer(row)
    assert error.value.column == column


def test_valid_but_unusual_emails_pass_through_djangos_validator():
    assert clean_customer({"external_id": "a", "email": "jose@exämple.com"}).email
    assert clean_customer({"external_id": "a", "email": "o'hara+tag@sub.example.co.uk"}).email
    assert clean_customer({"external_id": "a", "locale": "pt_BR"}).locale == "pt-BR"


def test_events_are_stored_for_known_customers_and_unknown_ones_rejected():
    upsert({"external_id": "a"})
    result = ingest(
        {
            "customer": "a",
            "type": "purchase",
            "occurred_at": "2024-05-01T10:00:00+02:00",
            "value": "19.90",
            "properties": {"sku": "x"},
        },
        {"customer": "nobody", "type": "session", "occurred_at": "2024-05-01"},
    )
    assert (result.accepted, result.duplicates) == (1, 0)
    assert [(e.row, e.column) for e in result.rejected] == [(1, "customer")]
    event = Event.objects.get()
    assert event.occurred_at == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert event.value == Decimal("19.90") and event.properties == {"sku": "x"}


def test_unknown_customers_can_be_created_on_the_fly():
    result = ingest(
        {"customer": "new-1", "type": "session", "occurred_at": "2024-05-01T00:00:00Z"},
        {"customer": "new-1", "type": "session", "occurred_at": "2024-05-02T00:00:00Z"},
        create_customers=True,
    )
    assert (result.accepted, result.customers_created, result.rejected) == (2, 1, [])
    assert Customer.objects.get(external_id="new-1").subscription_status == "subscribed"


def test_a_repeated_event_id_is_a_duplicate_not_a_second_event():
    upsert({"external_id": "a"})
    base = {"customer": "a", "type": "purchase", "occurred_at": "2024-05-01T00:00:00Z"}
    first = ingest({**base, "event_id": "o-1"}, {**base, "event_id": "o-1"}, {**base})
    assert (first.accepted, first.duplicates) == (2, 1)
    second = ingest({**base, "event_id": "o-1"}, {**base, "event_id": "o-1", "source": "shop"})
    assert (second.accepted, second.duplicates) == (1, 1), "event ids are unique per source"
    assert Event.objects.count() == 3


@pytest.mark.postgres
def test_a_duplicate_stored_after_the_check_is_still_a_duplicate(require_postgres, monkeypatch):
    """Another request may store an event id between the batch's check for repeats and its
    insert: the plain insert fails on the unique index and the batch goes in skipping it."""
    from segmentation.services import events as events_module

    upsert({"external_id": "a"})
    base = {"customer": "a", "type": "purchase", "occurred_at": "2024-05-01T00:00:00Z"}
    ingest({**base, "event_id": "c-1"})
    monkeypatch.setattr(events_module, "_REPEATS_SQL", "SELECT FALSE")
    result = ingest({**base, "event_id": "c-1"}, {**base, "event_id": "c-2"})
    assert (result.accepted, result.duplicates, result.rejected) == (1, 1, [])
    assert sorted(Event.objects.values_list("event_id", flat=True)) == ["c-1", "c-2"]


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ({"type": "x", "occurred_at": "2024-01-01"}, "customer"),
        ({"customer": "a", "occurred_at": "2024-01-01"}, "type"),
        ({"customer": "a", "type": "x"}, "occurred_at"),
        ({"customer": "a", "type": "x", "occurred_at": "yesterday"}, "occurred_at"),
        ({"customer": "a", "type": "x", "occurred_at": "2024-01-01", "value": "abc"}, "value"),
        ({"customer": "a", "type": "x", "occurred_at": "2024-01-01", "value": "1.234"}, "value"),
        ({"customer": "a", "type": "x", "occurred_at": "2024-01-01", "value": "NaN"}, "value"),
        (
            {"customer": "a", "type": "x", "occurred_at": "2024-01-01", "properties": []},
            "properties",
        ),
        ({"customer": "a", "type": "x" * 101, "occurred_at": "2024-01-01"}, "type"),
    ],
)
def test_invalid_event_rows_name_the_column(row, column):
    with pytest.raises(RowInvalid) as error:
        clean_event(row)
    assert error.value.column == column


def test_event_values_keep_cents_and_naive_times_are_utc():
    row = clean_event({"customer": "a", "type": "x", "occurred_at": "2024-01-01T12:00", "value": 5})
    assert row.value == Decimal("5.00")
    assert row.occurred_at == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert clean_event(
        {"customer": "a", "type": "x", "occurred_at": "2024-01-01", "value": "1.50"}
    ).value == Decimal("1.50")


def _deep(levels: int) -> dict:
    root: dict = {}
    node = root
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return root


@pytest.mark.parametrize(
    ("values", "column"),
    [
        ({"external_id": "x", "first_name": "a\x00b"}, "first_name"),
        ({"external_id": "y\x00"}, "external_id"),
        ({"external_id": "x", "email": "a\x00@example.com"}, "email"),
        ({"external_id": "z", "attributes": {"k\x00": 1}}, "attributes"),
        ({"external_id": "w", "attributes": {"k": ["v\x00"]}}, "attributes"),
        ({"external_id": "v", "attributes": _deep(21)}, "attributes"),
        ({"external_id": "u", "attributes": {"n": float("inf")}}, "attributes"),
    ],
)
def test_customers_with_null_characters_or_unstorable_json_are_rejected(values, column):
    with pytest.raises(RowInvalid) as error:
        clean_customer(values)
    assert error.value.column == column


def test_json_within_the_limits_is_accepted():
    attributes = {"nested": {"list": [1, "two", 2.5, None, True]}, "deep": _deep(19)}
    assert clean_customer({"external_id": "a", "attributes": attributes}).attributes == attributes


EVENT = {"customer": "c1", "type": "s", "occurred_at": "2024-01-01"}


@pytest.mark.parametrize(
    ("changes", "column"),
    [
        ({"type": "s\x00"}, "type"),
        ({"source": "a\x00"}, "source"),
        ({"event_id": "e\x00"}, "event_id"),
        ({"customer": "c\x00"}, "customer"),
        ({"properties": {"p": "\x00"}}, "properties"),
        ({"properties": _deep(21)}, "properties"),
        ({"occurred_at": "0001-01-01T00:00:00+05:00"}, "occurred_at"),
        ({"occurred_at": "9999-12-31T23:59:59-05:00"}, "occurred_at"),
        ({"value": "1" * 30 + ".001"}, "value"),
    ],
)
def test_events_with_null_characters_or_out_of_range_values_are_rejected(changes, column):
    with pytest.raises(RowInvalid) as error:
        clean_event(EVENT | changes)
    assert error.value.column == column


@pytest.mark.parametrize(
    ("given", "stored"), [(" Subscribed ", "subscribed"), ("BOUNCED", "bounced"), ("", None)]
)
def test_subscription_status_ignores_case_and_spaces(given, stored):
    assert (
        clean_customer({"external_id": "a", "subscription_status": given}).subscription_status
        == stored
    )


@pytest.mark.parametrize("given", ["gone", 3, ["subscribed"]])
def test_unknown_subscription_statuses_are_rejected(given):
    with pytest.raises(RowInvalid) as error:
        clean_customer({"external_id": "a", "subscription_status": given})
    assert error.value.column == "subscription_status"


def test_a_repeated_email_stays_with_the_customer_who_has_it():
    upsert({"external_id": "P3", "email": "p3@x.com"})
    result = upsert(
        {"external_id": "P4", "email": "P3@X.com"},
        {"external_id": "P3", "email": "p3@x.com", "first_name": "Pat"},
        {"external_id": "P5", "email": "new@x.com"},
        {"external_id": "P6", "email": "NEW@x.com"},
    )
    assert (result.created, result.updated) == (1, 1)
    assert [(e.row, e.column, e.reason) for e in result.rejected] == [
        (0, "email", "'P3@X.com' is repeated; it stays with 1, whose customer has it."),
        (3, "email", "'NEW@x.com' is repeated (first at 2)."),
    ]
    assert Customer.objects.get(external_id="P3").first_name == "Pat"


def stored_values(customers) -> dict[str, tuple]:
    fields = ("email", "first_name", "last_name", "locale", "time_zone")
    return {
        c.external_id: (*(getattr(c, f) for f in fields), c.subscription_status, c.attributes)
        for c in customers
    }


def test_a_batch_of_new_customers_stores_what_the_general_path_stores():
    # All new: inserted without the match table. The same rows, one of them an update, take
    # the general path; both must store the same values.
    rows = (
        {"external_id": "n1", "email": "N1@x.io", "attributes": {"plan": "pro", "gone": None}},
        {"external_id": "n2", "first_name": "Bo", "subscription_status": "bounced"},
        {"external_id": "n3", "attributes": {"nested": {"keep": 1, "drop": None}}},
    )
    assert upsert(*rows).created == 3
    fast = stored_values(Customer.objects.all())
    Customer.objects.all().delete()
    upsert({"external_id": "old"})
    result = upsert({"external_id": "old", "first_name": "Od"}, *rows)
    assert (result.created, result.updated) == (3, 1)
    general = stored_values(Customer.objects.exclude(external_id="old"))
    assert fast == general
    assert fast["n1"] == ("N1@x.io", "", "", "", "", "subscribed", {"plan": "pro"})
    assert fast["n2"][5] == "bounced"
    assert fast["n3"][6] == {"nested": {"keep": 1, "drop": None}}


def test_a_new_customer_batch_with_an_existing_id_falls_back_and_counts_right():
    upsert({"external_id": "z", "first_name": "Zed"})
    result = upsert(*({"external_id": f"c{i}"} for i in range(50)), {"external_id": "z"})
    assert (result.created, result.updated, result.unchanged, result.rejected) == (50, 0, 1, [])
    assert Customer.objects.count() == 51


def test_non_ascii_emails_repeated_in_a_batch_are_caught():
    result = upsert(
        {"external_id": "a", "email": "ann@Bücher.example"},
        {"external_id": "b", "email": "ann@bücher.example"},
    )
    assert result.created == 1
    assert [(e.row, e.column) for e in result.rejected] == [(1, "email")]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("a", "a@x.io"), ("b", "b@x.io")], (False, False)),
        ([("a", "a@x.io"), ("a", "b@x.io")], (True, False)),
        ([("a", "a@x.io"), ("b", "A@X.IO")], (False, True)),
        ([("a", None), ("b", None)], (False, False)),
        # Non-ASCII: PostgreSQL's lower() depends on the database's locale; always checked.
        ([("a", "a@é.io"), ("b", "b@x.io")], (False, True)),
    ],
)
def test_the_repeat_screen_never_misses_a_repeat(rows, expected):
    from segmentation.services.customers import _may_repeat

    batch = [(i, clean_customer({"external_id": x, "email": e})) for i, (x, e) in enumerate(rows)]
    assert _may_repeat(batch) == expected


def test_a_batch_of_new_customers_is_copied_straight_in(require_postgres):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        result = upsert(*({"external_id": f"n{i}", "email": f"n{i}@x.io"} for i in range(20)))
    assert result.created == 20
    assert not any("customer_stage" in q["sql"] for q in queries.captured_queries)
    with CaptureQueriesContext(connection) as queries:
        result = upsert({"external_id": "n3", "first_name": "Ned"}, {"external_id": "n99"})
    assert (result.created, result.updated) == (1, 1)
    assert any("customer_stage" in q["sql"] for q in queries.captured_queries)


def test_a_stored_customer_the_lookup_missed_sends_the_batch_the_general_way(
    require_postgres, monkeypatch
):
    from segmentation.services import customers

    upsert({"external_id": "old", "email": "old@x.io", "first_name": "Od"})
    monkeypatch.setattr(customers, "NEW_BATCH_PROBES", 1)  # looks up the first row only
    result = upsert(
        *({"external_id": f"n{i}"} for i in range(30)),
        {"external_id": "old", "first_name": "Olga"},
    )
    assert (result.created, result.updated, result.unchanged, result.rejected) == (30, 1, 0, [])
    assert Customer.objects.count() == 31
    assert Customer.objects.get(external_id="old").first_name == "Olga"


def test_the_external_id_index_carries_the_customer_id_on_postgres(require_postgres):
    """Migration 0010: external ids resolve to customers by reading the index alone."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'customer_external_id_unique'"
        )
        (definition,) = cursor.fetchone()
    assert definition.startswith("CREATE UNIQUE INDEX") and definition.endswith(
        "(external_id) INCLUDE (id)"
    )
    Customer.objects.create(external_id="same")
    with pytest.raises(IntegrityError), transaction.atomic():
        Customer.objects.create(external_id="same")
    assert upsert({"external_id": "same", "first_name": "Sam"}).updated == 1
