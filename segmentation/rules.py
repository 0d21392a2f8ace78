"""Rule segments: the rule JSON format, its validation and its compilation to one SQL query.

A rule is a tree of groups, ``{"all": [...]}`` or ``{"any": [...]}`` (nested at most
``MAX_DEPTH`` deep, at most ``MAX_CONDITIONS`` conditions and groups in all), whose leaves are
conditions of three kinds::

    {"field": "metrics.frequency", "op": "gte", "value": 3}
    {"event": "purchase", "op": "at_least", "count": 2, "days": 30}
    {"segment": "champions", "op": "in"}

The catalogue the builder page renders its dropdowns from is data: ``RULE_FIELDS`` (concrete
fields), ``ATTRIBUTE_FIELD`` (the ``attributes.<key>`` family), ``OPERATORS``,
``EVENT_OPERATORS`` and ``SEGMENT_OPERATORS``; ``rule_catalogue()`` gives all of it as JSON-ready
dicts.

Semantics (docs/marketers/segments.md says the same for marketers):

- An empty ``all`` matches every customer; an empty ``any`` matches none.
- A missing value (NULL column, no metrics row yet, absent attribute key or JSON null) makes
  every comparison false, including ``not_within_last_days``; the negative operators ``neq`` and
  ``not_in`` are exactly the negation of ``eq`` and ``in``, so a missing value counts as "not
  equal". ``is_set`` is "present, not null and not the empty string".
- ``contains`` and ``starts_with`` ignore case. ``eq``/``in`` ignore case on email, names, locale
  and time zone; they are exact on external id, subscription status, metrics labels and
  attributes (attributes compare as JSON values: the string ``"3"`` is not the number ``3``).
- Dates written ``YYYY-MM-DD`` are whole days in the site time zone (``TIME_ZONE``): ``before``
  a day is before its start, ``after`` a day is from the next day on, ``between`` two days
  includes both days. Date-times (ISO 8601) compare exactly; naive ones are in the site time
  zone. ``within_last_days: d`` is ``value >= now - d days``.
- Event windows count events with ``occurred_at >= now - days`` (all time without ``days``).

Compilation returns a ``Q`` over ``Customer``: ``Customer.objects.filter(q)`` is one SQL query.
Metric conditions go through the reverse one-to-one join (``metrics__frequency__gte``); positive
event and segment conditions are non-correlated ``pk IN (subquery)`` (hash semi-joins on
PostgreSQL); negative ones are ``NOT EXISTS``, which PostgreSQL turns into hash anti-joins
(``NOT IN`` over a large subquery cannot be, and degrades to a nested scan). On PostgreSQL,
event conditions over all time and "at least once in the last d days" read the per-customer
event summary (``segmentation.services.event_summary``) plus the events after its cutoff;
only "k >= 2 times in the last d days" counts events in the window. A rule with segment
conditions needs a query at compile time to turn slugs into ids, and on PostgreSQL one with
event conditions a query to read the summary's cutoff.

``rule_matches`` (previews and segment refreshes) runs the same conditions from the cheapest
table: on PostgreSQL, a rule only customers with a metrics row can match, naming no customer
field, reads ``CustomerMetrics`` alone; other rules read the customers, joining only the
metrics rows their metrics conditions can use when none of those is negative. Within every
group, cheap conditions come first.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

from django.db import NotSupportedError, connection
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import (
    BooleanField,
    CharField,
    Count,
    DecimalField,
    Exists,
    Expression,
    F,
    FilteredRelation,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    TextField,
)
from django.db.models.fields.json import KeyTextTransform, KeyTransform, compile_json_path
from django.db.models.functions import Coalesce
from django.utils import timezone

from segmentation.models import (
    Customer,
    CustomerEventSummary,
    CustomerMetrics,
    Event,
    Segment,
    SegmentKind,
    SegmentMembership,
    StaleCustomerMetrics,
    SubscriptionStatus,
)

MAX_DEPTH = 5
MAX_CONDITIONS = 100
MAX_LIST_VALUES = 1000
MAX_TEXT = 1000
MAX_DAYS = 36500
MAX_EVENT_COUNT = 1_000_000
EVENT_TYPE_MAX_LENGTH = 100
SLUG_MAX_LENGTH = 200
ATTRIBUTE_KEY_MAX_LENGTH = 200


class RuleError(ValueError):
    """An invalid rule. ``path`` names the condition (``all[2].any[0]``; empty for the root)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# --- The catalogue ---------------------------------------------------------------------------


class FieldType(StrEnum):
    TEXT = "text"
    CHOICE = "choice"
    INTEGER = "integer"
    DECIMAL = "decimal"
    DATETIME = "datetime"
    ATTRIBUTE = "attribute"  # JSON: string, number or boolean; the value's type decides


class ValueKind(StrEnum):
    """What an operator's ``value`` is, so the builder knows which input to draw."""

    NONE = "none"  # no value
    ONE = "one"  # one value of the field's type
    LIST = "list"  # a non-empty list of values
    PAIR = "pair"  # [low, high], both included
    DAYS = "days"  # a whole number of days


@dataclass(frozen=True)
class Operator:
    name: str
    label: str
    value: ValueKind
    help: str = ""


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("eq", "is", ValueKind.ONE),
        Operator("neq", "is not", ValueKind.ONE, "Customers without a value match too."),
        Operator("in", "is one of", ValueKind.LIST),
        Operator("not_in", "is none of", ValueKind.LIST, "Customers without a value match too."),
        Operator("contains", "contains", ValueKind.ONE, "Ignores case."),
        Operator("starts_with", "starts with", ValueKind.ONE, "Ignores case."),
        Operator("gt", "is greater than", ValueKind.ONE),
        Operator("gte", "is at least", ValueKind.ONE),
        Operator("lt", "is less than", ValueKind.ONE),
        Operator("lte", "is at most", ValueKind.ONE),
        Operator("between", "is between", ValueKind.PAIR, "Both ends included."),
        Operator("is_set", "is set", ValueKind.NONE, "Present, and neither null nor empty."),
        Operator("is_not_set", "is not set", ValueKind.NONE),
        Operator("before", "is before", ValueKind.ONE),
        Operator("after", "is after", ValueKind.ONE),
        Operator("within_last_days", "is in the last … days", ValueKind.DAYS),
        Operator(
            "not_within_last_days",
            "is more than … days ago",
            ValueKind.DAYS,
            "Customers without a value do not match.",
        ),
    )
}

