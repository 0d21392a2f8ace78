"""Customer writes: bulk upsert by ``external_id`` (API batches, CSV files) and single CRUD.

Upsert semantics (the same on every path):

- A row creates the customer when its ``external_id`` is new, otherwise updates it.
- Only the fields a row sends change; ``attributes`` are merged key by key and a ``null``
  value removes a key. New customers default to ``subscribed`` with empty fields.
- A row identical to what is stored changes nothing (``updated_at`` stays), so re-importing a
  file is a no-op that reports every row as unchanged.
- Rejected, with a reason: an ``external_id`` repeated within the batch (later rows), an email
  used by another customer, or repeated within the batch for different customers.

On PostgreSQL rows are staged with ``COPY`` and applied with one statement; elsewhere the ORM
does the same with ``bulk_create`` / ``bulk_update``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Lower
from django.utils import timezone

from abtest.db import postgres_local_settings
from abtest.errors import ServiceError
from segmentation.models import Customer, SubscriptionStatus
from segmentation.services import bulk
from segmentation.services.validation import (
    CUSTOMER_FIELDS,
    PROVIDED_BIT,
    CustomerRow,
    RowError,
    RowInvalid,
    clean_customer,
)

#: The most rows one API request may send.
MAX_BATCH = 10_000


@dataclass
class UpsertResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RowError] = field(default_factory=list)

    def add(self, other: UpsertResult) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected.extend(other.rejected)


def _repeated(value: str, first: int) -> str:
    return f"{value!r} is repeated (first at {first})."


def _email_repeated(email: str, key: int, kept: int) -> str:
    """Why a row lost its email to another row of the batch (the first, or a later one whose
    customer has the email)."""
    if kept < key:
        return _repeated(email, kept)
    return f"{email!r} is repeated; it stays with {kept}, whose customer has it."


def _strip_nulls(attributes: dict) -> dict:
    return {key: value for key, value in attributes.items() if value is not None}


def customers_upsert(*, rows: Sequence[tuple[int, CustomerRow]]) -> UpsertResult:
    """Create or update validated ``rows`` (``(row key, row)`` pairs) in one transaction."""
    if not rows:
        return UpsertResult()
    with transaction.atomic():
        if bulk.is_postgres():
            return _upsert_postgres(rows)
        return _upsert_orm(rows)


# --- PostgreSQL -----------------------------------------------------------------------------

_STAGE_COLUMNS = (
    ("line", "integer"),
    ("external_id", "text"),
    ("email", "text"),
    ("first_name", "text"),
    ("last_name", "text"),
    ("locale", "text"),
    ("time_zone", "text"),
    ("subscription_status", "text"),
    ("attributes", "jsonb"),  # the keys sent with a value
    ("attributes_removed", "text[]"),  # the keys sent as null (NULL when none)
    ("provided", "integer"),
)


def _set(column: str, default: str) -> str:
    """The value a staged row gives ``column``: its own when sent, else the stored one."""
    return (
        f"CASE WHEN s.provided & {PROVIDED_BIT[column]} <> 0 THEN s.{column} "
        f"ELSE COALESCE(c.{column}, {default}) END"
    )


#: The stored columns a row sets (all but external_id), in staging order.
_MATCH_COLUMNS = CUSTOMER_FIELDS

# Each staged row joined once to the stored customer: the values it will have, whether that
# changes anything, and whether it changes the email (only those need an email check, so a
# re-import probes nothing but the external_id index).
_MATCH_SQL = f"""
CREATE TEMPORARY TABLE customer_match ON COMMIT DROP AS
SELECT n.line, n.external_id, n.cid,
       {", ".join(f"n.{c}" for c in _MATCH_COLUMNS)},
       n.cid IS NOT NULL
           AND ({", ".join(f"n.old_{c}" for c in _MATCH_COLUMNS)})
               IS DISTINCT FROM ({", ".join(f"n.{c}" for c in _MATCH_COLUMNS)}) AS changed,
       n.cid IS NOT NULL AND n.email IS NOT NULL
           AND lower(n.email) IS DISTINCT FROM lower(n.old_email) AS email_changed
