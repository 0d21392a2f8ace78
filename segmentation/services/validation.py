"""Fast, shared validation of customer and event rows (API batches and CSV files alike).

Bulk paths validate hundreds of thousands of rows a second, so these are plain functions over
dicts with precompiled checks, not serializers. Every accepted value is normalised here, once:
the writers downstream (COPY on PostgreSQL, ``bulk_create`` elsewhere) trust it.

A row that fails raises ``RowInvalid(column, reason)``; callers collect those per row (index
for API batches, line number for files) and carry on with the rest.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from segmentation.models import SubscriptionStatus


class RowInvalid(ValueError):
    def __init__(self, column: str | None, reason: str):
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one row was not imported. ``row`` is the 0-based index (API) or the line (files)."""

    row: int
    column: str | None
    reason: str

    def as_dict(self, *, row_key: str = "index") -> dict[str, Any]:
        return {row_key: self.row, "column": self.column, "reason": self.reason}


# --- shared checks -------------------------------------------------------------------------

#: How deeply ``attributes`` and ``properties`` may nest (objects and arrays).
MAX_JSON_DEPTH = 20


def _no_nul(column: str, value: str) -> str:
    """PostgreSQL text cannot hold the NUL character; say so for the row, not the batch."""
    if "\x00" in value:
        raise RowInvalid(column, "Null characters are not allowed.")
    return value


def clean_json_object(column: str, value: Any) -> dict:
    """A JSON object PostgreSQL can store: no NUL character in a key or string (``jsonb``
    rejects ``\\u0000``), no non-finite number, at most ``MAX_JSON_DEPTH`` levels deep."""
    if not isinstance(value, dict):
        raise RowInvalid(column, "Must be a JSON object.")
    # Fast path (most rows, every CSV row): flat text and whole numbers, checked inline.
    for key, item in value.items():
        kind = type(item)
        if "\x00" in key or (kind is str and "\x00" in item):
            raise RowInvalid(column, "Null characters are not allowed.")
        if kind is not str and kind is not int and kind is not bool and item is not None:
            _check_json(column, value, 1)
            break
    return value


def _check_json(column: str, value: dict | list, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise RowInvalid(column, f"Nested more than {MAX_JSON_DEPTH} levels deep.")
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            raise RowInvalid(column, "Null characters are not allowed.")
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                raise RowInvalid(column, "Null characters are not allowed.")
        elif kind is float:
            if not math.isfinite(item):
                raise RowInvalid(column, "Numbers must be finite.")
        elif kind is dict or kind is list:
            _check_json(column, item, depth + 1)


# --- customers ------------------------------------------------------------------------------

#: Columns of a customer row, in staging order; bit i of ``provided`` marks column i as sent.
CUSTOMER_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "locale",
    "time_zone",
    "subscription_status",
    "attributes",
)
PROVIDED_BIT = {name: 1 << i for i, name in enumerate(CUSTOMER_FIELDS)}
MAX_LENGTH = {
    "external_id": 255,
    "email": 254,
    "first_name": 150,
    "last_name": 150,
    "locale": 35,
    "time_zone": 64,
}
STATUSES = frozenset(SubscriptionStatus.values)