EVENT_OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("at_least", "did it at least … times", ValueKind.NONE, "Needs count >= 1."),
        Operator(
            "fewer_than",
            "did it fewer than … times",
            ValueKind.NONE,
            "Customers who never did it match too.",
        ),
        Operator("never", "never did it", ValueKind.NONE),
    )
}

SEGMENT_OPERATORS: dict[str, Operator] = {
    "in": Operator("in", "is in segment", ValueKind.NONE),
    "not_in": Operator("not_in", "is not in segment", ValueKind.NONE),
}

TEXT_OPS = ("eq", "neq", "in", "not_in", "contains", "starts_with", "is_set", "is_not_set")
CHOICE_OPS = ("eq", "neq", "in", "not_in")
NUMBER_OPS = ("eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "between")
DATETIME_OPS = ("before", "after", "between", "within_last_days", "not_within_last_days")
SET_OPS = ("is_set", "is_not_set")
ATTRIBUTE_OPS = (*TEXT_OPS[:6], "gt", "gte", "lt", "lte", "between", *SET_OPS)


@dataclass(frozen=True)
class RuleField:
    """A field a condition can test. ``lookup`` is the ORM path from ``Customer``."""

    name: str
    label: str
    type: FieldType
    group: str
    ops: tuple[str, ...]
    lookup: str = ""
    choices: tuple[tuple[str, str], ...] = ()
    nullable: bool = False  # may be missing: NULL column or no metrics row
    case_insensitive: bool = False  # eq/neq/in/not_in ignore case
    help: str = ""


def _customer(name: str, label: str, type_: FieldType, ops: tuple[str, ...], **kw) -> RuleField:
    return RuleField(name, label, type_, "Customer", ops, lookup=name, **kw)


def _metric(name: str, label: str, type_: FieldType, ops: tuple[str, ...], **kw) -> RuleField:
    # Every metric may be missing: customers get a metrics row at the first metrics refresh.
    return RuleField(
        f"metrics.{name}",
        label,
        type_,
        "Metrics",
        (*ops, *SET_OPS),
        lookup=f"metrics__{name}",
        nullable=True,
        **kw,
    )


_T = FieldType
_SCORE_CHOICES = tuple((str(n), str(n)) for n in range(1, 6))

RULE_FIELDS: dict[str, RuleField] = {
    f.name: f
    for f in (
        _customer("external_id", "External id", _T.TEXT, TEXT_OPS[:6]),
        _customer("email", "Email", _T.TEXT, TEXT_OPS, nullable=True, case_insensitive=True),
        _customer("first_name", "First name", _T.TEXT, TEXT_OPS, case_insensitive=True),
        _customer("last_name", "Last name", _T.TEXT, TEXT_OPS, case_insensitive=True),
        _customer("locale", "Locale", _T.TEXT, TEXT_OPS, case_insensitive=True),
        _customer("time_zone", "Time zone", _T.TEXT, TEXT_OPS, case_insensitive=True),
        _customer(
            "subscription_status",
            "Subscription status",
            _T.CHOICE,
            CHOICE_OPS,
            choices=tuple(SubscriptionStatus.choices),
        ),
        _customer("created_at", "Created", _T.DATETIME, DATETIME_OPS),
        _customer("updated_at", "Last updated", _T.DATETIME, DATETIME_OPS),
        _metric("frequency", "Purchases", _T.INTEGER, NUMBER_OPS),
        _metric("monetary", "Total spent", _T.DECIMAL, NUMBER_OPS),
        _metric("recency_days", "Days since last purchase", _T.INTEGER, NUMBER_OPS),
        _metric("first_purchase_at", "First purchase", _T.DATETIME, DATETIME_OPS),
        _metric("last_purchase_at", "Last purchase", _T.DATETIME, DATETIME_OPS),
        _metric("last_activity_at", "Last activity", _T.DATETIME, DATETIME_OPS),
        _metric("emails_sent", "Emails sent", _T.INTEGER, NUMBER_OPS),
        _metric("emails_opened", "Emails opened", _T.INTEGER, NUMBER_OPS),
        _metric("emails_clicked", "Emails clicked", _T.INTEGER, NUMBER_OPS),
        _metric("r_score", "Recency score (1-5)", _T.INTEGER, NUMBER_OPS, choices=_SCORE_CHOICES),
        _metric("f_score", "Frequency score (1-5)", _T.INTEGER, NUMBER_OPS, choices=_SCORE_CHOICES),
        _metric("m_score", "Monetary score (1-5)", _T.INTEGER, NUMBER_OPS, choices=_SCORE_CHOICES),
        _metric(
            "rfm_segment",
            "RFM segment",
            _T.TEXT,
            TEXT_OPS[:6],
            help="The slug of the customer's RFM segment.",
        ),
        _metric("engagement_points", "Engagement points", _T.INTEGER, NUMBER_OPS),
        _metric("engagement_tier", "Engagement tier", _T.TEXT, TEXT_OPS[:6]),
    )
}

#: ``attributes.<key>``: any key of the customer's ``attributes`` JSON.
ATTRIBUTE_FIELD = RuleField(
    "attributes.*",
    "Attribute",
    FieldType.ATTRIBUTE,
    "Attributes",
    ATTRIBUTE_OPS,
    lookup="attributes",
    nullable=True,
    help="Write attributes.<key>. Text values use text operators, numbers numeric ones.",
)
ATTRIBUTE_PREFIX = "attributes."


def rule_field(name: str) -> tuple[RuleField, str | None]:
    """The field a condition names, and the attribute key for ``attributes.<key>``."""
    if name.startswith(ATTRIBUTE_PREFIX):
        return ATTRIBUTE_FIELD, name[len(ATTRIBUTE_PREFIX) :]
    return RULE_FIELDS[name], None


def rule_catalogue() -> dict[str, Any]:
    """Fields and operators as JSON-ready data (choices that live in the database excluded)."""

    def field(f: RuleField) -> dict[str, Any]:
        data = asdict(f)
        del data["lookup"]
        data["choices"] = [list(c) for c in f.choices]
        data["ops"] = list(f.ops)
        return data

    return {
        "fields": [field(f) for f in (*RULE_FIELDS.values(), ATTRIBUTE_FIELD)],
        "operators": [asdict(o) for o in OPERATORS.values()],
        "event_operators": [asdict(o) for o in EVENT_OPERATORS.values()],
        "segment_operators": [asdict(o) for o in SEGMENT_OPERATORS.values()],
        "limits": {
            "max_depth": MAX_DEPTH,
            "max_conditions": MAX_CONDITIONS,
            "max_list_values": MAX_LIST_VALUES,
            "max_days": MAX_DAYS,
        },
    }


# --- Parsing: JSON -> a checked tree ----------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    path: str
    kind: str  # "all" or "any"
    children: tuple[_Node, ...]


@dataclass(frozen=True)
class _FieldCondition:
    path: str
    name: str
    field: RuleField
    key: str | None
    op: str
    value: Any


@dataclass(frozen=True)
class _EventCondition:
    path: str
    type: str
    op: str
    count: int
    days: int | None


@dataclass(frozen=True)
class _SegmentCondition:
    path: str
    slug: str
    op: str


_Node = _Group | _FieldCondition | _EventCondition | _SegmentCondition

_GROUP_KEYS = ("all", "any")
_KIND_KEYS = ("field", "event", "segment")
_ALLOWED_KEYS = {
    "field": {"field", "op", "value"},
    "event": {"event", "op", "count", "days"},
    "segment": {"segment", "op"},
}


def rule_validate(rule: Any) -> None:
    """Check the rule's structure and types (no database). Raises ``RuleError``."""
    _parse(rule)


def _parse(rule: Any) -> _Group:
    if not isinstance(rule, dict) or not any(k in rule for k in _GROUP_KEYS):
        raise RuleError("", 'a rule must be a group: {"all": [...]} or {"any": [...]}')
    counter = [0]
    return _parse_group(rule, "", 1, counter)


def _parse_group(node: dict, path: str, depth: int, counter: list[int]) -> _Group:
    kinds = [k for k in _GROUP_KEYS if k in node]
    if len(node) != 1 or len(kinds) != 1:
        raise RuleError(path, "a group has exactly one key, 'all' or 'any'")
    if depth > MAX_DEPTH:
        raise RuleError(path, f"groups can be nested at most {MAX_DEPTH} deep")
    kind = kinds[0]
    items = node[kind]
    if not isinstance(items, list):
        raise RuleError(path, f"'{kind}' needs a list of conditions")
    prefix = f"{path}.{kind}" if path else kind
    children = []
    for index, item in enumerate(items):
        item_path = f"{prefix}[{index}]"
        counter[0] += 1
        if counter[0] > MAX_CONDITIONS:
            raise RuleError(
                item_path, f"a rule can have at most {MAX_CONDITIONS} conditions and groups"
            )
        children.append(_parse_node(item, item_path, depth, counter))
    return _Group(path, kind, tuple(children))


def _parse_node(node: Any, path: str, depth: int, counter: list[int]) -> _Node:
    if not isinstance(node, dict):
        raise RuleError(path, "a condition must be an object")
    if any(k in node for k in _GROUP_KEYS):
        return _parse_group(node, path, depth + 1, counter)
    kinds = [k for k in _KIND_KEYS if k in node]
    if len(kinds) != 1:
        raise RuleError(
            path, "a condition has exactly one of 'field', 'event' or 'segment' (or is a group)"
        )
    kind = kinds[0]
    unexpected = sorted(set(node) - _ALLOWED_KEYS[kind])
    if unexpected:
        raise RuleError(path, f"unexpected key {unexpected[0]!r} in {kind} condition")
    if kind == "field":
        return _parse_field(node, path)
    if kind == "event":
        return _parse_event(node, path)
    return _parse_segment(node, path)


def _parse_field(node: dict, path: str) -> _FieldCondition:
    name = node["field"]
    if not isinstance(name, str) or not name:
        raise RuleError(path, "'field' must be a field name")
    try:
        field, key = rule_field(name)
    except KeyError:
        known = [*RULE_FIELDS, "attributes"]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise RuleError(path, f"{name} is not a known field{hint}") from None
    if key is not None and (
        not key
        or len(key) > ATTRIBUTE_KEY_MAX_LENGTH
        or any(ord(c) < 32 for c in key)
        or "\x00" in key
    ):
        raise RuleError(path, f"{name!r}: write attributes.<key> with a non-empty key")
    op = node.get("op")
    if op is None:
        raise RuleError(path, f"{name}: 'op' is missing")
    if op not in OPERATORS:
        raise RuleError(path, f"{op!r} is not a known operator")
    if op not in field.ops:
        raise RuleError(path, f"{name} does not support '{op}'; use one of: {', '.join(field.ops)}")
    value = _parse_value(field, name, op, node.get("value"), "value" in node, path)
    return _FieldCondition(path, name, field, key, op, value)


def _parse_value(field: RuleField, name: str, op: str, value: Any, given: bool, path: str) -> Any:
    kind = OPERATORS[op].value
    if kind is ValueKind.NONE:
        if given and value is not None:
            raise RuleError(path, f"'{op}' takes no value")
        return None
    if not given or value is None:
        raise RuleError(path, f"'{op}' needs a value")
    if kind is ValueKind.DAYS:
        if not _is_int(value) or not 1 <= value <= MAX_DAYS:
            raise RuleError(path, f"'{op}' needs a whole number of days between 1 and {MAX_DAYS}")
        return int(value)
    noun = _noun(field, op)
    if kind is ValueKind.LIST:
        if not isinstance(value, list) or not value:
            raise RuleError(path, f"'{op}' needs a non-empty list of {noun}s")
        if len(value) > MAX_LIST_VALUES:
            raise RuleError(path, f"'{op}' takes at most {MAX_LIST_VALUES} values")
        return tuple(
            _scalar(field, name, op, v, path, f"'{op}' needs a list of {noun}s") for v in value
        )
    if kind is ValueKind.PAIR:
        message = f"'{op}' needs a list of two {noun}s"
        if not isinstance(value, list) or len(value) != 2:
            raise RuleError(path, message)
        low, high = (_scalar(field, name, op, v, path, message) for v in value)
        if _bound(low, upper=False) > _bound(high, upper=True):
            raise RuleError(path, f"'{op}' needs the lower bound first")
        return (low, high)
    return _scalar(field, name, op, value, path, f"'{op}' needs a {noun}")


def _noun(field: RuleField, op: str) -> str:
    if field.type is FieldType.DATETIME:
        return "date"
    if field.type in (FieldType.INTEGER, FieldType.DECIMAL):
        return "number"
    if field.type is FieldType.ATTRIBUTE:
        if op in ("gt", "gte", "lt", "lte", "between"):
            return "number"
        if op in ("contains", "starts_with"):
            return "text value"
        return "text, number or true/false value"
    return "text value"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A JSON number the databases can compare: finite, and within 64-bit integers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and abs(value) <= _MAX_NUMBER


_MAX_NUMBER = 2**63 - 1
#: Dates and times a rule may name: a day either side stays within Python's calendar (rules
#: add a day to the end of a day, and time zones shift by up to one).
_MIN_WHEN = dt.date(1, 1, 2)
_MAX_WHEN = dt.date(9999, 12, 30)


def _scalar(field: RuleField, name: str, op: str, value: Any, path: str, message: str) -> Any:
    type_ = field.type
    if isinstance(value, int | float) and not isinstance(value, bool) and not _is_number(value):
        raise RuleError(path, f"{value!r} is out of range (numbers up to {_MAX_NUMBER:,})")
    if type_ in (FieldType.TEXT, FieldType.CHOICE) or (
        type_ is FieldType.ATTRIBUTE and op in ("contains", "starts_with")
    ):
        if not isinstance(value, str):
            raise RuleError(path, message)
        if len(value) > MAX_TEXT:
            raise RuleError(path, f"'{op}' values are at most {MAX_TEXT} characters")
        _no_nul(value, path)
        if not value:
            if op in ("contains", "starts_with"):
                raise RuleError(path, f"'{op}' needs a non-empty text value")
            raise RuleError(path, _EMPTY_VALUE)
        if type_ is FieldType.CHOICE and value not in dict(field.choices):
            allowed = ", ".join(c for c, _ in field.choices)
            raise RuleError(path, f"{value!r} is not a {name} (use one of: {allowed})")
        return value
    if type_ is FieldType.INTEGER:
        if not _is_number(value):
            raise RuleError(path, message)
        if isinstance(value, float):
            if not value.is_integer():
                raise RuleError(path, f"{name} takes whole numbers")
            value = int(value)
        low, high = _column_range(field)
        if not low <= value <= high:
            raise RuleError(path, f"{value} is out of range for {name} ({low:,} to {high:,})")
        return value
    if type_ is FieldType.DECIMAL:
        if not _is_number(value):
            raise RuleError(path, message)
        low, high = _column_range(field)
        if not low <= value <= high:
            raise RuleError(path, f"{value} is out of range for {name} ({low:,} to {high:,})")
        return Decimal(str(value))
    if type_ is FieldType.DATETIME:
        return _parse_when(value, path, message)
    # ATTRIBUTE
    if op in ("gt", "gte", "lt", "lte", "between"):
        if not _is_number(value):
            raise RuleError(path, message)
        return value
    if isinstance(value, bool) or _is_number(value):
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise RuleError(path, f"'{op}' values are at most {MAX_TEXT} characters")
        if not value:
            raise RuleError(path, _EMPTY_VALUE)
        return _no_nul(value, path)
    raise RuleError(path, message)


#: An empty text value is a missing one (``is_set`` is false for it): say how to ask for that.
_EMPTY_VALUE = "an empty value is a missing one: use 'is_not_set' (or 'is_set') for it"


def _column_range(field: RuleField) -> tuple[int | Decimal, int | Decimal]:
    """The values the field's column can hold, so that a comparison never falls outside it
    (Django turns such a comparison into always-true or always-false, before any NULL test).
    Integers: PostgreSQL's column range (the narrowest of the databases); decimals: their
    digits."""
    column = _model_field(field)
    if isinstance(column, DecimalField):
        bound = Decimal(10) ** (column.max_digits - column.decimal_places) - 1
        return -bound, bound
    low, high = BaseDatabaseOperations.integer_field_ranges[column.get_internal_type()]
    return low, high


def _model_field(field: RuleField):
    model, name = (
        (CustomerMetrics, field.lookup.removeprefix(_METRICS_PREFIX))
        if field.lookup.startswith(_METRICS_PREFIX)
        else (Customer, field.lookup)
    )
    return model._meta.get_field(name)


def _no_nul(value: str, path: str) -> str:
    if "\x00" in value:
        raise RuleError(path, "null characters are not allowed")
    return value


def _parse_when(value: Any, path: str, message: str) -> dt.date | dt.datetime:
    if not isinstance(value, str):
        raise RuleError(path, message)
    text = value.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = None
        else:
            moment = dt.datetime.fromisoformat(text)
            day = moment.date()
    except ValueError:
        raise RuleError(
            path, f"{value!r} is not a date (write YYYY-MM-DD or an ISO 8601 date and time)"
        ) from None
    if not _MIN_WHEN <= day <= _MAX_WHEN:
        raise RuleError(path, f"{value!r} is out of range (dates from {_MIN_WHEN} to {_MAX_WHEN})")
    if moment is None:
        return day
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    return moment


def _day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(
        dt.datetime.combine(day, dt.time.min), timezone.get_default_timezone()
    )


def _bound(value: Any, *, upper: bool) -> Any:
    """A comparable form of a between bound (dates become the instant they stand for)."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return (
            _day_start(value + dt.timedelta(days=1)) - dt.timedelta(microseconds=1)
            if upper
            else _day_start(value)
        )
    return value


def _parse_event(node: dict, path: str) -> _EventCondition:
    type_ = node["event"]
    if not isinstance(type_, str) or not type_.strip():
        raise RuleError(path, "'event' must be an event type")
    if len(type_) > EVENT_TYPE_MAX_LENGTH:
        raise RuleError(path, f"event types are at most {EVENT_TYPE_MAX_LENGTH} characters")
    _no_nul(type_, path)
    op = node.get("op")
    if op is None:
        raise RuleError(path, f"event {type_}: 'op' is missing")
    if op not in EVENT_OPERATORS:
        raise RuleError(
            path, f"{op!r} is not an event operator (use one of: {', '.join(EVENT_OPERATORS)})"
        )
    count = node.get("count")
    if op == "never":
        if count is not None:
            raise RuleError(path, "'never' takes no count")
        count = 1
    elif not _is_int(count) or not 1 <= count <= MAX_EVENT_COUNT:
        raise RuleError(path, f"'{op}' needs a count: a whole number of at least 1")
    days = node.get("days")
    if days is not None and (not _is_int(days) or not 1 <= days <= MAX_DAYS):
        raise RuleError(path, f"'days' must be a whole number between 1 and {MAX_DAYS}")
    return _EventCondition(path, type_, op, count, days)


def _parse_segment(node: dict, path: str) -> _SegmentCondition:
    slug = node["segment"]
    if not isinstance(slug, str) or not slug or len(slug) > SLUG_MAX_LENGTH or "\x00" in slug:
        raise RuleError(path, "'segment' must be a segment's slug")
    op = node.get("op")
    if op not in SEGMENT_OPERATORS:
        raise RuleError(path, f"segment {slug}: 'op' must be 'in' or 'not_in'")
    return _SegmentCondition(path, slug, op)


def _walk(node: _Node) -> Iterator[_Node]:
    yield node
    if isinstance(node, _Group):
        for child in node.children:
            yield from _walk(child)


# --- Segment references ------------------------------------------------------------------------


def rule_referenced_segments(rule: Any) -> set[str]:
    """The slugs a rule's segment conditions name. Tolerant: ignores whatever is malformed."""
    found: set[str] = set()
    stack = [rule]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            slug = node.get("segment")
            if isinstance(slug, str) and slug:
                found.add(slug)
            for key in _GROUP_KEYS:
                if isinstance(node.get(key), list):
                    stack.extend(node[key])
    return found


def rule_find_cycle(slug: str, rule: Any, graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A path of slugs ``[slug, ..., slug]`` if saving ``rule`` as ``slug`` closes a cycle.

    ``graph`` maps each other segment's slug to the slugs its rule references (the current
    edges of ``slug`` itself are ignored: ``rule`` replaces them).
    """
    edges = {k: set(v) for k, v in graph.items() if k != slug}
    edges[slug] = rule_referenced_segments(rule)
    # Depth-first search from slug back to slug; `parents` rebuilds the path.
    stack: list[tuple[str, Iterator[str]]] = [(slug, iter(sorted(edges[slug])))]
    on_path = [slug]
    seen: set[str] = set()
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.pop()
            continue
        if child == slug:
            return [*on_path, slug]
        if child in seen:
            continue
        seen.add(child)
        stack.append((child, iter(sorted(edges.get(child, ())))))
        on_path.append(child)
    return None


def rule_segment_graph(*, exclude: str | None = None) -> dict[str, set[str]]:
    """Each rule segment's slug and the slugs its rule references (one query)."""
    rows = Segment.objects.filter(kind=SegmentKind.RULE).values_list("slug", "rule")
    return {slug: rule_referenced_segments(rule) for slug, rule in rows if slug != exclude}


def rule_validate_references(rule: Any, *, slug: str | None = None) -> dict[str, int]:
    """Structure, then the database: every referenced segment exists, and saving ``rule`` as
    segment ``slug`` closes no cycle. Returns ``{slug: segment id}``. Raises ``RuleError``."""
    tree = _parse(rule)
    ids = _segment_ids(tree)
    if slug is not None and ids:
        cycle = rule_find_cycle(slug, rule, rule_segment_graph(exclude=slug))
        if cycle:
            first_hop = cycle[1]
            path = next(
                n.path
                for n in _walk(tree)
                if isinstance(n, _SegmentCondition) and n.slug == first_hop
            )
            raise RuleError(path, f"segment reference cycle: {' -> '.join(cycle)}")
    return ids


def _segment_ids(tree: _Group) -> dict[str, int]:
    conditions = [n for n in _walk(tree) if isinstance(n, _SegmentCondition)]
    if not conditions:
        return {}
    ids = dict(
        Segment.objects.filter(slug__in={c.slug for c in conditions}).values_list("slug", "id")
    )
    for condition in conditions:
        if condition.slug not in ids:
            raise RuleError(condition.path, f"segment {condition.slug!r} does not exist")
    return ids


# --- Compilation -------------------------------------------------------------------------------


def rule_compile(rule: Any, *, now: dt.datetime | None = None, event_summary: bool = True) -> Q:
    """A ``Q`` over ``Customer`` for the rule; ``now`` anchors the day windows.

    ``event_summary=False`` reads events directly even where the event summary could serve
    (same customers; no query to read the summary's cutoff).
    """
    tree, ids, cutoff = _prepare(rule, event_summary)
    compiler = _Compiler(now or timezone.now(), ids, connection.vendor, cutoff)
    return compiler.node(tree)


def _prepare(rule: Any, event_summary: bool) -> tuple[_Group, dict[str, int], Any]:
    """The parsed rule, its segments' ids, and the event summary's cutoff where it serves."""
    tree = _parse(rule)
    ids = _segment_ids(tree)
    cutoff = None
    if event_summary and rule_has_event_conditions(tree):
        # Imported here: the services import this module.
        from segmentation.services.event_summary import event_summary_cutoff

        cutoff = event_summary_cutoff()
    return tree, ids, cutoff


@dataclass(frozen=True)
class RuleMatches:
    """The customers a rule matches, as two querysets over the same compiled conditions.

    ``ids``: one column, ``cid`` (the customer id), for counting and for materializing
    memberships; ``customers``: the ``Customer`` rows, for listing a sample.
    """

    ids: QuerySet
    customers: QuerySet


def rule_matches(
    rule: Any, *, now: dt.datetime | None = None, event_summary: bool = True
) -> RuleMatches:
    """The customers ``rule`` matches, read from the cheapest table.

    On PostgreSQL, a rule that only a customer with a metrics row can match (a positive
    metrics condition in every branch, see ``_needs_metrics_row``) and that names no customer
    field is evaluated over ``CustomerMetrics`` alone: the same customers as
    ``Customer.objects.filter(rule_compile(rule))``, without joining the customers. Metrics rows
    carry no foreign key; a customer deleted since the last recompute is excluded through the
    stale list (``_live_metrics``). Otherwise the query is over ``Customer``, as
    ``rule_compile`` gives it.
    """
    tree, ids, cutoff = _prepare(rule, event_summary)
    now = now or timezone.now()
    if connection.vendor == "postgresql" and _metrics_only(tree) and _needs_metrics_row(tree):
        q = _Compiler(now, ids, connection.vendor, cutoff, metrics_root=True).node(tree)
        matching = CustomerMetrics.objects.filter(q, _live_metrics())
        return RuleMatches(
            ids=matching.values(cid=F("customer_id")),
            customers=Customer.objects.filter(pk__in=matching.values("customer_id")),
        )
    customers = Customer.objects.all()
    alias = None
    relevant = _relevant_metrics(tree, _Compiler(now, ids, connection.vendor, cutoff))
    if relevant is not None:
        alias = _METRICS_ALIAS
        customers = customers.annotate(**{alias: FilteredRelation("metrics", condition=relevant)})
    compiler = _Compiler(now, ids, connection.vendor, cutoff, metrics_alias=alias)
    customers = customers.filter(compiler.node(tree))
    return RuleMatches(ids=customers.values(cid=F("pk")), customers=customers)


_METRICS_ALIAS = "rule_metrics"


def _relevant_metrics(tree: _Group, compiler: _Compiler) -> Q | None:
    """For a rule over the customers whose metrics conditions all need a metrics row: the
    metrics rows that can make any of them true (the OR of them all).

    Joining only those rows (a ``FilteredRelation``: the condition goes into the join, and
    PostgreSQL applies it while scanning the metrics) changes no condition's value: a row
    that satisfies none of them makes each false, as a missing row does. The join then hashes
    the few rows the rule can use instead of a row per customer ("subscribed and (pro buyer
    or active this week)": 40% faster at a million customers). None when there is no metrics
    condition, or a negative one (``neq``, ``not_in``, ``is_not_set``: true without a row).
    """
    leaves = [
        n
        for n in _walk(tree)
        if isinstance(n, _FieldCondition) and n.field.lookup.startswith(_METRICS_PREFIX)
    ]
    if not leaves or any(leaf.op not in _NEEDS_ROW_OPS for leaf in leaves):
        return None
    return _any_of(compiler.field(leaf) for leaf in leaves)


def _cost(node: _Node) -> int:
    """A rough rank of how costly a condition is to test per customer, for ordering."""
    if isinstance(node, _FieldCondition):
        return 1 if node.field.type is FieldType.ATTRIBUTE else 0
    if isinstance(node, _Group):
        return max((_cost(child) for child in node.children), default=0)
    return 2  # event and segment conditions: a hashed subquery probe, or a join


def _metrics_only(tree: _Group) -> bool:
    """No condition on a customer field or attribute anywhere in the rule."""
    return not any(
        isinstance(n, _FieldCondition) and not n.field.lookup.startswith(_METRICS_PREFIX)
        for n in _walk(tree)
    )


#: Metrics conditions false for a customer without a metrics row: every comparison with a
#: missing value is false, and ``is_set`` tests IS NOT NULL (every metrics field is declared
#: nullable, see ``_metric``); not the negations.
_NEEDS_ROW_OPS = frozenset(
    {
        "is_set",
        "eq",
        "in",
        "contains",
        "starts_with",
        "gt",
        "gte",
        "lt",
        "lte",
        "between",
        "before",
        "after",
        "within_last_days",
        "not_within_last_days",
    }
)
_METRICS_PREFIX = "metrics__"


def _needs_metrics_row(node: _Node) -> bool:
    """Whether the node is false for every customer without a metrics row."""
    if isinstance(node, _FieldCondition):
        return node.field.lookup.startswith(_METRICS_PREFIX) and node.op in _NEEDS_ROW_OPS
    if isinstance(node, _Group):
        if node.kind == "all":
            return any(_needs_metrics_row(child) for child in node.children)
        return bool(node.children) and all(_needs_metrics_row(c) for c in node.children)
    return False


#: Up to this many stale customers, the metrics-only guard is a hashed ``NOT IN``.
_STALE_HASHED_MAX = 10_000


def _live_metrics() -> Q:
    """Metrics rows whose customer exists.

    Every deletion of a customer puts their id on the stale list (a trigger, migration 0007),
    and only the metrics recompute takes ids off it, deleting the rows of the customers that
    are gone in the same statement; a TRUNCATE of the customers empties the metrics
    (migration 0008). So a metrics row without a customer is on the stale list, which is
    usually short (one query reads how short, up to a bound): then ``NOT IN`` a hashed
    subquery over it, probed per row in a fraction of a microsecond (``NOT EXISTS`` was
    planned as an index probe per row, 30% of a metrics-only count: the list is mostly
    empty and never analyzed). A longer list (a mass deletion not yet recomputed) might not
    fit the memory a hash gets, where ``NOT IN`` degrades to a scan per row; ``NOT EXISTS``
    then, which PostgreSQL can always plan as an anti-join.
    """
    deleted = StaleCustomerMetrics.objects.exclude(
        Exists(Customer.objects.filter(pk=OuterRef("customer_id")))
    )
    listed = StaleCustomerMetrics.objects.all()[: _STALE_HASHED_MAX + 1].count()
    if listed <= _STALE_HASHED_MAX:
        return ~Q(pk__in=deleted.values("customer_id"))
    return ~Exists(deleted.filter(customer_id=OuterRef("pk")))


def rule_has_event_conditions(rule: Any) -> bool:
    """Whether the rule (JSON, or a parsed tree) has an event condition anywhere."""
    tree = rule if isinstance(rule, _Group) else _parse(rule)
    return any(isinstance(n, _EventCondition) for n in _walk(tree))


# Always true / always false, which Django folds away (a bare Q() would vanish inside an OR).
_NOTHING = Q(pk__in=[])
_EVERYTHING = ~Q(pk__in=[])


class _Compiler:
    def __init__(
        self,
        now: dt.datetime,
        segment_ids: dict[str, int],
        vendor: str,
        cutoff: Any = None,
        *,
        metrics_root: bool = False,
        metrics_alias: str | None = None,
    ):
        self.now = now
        self.segment_ids = segment_ids
        self.vendor = vendor
        self.cutoff = cutoff  # event_summary.SummaryCutoff, or None: read the events only
        # Compile for a query over CustomerMetrics (metrics fields only; its pk is the
        # customer id, so the event and segment conditions read the same).
        self.metrics_root = metrics_root
        # Metrics fields through this FilteredRelation of the customers' metrics instead.
        self.metrics_alias = metrics_alias

    def path(self, f: RuleField) -> str:
        if self.metrics_root:
            assert f.lookup.startswith(_METRICS_PREFIX), f.name
            return f.lookup.removeprefix(_METRICS_PREFIX)
        if self.metrics_alias and f.lookup.startswith(_METRICS_PREFIX):
            return f"{self.metrics_alias}__{f.lookup.removeprefix(_METRICS_PREFIX)}"
        return f.lookup

    def node(self, node: _Node) -> Q:
        if isinstance(node, _Group):
            return self.group(node)
        if isinstance(node, _FieldCondition):
            if node.field.type is FieldType.ATTRIBUTE:
                return self.attribute(node)
            return self.field(node)
        if isinstance(node, _EventCondition):
            return self.event(node)
        return self.segment(node)

    def group(self, group: _Group) -> Q:
        # Cheapest first: PostgreSQL evaluates the operands of a nested AND/OR in the order
        # written and stops at the first that decides it (same result in any order).
        children = sorted(group.children, key=_cost)
        parts = [self.node(child) for child in children]
        if not parts:
            return _EVERYTHING if group.kind == "all" else _NOTHING
        q = parts[0]
        for part in parts[1:]:
            q = (q & part) if group.kind == "all" else (q | part)
        return q

    # Customer and metrics fields: Django string lookups, so that Django promotes the metrics
    # join to LEFT OUTER under OR/NOT and guards negations against NULLs.

    def field(self, c: _FieldCondition) -> Q:
        f, op, value, path = c.field, c.op, c.value, self.path(c.field)
        if op == "is_set":
            return self.present(f, path)
        if op == "is_not_set":
            return ~self.present(f, path)
        if op in ("neq", "not_in"):
            positive = self.field(replace(c, op="eq" if op == "neq" else "in"))
            if f.nullable:
                positive &= Q(**{f"{path}__isnull": False})
            return ~positive
        if op == "eq":
            if f.case_insensitive:
                return Q(_Lookup(_CaseFold(F(path)), "exact", value.lower()))
            return Q(**{path: value})
        if op == "in":
            if f.case_insensitive:
                return Q(_Lookup(_CaseFold(F(path)), "in", sorted({v.lower() for v in value})))
            return Q(**{f"{path}__in": sorted(set(value))})
        if op in ("contains", "starts_with"):
            # lower(email) LIKE 'abc%' can use the lower(email) text_pattern_ops index.
            lookup = "contains" if op == "contains" else "startswith"
            return Q(_Lookup(_CaseFold(F(path)), lookup, value.lower()))
        if op in ("gt", "gte", "lt", "lte"):
            return Q(**{f"{path}__{op}": value})
        if op == "between":
            low, high = value
            if f.type is FieldType.DATETIME:
                return self.lower_bound(path, low) & self.upper_bound(path, high)
            return Q(**{f"{path}__range": (low, high)})
        if op == "before":
            return Q(
                **{f"{path}__lt": value if isinstance(value, dt.datetime) else _day_start(value)}
            )
        if op == "after":
            if isinstance(value, dt.datetime):
                return Q(**{f"{path}__gt": value})
            return Q(**{f"{path}__gte": _day_start(value + dt.timedelta(days=1))})
        if op == "within_last_days":
            return Q(**{f"{path}__gte": self.now - dt.timedelta(days=value)})
        if op == "not_within_last_days":
            return Q(**{f"{path}__lt": self.now - dt.timedelta(days=value)})
        raise AssertionError(op)  # pragma: no cover - the parser allows no other operator

    @staticmethod
    def lower_bound(path: str, value: dt.date) -> Q:
        if isinstance(value, dt.datetime):
            return Q(**{f"{path}__gte": value})
        return Q(**{f"{path}__gte": _day_start(value)})

    @staticmethod
    def upper_bound(path: str, value: dt.date) -> Q:
        if isinstance(value, dt.datetime):
            return Q(**{f"{path}__lte": value})
        return Q(**{f"{path}__lt": _day_start(value + dt.timedelta(days=1))})

    @staticmethod
    def present(f: RuleField, path: str) -> Q:
        q = Q(**{f"{path}__isnull": False}) if f.nullable else None
        if f.type is FieldType.TEXT:
            not_empty = ~Q(**{path: ""})
            q = not_empty if q is None else q & not_empty
        return q if q is not None else _EVERYTHING

    # Attributes: JSON values; every comparison is guarded by the value's JSON type, which
    # makes each condition TRUE or FALSE, never NULL, so negation is plain NOT.

    def attribute(self, c: _FieldCondition) -> Q:
        key, op, value = c.key, c.op, c.value
        assert key is not None
        if op == "is_set":
            # Present, not null and not the empty string, as for every field.
            return ~_is_json_type(key, "null") & ~self.attribute(replace(c, op="eq", value=""))
        if op == "is_not_set":
            return ~self.attribute(replace(c, op="is_set"))
        if op == "neq":
            return ~self.attribute(replace(c, op="eq"))
        if op == "not_in":
            return ~self.attribute(replace(c, op="in"))
        if op in ("eq", "in"):
            values = (value,) if op == "eq" else value
            if self.vendor == "postgresql":
                # jsonb containment is exact JSON equality for scalars, and can use a GIN
                # index on attributes.
                return _any_of(Q(attributes__contains={key: v}) for v in _dedupe(values))
            by_type: dict[str, list[Any]] = {}
            for v in _dedupe(values):
                by_type.setdefault(_json_type(v), []).append(v)
            return _any_of(
                _is_json_type(key, t)
                & Q(
                    _Lookup(
                        _key(key), "exact" if len(vs) == 1 else "in", vs[0] if len(vs) == 1 else vs
                    )
                )
                for t, vs in by_type.items()
            )
        if op in ("contains", "starts_with"):
            lookup = "contains" if op == "contains" else "startswith"
            text = _CaseFold(KeyTextTransform(key, "attributes"))
            return _is_json_type(key, "string") & Q(_Lookup(text, lookup, value.lower()))
        if op in ("gt", "gte", "lt", "lte"):
            return _is_json_type(key, "number") & Q(_Lookup(_key(key), op, value))
        if op == "between":
            low, high = value
            return (
                _is_json_type(key, "number")
                & Q(_Lookup(_key(key), "gte", low))
                & Q(_Lookup(_key(key), "lte", high))
            )
        raise AssertionError(op)  # pragma: no cover

    # Events: positive conditions are non-correlated IN subqueries (hash semi-joins); negative
    # ones NOT EXISTS (hash anti-joins). With the event summary (PostgreSQL), conditions over
    # all time and "at least once in d days" read it, plus the events after its cutoff; only
    # "k >= 2 times in the last d days" counts the events in the window.

    def events(self, c: _EventCondition) -> QuerySet:
        qs = Event.objects.filter(type=c.type)
        if c.days is not None:
            qs = qs.filter(occurred_at__gte=self.now - dt.timedelta(days=c.days))
        return qs

    def event(self, c: _EventCondition) -> Q:
        if self.cutoff is not None and (c.days is None or c.count == 1 or c.op == "never"):
            return self.summarized_event(c)
        events = self.events(c)
        if c.op == "never" or (c.op == "fewer_than" and c.count == 1):
            return Q(~Exists(events.filter(customer_id=OuterRef("pk"))))
        if c.count == 1:
            return Q(pk__in=events.values("customer_id"))
        repeaters = (
            events.values("customer_id")
            .annotate(n=Count("*"))
            .filter(n__gte=c.count)
            .values("customer_id")
        )
        if c.op == "at_least":
            return Q(pk__in=repeaters)
        return Q(_NotInSubquery(repeaters))

    def summarized_event(self, c: _EventCondition) -> Q:
        """The condition from the summary (events up to the cutoff) and the newer events.

        "At least k" holds when the summary alone has k, or when the customer has newer events
        and the summary's count plus theirs reaches k; the negative operators negate that.
        """
        count = 1 if c.op == "never" else c.count
        summary = CustomerEventSummary.objects.filter(type=c.type)
        newer = None
        if self.cutoff.newer:
            newer = self.events(c).filter(pk__gt=self.cutoff.last_event_id)
        if c.days is not None:  # count == 1 here: "an event since ..." is "the last one since"
            summary = summary.filter(last_at__gte=self.now - dt.timedelta(days=c.days))
        if count > 1:
            summary = summary.filter(count__gte=count)
            if newer is not None:
                before = CustomerEventSummary.objects.filter(
                    customer_id=OuterRef("customer_id"), type=c.type
                ).values("count")
                newer = (
                    newer.values("customer_id")
                    .annotate(n=Count("*"))
                    .annotate(total=F("n") + Coalesce(Subquery(before), 0))
                    .filter(total__gte=count)
                )
        positive = c.op == "at_least"
        if positive:
            q = Q(pk__in=summary.values("customer_id"))
            if newer is not None:
                q |= Q(pk__in=newer.values("customer_id"))
            return q
        q = Q(~Exists(summary.filter(customer_id=OuterRef("pk"))))
        if newer is not None:
            if count > 1:
                q &= Q(_NotInSubquery(newer.values("customer_id")))
            else:
                q &= Q(~Exists(newer.filter(customer_id=OuterRef("pk"))))
        return q

    def segment(self, c: _SegmentCondition) -> Q:
        members = SegmentMembership.objects.filter(
            segment_id=self.segment_ids[c.slug], left_at__isnull=True
        )
        if c.op == "in":
            return Q(pk__in=members.values("customer_id"))
        return Q(~Exists(members.filter(customer_id=OuterRef("pk"))))


def _dedupe(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if not any(type(v) is type(s) and v == s for s in seen):
            seen.append(v)
    return seen


def _any_of(parts: Iterable[Q]) -> Q:
    result: Q | None = None
    for part in parts:
        result = part if result is None else result | part
    return result if result is not None else _NOTHING


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string"


def _key(key: str) -> KeyTransform:
    return KeyTransform(key, F("attributes"))


def _is_json_type(key: str, json_type: str) -> Q:
    return Q(_Lookup(_JsonType(key), "exact", json_type))


class _Lookup(Expression):
    """A lookup built when the query resolves it, once the left side's field is known.

    Lets a condition apply ``exact``/``in``/``icontains``... to an expression (``Lower(F(...))``,
    a JSON key whose name could not be written as a ``__`` path) inside a ``Q``.
    """

    conditional = True
    output_field = BooleanField()

    def __init__(self, lhs: Expression, lookup_name: str, rhs: Any):
        super().__init__()
        self.lhs = lhs
        self.lookup_name = lookup_name
        self.rhs = rhs

    def resolve_expression(
        self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False
    ):
        lhs = self.lhs.resolve_expression(query, allow_joins, reuse, summarize, for_save)
        lookup_class = lhs.get_lookup(self.lookup_name)
        return lookup_class(lhs, self.rhs)


class _CaseFold(Func):
    """``lower()`` that folds every letter on every database. SQLite's own folds only A-Z
    (``É`` stays ``É``), so there it is Python's ``str.lower``, registered on each connection
    as ``abtest_lower`` (``segmentation.apps``)."""

    function = "LOWER"
    output_field = TextField()

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, function="ABTEST_LOWER", **extra)


class _JsonType(Func):
    """The JSON type of ``attributes -> key``: string, number, boolean, object, array or null
    (null also when the key is absent): never SQL NULL."""

    output_field = CharField()

    def __init__(self, key: str):
        super().__init__(F("attributes"))
        self.key = key

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError("attribute conditions need PostgreSQL or SQLite")

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"COALESCE(jsonb_typeof({sql} -> %s), 'null')", (*params, self.key)

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        path = compile_json_path([self.key])
        kind = f"json_type({sql}, %s)"
        return (
            f"COALESCE(CASE {kind} WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' "
            f"WHEN 'text' THEN 'string' WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' "
            f"ELSE {kind} END, 'null')",
            (*params, path, *params, path),
        )


class _NotInSubquery(Expression):
    """``NOT EXISTS (SELECT 1 FROM (<subquery>) s WHERE s.customer_id = customer.id)``.

    Same meaning as ``NOT (id IN (subquery))`` for a subquery without NULLs, but PostgreSQL
    plans it as a hash anti-join even when the subquery is grouped; ``NOT IN`` over a subquery
    too big to hash in work_mem becomes a nested scan per customer.
    """

    conditional = True
    output_field = BooleanField()

    def __init__(self, queryset: QuerySet, lhs: Expression | None = None):
        super().__init__()
        self.queryset = queryset
        self.lhs = lhs if lhs is not None else F("pk")
        self.subquery = Subquery(queryset)

    def get_source_expressions(self):
        return [self.lhs, self.subquery]

    def set_source_expressions(self, exprs):
        self.lhs, self.subquery = exprs

    def resolve_expression(
        self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False
    ):
        clone = self.copy()
        clone.lhs = self.lhs.resolve_expression(query, allow_joins, reuse, summarize, for_save)
        clone.subquery = self.subquery.resolve_expression(
            query, allow_joins, reuse, summarize, for_save
        )
        return clone

    def as_sql(self, compiler, connection, **extra):
        lhs_sql, lhs_params = compiler.compile(self.lhs)
        sub_sql, sub_params = compiler.compile(self.subquery)
        alias = connection.ops.quote_name("_repeaters")
        column = connection.ops.quote_name("customer_id")
        sql = f"NOT EXISTS (SELECT 1 FROM {sub_sql} {alias} WHERE {alias}.{column} = {lhs_sql})"
        return sql, (*sub_params, *lhs_params)