FROM (
    SELECT s.line, s.external_id, c.id AS cid,
        CASE WHEN s.provided & {PROVIDED_BIT["email"]} <> 0 THEN s.email ELSE c.email END
            AS email,
        {_set("first_name", "''")} AS first_name,
        {_set("last_name", "''")} AS last_name,
        {_set("locale", "''")} AS locale,
        {_set("time_zone", "''")} AS time_zone,
        COALESCE(s.subscription_status, c.subscription_status, 'subscribed')
            AS subscription_status,
        -- Attributes merge key by key at the top level: the keys sent as null go, the others
        -- are set (a null inside a nested value is data, kept).
        CASE WHEN s.attributes IS NULL THEN COALESCE(c.attributes, '{{}}'::jsonb)
             ELSE COALESCE(c.attributes, '{{}}'::jsonb)
                  - COALESCE(s.attributes_removed, '{{}}') || s.attributes
        END AS attributes,
        {", ".join(f"c.{c} AS old_{c}" for c in _MATCH_COLUMNS)}
    FROM customer_stage s
    LEFT JOIN segmentation_customer c ON c.external_id = s.external_id
) n
"""

# An existing customer may not take an email another customer has (as stored before the batch).
_TAKEN_EMAILS_SQL = """
DELETE FROM customer_match m USING segmentation_customer c
WHERE m.email_changed AND lower(c.email) = lower(m.email) AND c.id <> m.cid
RETURNING m.line, m.email, c.external_id
"""

# New customers go in first, so that their emails are checked against the stored state, as
# for existing customers. A plain INSERT first: ON CONFLICT's speculative insertion costs
# about 40% more (11 s per 1M rows here) and conflicts are rare.
_INSERT_SQL = f"""
INSERT INTO segmentation_customer
    (external_id, {", ".join(_MATCH_COLUMNS)}, created_at, updated_at)