# A strict subset of what Django's EmailValidator accepts (dot-atom local part, ASCII domain
# with a letters-only TLD): matching it is proof of validity; anything else (IDN domains,
# quoted local parts, address literals...) goes through Django's validator itself.
_FAST_EMAIL = re.compile(
    r"[-!#$%&'*+/=?^_`{}|~0-9A-Za-z]+(?:\.[-!#$%&'*+/=?^_`{}|~0-9A-Za-z]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
# building the row a third of ``clean_customer`` (1.5 of 4.3 us); nothing changes rows.
@dataclass(slots=True)
class CustomerRow:
    external_id: str
    email: str | None
    first_name: str
    last_name: str
    locale: str
    time_zone: str
    subscription_status: str | None
    attributes: dict | None
    provided: int  # bit mask over CUSTOMER_FIELDS


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def clean_external_id(value: Any, column: str = "external_id") -> str:
    if value is None:
        raise RowInvalid(column, "This field is required.")
    if not isinstance(value, str):
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else None
        if value is None:
            raise RowInvalid(column, "Must be a string.")
    value = value.strip()
    if not value:
        raise RowInvalid(column, "This field is required.")
    if len(value) > 255:
        raise RowInvalid(column, "At most 255 characters.")
    return _no_nul(column, value)


def clean_email(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowInvalid("email", "Must be a string.")
    value = value.strip()
    if not value:
        return None
    if len(value) > 254:
        raise RowInvalid("email", "At most 254 characters.")
    _no_nul("email", value)
    if not _FAST_EMAIL.fullmatch(value):
        try:
            validate_email(value)
        except ValidationError:
            raise RowInvalid("email", f"{value!r} is not a valid email address.") from None
    return value


def _clean_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowInvalid(name, "Must be a string.")
    value = value.strip()
    if len(value) > MAX_LENGTH[name]:
        raise RowInvalid(name, f"At most {MAX_LENGTH[name]} characters.")
    if "\x00" in value:
        raise RowInvalid(name, "Null characters are not allowed.")
    return value


def clean_locale(value: Any) -> str:
    if type(value) is str:  # a file or batch repeats a few dozen locales
        return _clean_locale_text(value)
    return _clean_locale(value)


@lru_cache(maxsize=4096)  # failures raise, so only valid locales are cached
def _clean_locale_text(value: str) -> str:
    return _clean_locale(value)


def _clean_locale(value: Any) -> str:
    value = _clean_text("locale", value)
    if value and not _LOCALE.fullmatch(value):
        raise RowInvalid("locale", f"{value!r} is not a language tag such as en or pt-BR.")
    return value.replace("_", "-")


def clean_time_zone(value: Any) -> str:
    value = _clean_text("time_zone", value)
    if value and value not in _time_zones():
        raise RowInvalid("time_zone", f"{value!r} is not an IANA time zone such as Europe/Paris.")
    return value


def clean_status(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowInvalid("subscription_status", "Must be a string.")
    value = value.strip().lower()
    if not value:
        return None
    if value not in STATUSES:
        raise RowInvalid(
            "subscription_status", f"{value!r} is not one of {', '.join(sorted(STATUSES))}."
        )
    return value


#: The ``provided`` mask of each shape of row (its keys, in order) seen so far.
_PROVIDED: dict[tuple[str, ...], int] = {}


def clean_customer(values: dict[str, Any]) -> CustomerRow:
    """Validate one customer given as ``{field: value}`` for the fields that were sent.

    Absent fields are left as they are on an existing customer. Sent fields replace the stored
    value; ``attributes`` are merged key by key, a ``None`` value removing the key.
    """
    keys = tuple(values)
    provided = _PROVIDED.get(keys)
    if provided is None:  # once per shape of row (a file has one)
        provided = 0
        for name in keys:
            provided |= PROVIDED_BIT.get(name, 0)
        if len(_PROVIDED) < 1024:
            _PROVIDED[keys] = provided
    attributes = values.get("attributes")
    if attributes is not None:
        clean_json_object("attributes", attributes)
    return CustomerRow(
        external_id=clean_external_id(values.get("external_id")),
        email=clean_email(values.get("email")),
        first_name=_clean_text("first_name", values.get("first_name")),
        last_name=_clean_text("last_name", values.get("last_name")),
        locale=clean_locale(values.get("locale")),
        time_zone=clean_time_zone(values.get("time_zone")),
        subscription_status=clean_status(values.get("subscription_status")),
        attributes=attributes,
        provided=provided,
    )


# --- events ---------------------------------------------------------------------------------

MAX_VALUE = Decimal("999999999999.99")
_CENT = Decimal("0.01")


@dataclass(slots=True)  # not frozen, as CustomerRow
class EventRow:
    external_id: str
    type: str
    occurred_at: datetime
    value: Decimal | None
    properties: dict
    source: str
    event_id: str | None


def clean_datetime(value: Any, column: str = "occurred_at") -> datetime:
    """ISO 8601 date or date-time; naive values are taken as UTC. Returns an aware UTC value."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time.min)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise RowInvalid(
                column, f"{text!r} is not an ISO 8601 date-time such as 2024-05-01T12:30:00Z."
            ) from None
    else:
        raise RowInvalid(column, "This field is required." if not value else "Must be a string.")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise RowInvalid(
            column, "Out of range: in UTC it falls before year 1 or after 9999."
        ) from None


def clean_value(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowInvalid("value", "Must be a number.")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise RowInvalid("value", f"{value!r} is not a number.") from None
    if not number.is_finite():
        raise RowInvalid("value", "Must be a finite number.")
    if abs(number) > MAX_VALUE:
        raise RowInvalid("value", "Too large.")
    if number.as_tuple().exponent < -2 and number != number.quantize(_CENT):
        raise RowInvalid("value", "At most 2 decimal places (an amount of money).")
    return number.quantize(_CENT)


def clean_event(values: dict[str, Any], *, default_source: str = "") -> EventRow:
    event_type = values.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        raise RowInvalid(
            "type", "This field is required." if not event_type else "Must be a string."
        )
    event_type = _no_nul("type", event_type.strip())
    if len(event_type) > 100:
        raise RowInvalid("type", "At most 100 characters.")
    properties = values.get("properties")
    if properties is None:
        properties = {}
    else:
        clean_json_object("properties", properties)
    source = values.get("source")
    if source is None or source == "":
        source = default_source
    elif not isinstance(source, str) or len(source) > 100:
        raise RowInvalid("source", "Must be a string of at most 100 characters.")
    else:
        _no_nul("source", source)
    event_id = values.get("event_id")
    if event_id is not None:
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)
        if not isinstance(event_id, str):
            raise RowInvalid("event_id", "Must be a string.")
        event_id = _no_nul("event_id", event_id.strip()) or None
        if event_id is not None and len(event_id) > 255:
            raise RowInvalid("event_id", "At most 255 characters.")
    return EventRow(
        external_id=clean_external_id(values.get("customer"), "customer"),
        type=event_type,
        occurred_at=clean_datetime(values.get("occurred_at")),
        value=clean_value(values.get("value")),
        properties=properties,
        source=source,
        event_id=event_id,
    )