SELECT external_id, {", ".join(_MATCH_COLUMNS)}, %(now)s, %(now)s
FROM customer_match WHERE cid IS NULL
"""

# When the plain INSERT hits a unique conflict (an email another customer has, an external_id
# created meanwhile by another transaction), this one skips those rows and returns them.
_INSERT_SKIPPING_SQL = f"""
WITH ins AS (
    INSERT INTO segmentation_customer
        (external_id, {", ".join(_MATCH_COLUMNS)}, created_at, updated_at)
    SELECT external_id, {", ".join(_MATCH_COLUMNS)}, %(now)s, %(now)s
    FROM customer_match WHERE cid IS NULL
    ON CONFLICT DO NOTHING
    RETURNING external_id
)
SELECT m.line, m.external_id, m.email FROM customer_match m
WHERE m.cid IS NULL AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.external_id = m.external_id)
"""

_UPDATE_SQL = f"""
UPDATE segmentation_customer c
SET {", ".join(f"{c} = m.{c}" for c in _MATCH_COLUMNS)}, updated_at = %(now)s
FROM customer_match m
WHERE c.id = m.cid AND m.changed
"""

# Who holds the emails of the rows that were skipped (lower() as the unique index has it).
_OWNERS_SQL = """
SELECT m.line, c.external_id FROM customer_match m
JOIN segmentation_customer c ON lower(c.email) = lower(m.email)
WHERE m.line = ANY(%s) AND c.external_id <> m.external_id
"""


# Later rows repeating an external_id (or, among the rest, an email) are rejected.
_DUPLICATE_IDS_SQL = """
WITH d AS (
    SELECT line, min(line) OVER (PARTITION BY external_id) AS first FROM customer_stage
)
DELETE FROM customer_stage s USING d
WHERE s.line = d.line AND d.first <> d.line
RETURNING s.line, s.external_id, d.first
"""
# An email repeated in the batch stays with the row of the customer who has it, else with the
# first row.
_DUPLICATE_EMAILS_SQL = """
WITH d AS (
    SELECT s.line, first_value(s.line) OVER (
        PARTITION BY lower(s.email) ORDER BY c.id IS NULL, s.line
    ) AS kept
    FROM customer_stage s
    LEFT JOIN segmentation_customer c
        ON lower(c.email) = lower(s.email) AND c.external_id = s.external_id
    WHERE s.email IS NOT NULL
)
DELETE FROM customer_stage s USING d
WHERE s.line = d.line AND d.kept <> d.line
RETURNING s.line, s.email, d.kept
"""


def _attribute_changes(attributes: dict | None) -> tuple[str | None, list[str] | None]:
    """The staged ``attributes`` (JSON of the keys sent with a value) and
    ``attributes_removed`` (the keys sent as null) of a row."""
    if attributes is None:
        return None, None
    if None not in attributes.values():
        return bulk.json_text(attributes), None
    removed = [key for key, value in attributes.items() if value is None]
    return bulk.json_text(_strip_nulls(attributes)), removed


def _may_repeat(rows: Sequence[tuple[int, CustomerRow]]) -> tuple[bool, bool]:
    """Whether the batch may repeat an external_id, or an email as the unique index compares
    them (``lower()``); only then do the SQL checks run. Cheap screens in Python that never
    miss a repeat: ids are compared exactly; emails by Python's lower(), which for ASCII
    text folds at least what PostgreSQL's does in any locale, and any non-ASCII email
    counts as a possible repeat."""
    ids = [row.external_id for _, row in rows]
    emails = [row.email for _, row in rows if row.email is not None]
    repeated_ids = len(set(ids)) < len(ids)
    repeated_emails = bool(emails) and (
        not "".join(emails).isascii() or len({email.lower() for email in emails}) < len(emails)
    )
    return repeated_ids, repeated_emails


def _upsert_postgres(rows: Sequence[tuple[int, CustomerRow]]) -> UpsertResult:
    result = UpsertResult()
    now = timezone.now()
    repeated_ids, repeated_emails = _may_repeat(rows)
    with connection.cursor() as cursor:
        if not (repeated_ids or repeated_emails) and _copy_if_new(cursor, rows, now):
            result.created = len(rows)
            return result
        bulk.stage(
            cursor,
            table="customer_stage",
            columns=_STAGE_COLUMNS,
            rows=(
                (
                    key,
                    row.external_id,
                    row.email,
                    row.first_name,
                    row.last_name,
                    row.locale,
                    row.time_zone,
                    row.subscription_status,
                    *_attribute_changes(row.attributes),
                    row.provided,
                )
                for key, row in rows
            ),
        )
        if repeated_ids:
            cursor.execute(_DUPLICATE_IDS_SQL)
            for line, external_id, first in cursor.fetchall():
                result.rejected.append(
                    RowError(
                        line, "external_id", f"{external_id!r} is repeated (first at {first})."
                    )
                )
        if repeated_emails:
            cursor.execute(_DUPLICATE_EMAILS_SQL)
            for line, email, kept in cursor.fetchall():
                result.rejected.append(RowError(line, "email", _email_repeated(email, line, kept)))
        _upsert_matched(cursor, result, now)
    result.rejected.sort(key=lambda error: error.row)
    return result


#: How many of a batch's external ids ``_copy_if_new`` looks up before trying the COPY.
NEW_BATCH_PROBES = 1_000
_NEW_COLUMNS = ("external_id", *_MATCH_COLUMNS, "created_at", "updated_at")


def _copy_if_new(cursor, rows: Sequence[tuple[int, CustomerRow]], now) -> bool:
    """A batch of new customers only (a file's first import, a sign-up feed) goes straight
    into the table with one ``COPY``, as a bare load would: a new customer's values are the
    row's own (unsent text fields are empty, the status defaults to subscribed, attributes
    sent as null are left out). Returns False, having written nothing, when the batch is not
    all new: an external_id or email already stored fails the COPY on a unique index, and
    the caller takes the general path.

    A failed COPY has sent its whole batch first, so it is only tried when none of up to
    :data:`NEW_BATCH_PROBES` external ids spread over the batch is stored (a re-import or an
    update fails that lookup at once). The caller has checked the batch repeats nothing.
    """
    step = max(1, len(rows) // NEW_BATCH_PROBES)
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM segmentation_customer WHERE external_id = ANY(%s))",
        [[row.external_id for _, row in rows[::step]]],
    )
    if cursor.fetchone()[0]:
        return False
    raw = getattr(cursor, "cursor", cursor)  # Django's CursorWrapper wraps psycopg's cursor
    try:
        with (
            transaction.atomic(),
            raw.copy(f"COPY segmentation_customer ({', '.join(_NEW_COLUMNS)}) FROM STDIN") as copy,
        ):
            for _, row in rows:
                attributes = row.attributes
                if attributes is not None and None in attributes.values():
                    attributes = _strip_nulls(attributes)
                copy.write_row(
                    (
                        row.external_id,
                        row.email,
                        row.first_name,
                        row.last_name,
                        row.locale,
                        row.time_zone,
                        row.subscription_status or SubscriptionStatus.SUBSCRIBED,
                        "{}" if attributes is None else bulk.json_text(attributes),
                        now,
                        now,
                    )
                )
    except psycopg.errors.UniqueViolation:
        return False
    return True


def _upsert_matched(cursor, result: UpsertResult, now) -> None:
    """The general path: each staged row matched to the stored customer, then new ones
    inserted, changed ones updated, unchanged ones left alone."""
    cursor.execute("DROP TABLE IF EXISTS pg_temp.customer_match")
    with postgres_local_settings(**bulk.INDEX_PROBE_JOINS):
        cursor.execute(_MATCH_SQL)
    cursor.execute("SELECT count(*) FILTER (WHERE email_changed) FROM customer_match")
    if cursor.fetchone()[0]:
        cursor.execute(_TAKEN_EMAILS_SQL)
        for line, email, owner in cursor.fetchall():
            result.rejected.append(
                RowError(line, "email", f"{email!r} belongs to customer {owner!r}.")
            )
    cursor.execute(
        "SELECT count(*) FILTER (WHERE cid IS NULL), count(*) FILTER (WHERE changed), "
        "count(*) FILTER (WHERE cid IS NOT NULL AND NOT changed) FROM customer_match"
    )
    new, result.updated, result.unchanged = cursor.fetchone()
    try:
        with transaction.atomic():
            cursor.execute(_INSERT_SQL, {"now": now})
        skipped = []
    except IntegrityError:
        cursor.execute(_INSERT_SKIPPING_SQL, {"now": now})
        skipped = cursor.fetchall()
    result.created = new - len(skipped)
    if skipped:
        result.rejected.extend(_skipped_errors(cursor, skipped))
    if result.updated:
        cursor.execute(_UPDATE_SQL, {"now": now})


def _skipped_errors(cursor, skipped: list[tuple[int, str, str | None]]) -> list[RowError]:
    """Why new rows hit a unique conflict: their email belongs to someone, or another request
    created the same external_id meanwhile."""
    cursor.execute(_OWNERS_SQL, [[line for line, _, _ in skipped]])
    owners = dict(cursor.fetchall())
    errors = []
    for line, external_id, email in skipped:
        owner = owners.get(line)
        if owner is not None:
            errors.append(RowError(line, "email", f"{email!r} belongs to customer {owner!r}."))
        else:
            errors.append(
                RowError(
                    line,
                    "external_id",
                    f"{external_id!r} was created by another request at the same time; "
                    "send the row again.",
                )
            )
    return errors


# --- Other databases (SQLite in development) ------------------------------------------------

_FIELDS = ("email", "first_name", "last_name", "locale", "time_zone")


def _chunks(items: list, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _upsert_orm(rows: Sequence[tuple[int, CustomerRow]]) -> UpsertResult:
    result = UpsertResult()
    accepted: dict[str, tuple[int, CustomerRow]] = {}
    for key, row in rows:
        if row.external_id in accepted:
            first = accepted[row.external_id][0]
            result.rejected.append(RowError(key, "external_id", _repeated(row.external_id, first)))
        else:
            accepted[row.external_id] = (key, row)
    # Who holds each email now (lower() as the unique index has it).
    lowered_emails = {row.email.lower() for _, row in accepted.values() if row.email is not None}
    owners: dict[str, str] = {}
    for chunk in _chunks(list(lowered_emails)):
        owners.update(
            Customer.objects.annotate(email_lower=Lower("email"))
            .filter(email_lower__in=chunk)
            .values_list("email_lower", "external_id")
        )
    # An email repeated in the batch stays with the row of the customer who has it, else
    # with the first row.
    keeper: dict[str, int] = {}
    for external_id, (key, row) in accepted.items():
        if row.email is None:
            continue
        lowered = row.email.lower()
        if lowered not in keeper or owners.get(lowered) == external_id:
            keeper[lowered] = key
    for external_id, (key, row) in list(accepted.items()):
        if row.email is not None and keeper[row.email.lower()] != key:
            kept = keeper[row.email.lower()]
            result.rejected.append(RowError(key, "email", _email_repeated(row.email, key, kept)))
            del accepted[external_id]

    existing: dict[str, Customer] = {}
    for chunk in _chunks(list(accepted)):
        existing.update((c.external_id, c) for c in Customer.objects.filter(external_id__in=chunk))

    now = timezone.now()
    to_create: list[Customer] = []
    to_update: list[Customer] = []
    for external_id, (key, row) in accepted.items():
        if row.email is not None:
            owner = owners.get(row.email.lower())
            if owner is not None and owner != external_id:
                result.rejected.append(
                    RowError(key, "email", f"{row.email!r} belongs to customer {owner!r}.")
                )
                continue
        customer = existing.get(external_id)
        if customer is None:
            customer = Customer(
                external_id=external_id,
                subscription_status=SubscriptionStatus.SUBSCRIBED,
                attributes={},
                created_at=now,
                updated_at=now,
            )
            _apply(customer, row)
            to_create.append(customer)
        else:
            before = (*(getattr(customer, f) for f in _FIELDS), customer.subscription_status)
            before_attributes = dict(customer.attributes or {})
            _apply(customer, row)
            after = (*(getattr(customer, f) for f in _FIELDS), customer.subscription_status)
            if before != after or before_attributes != customer.attributes:
                customer.updated_at = now
                to_update.append(customer)
            else:
                result.unchanged += 1
    written = [*_FIELDS, "subscription_status", "attributes", "updated_at"]
    bulk.executemany_insert(
        Customer,
        fields=["external_id", *written, "created_at"],
        rows=([c.external_id, *(getattr(c, f) for f in written), c.created_at] for c in to_create),
    )
    bulk.executemany_update(
        Customer,
        fields=written,
        rows=([*(getattr(c, f) for f in written), c.pk] for c in to_update),
    )
    result.created, result.updated = len(to_create), len(to_update)
    result.rejected.sort(key=lambda error: error.row)
    return result


def _apply(customer: Customer, row: CustomerRow) -> None:
    for name in _FIELDS:
        if row.provided & PROVIDED_BIT[name]:
            setattr(customer, name, getattr(row, name))
    if row.subscription_status is not None:
        customer.subscription_status = row.subscription_status
    if row.attributes is not None:
        customer.attributes = _strip_nulls({**(customer.attributes or {}), **row.attributes})


# --- Single customers (API CRUD, admin-like edits) -------------------------------------------


def _clean_or_raise(values: dict[str, Any]) -> CustomerRow:
    try:
        return clean_customer(values)
    except RowInvalid as error:
        raise ServiceError(error.reason, field=error.column) from None


def _save(customer: Customer) -> Customer:
    try:
        with transaction.atomic():
            customer.save()
    except IntegrityError as error:
        message = str(error).lower()
        if "email" in message:
            raise ServiceError("Another customer has this email.", field="email") from None
        if "external_id" in message:
            raise ServiceError(
                "A customer with this external_id exists.", field="external_id"
            ) from None
        raise
    return customer


def customer_create(*, values: dict[str, Any]) -> Customer:
    """Create one customer; the ``external_id`` must be new."""
    row = _clean_or_raise(values)
    if Customer.objects.filter(external_id=row.external_id).exists():
        raise ServiceError("A customer with this external_id exists.", field="external_id")
    customer = Customer(subscription_status=SubscriptionStatus.SUBSCRIBED, attributes={})
    customer.external_id = row.external_id
    _apply(customer, row)
    return _save(customer)


def customer_update(
    *, customer: Customer, values: dict[str, Any], replace_attributes: bool = False
) -> Customer:
    """Change the fields in ``values``; attributes merge unless ``replace_attributes``."""
    row = _clean_or_raise({"external_id": customer.external_id, **values})
    if "external_id" in values and row.external_id != customer.external_id:
        customer.external_id = row.external_id
    if replace_attributes and row.attributes is not None:
        customer.attributes = {}
    _apply(customer, row)
    return _save(customer)


def customer_delete(*, customer: Customer) -> None:
    """Delete a customer with their events, metrics and memberships."""
    with transaction.atomic():
        customer.events.all().delete()
        customer.delete()
