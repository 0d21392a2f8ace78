"""Segments: create, update, delete, refresh membership, and static membership by hand or CSV.

Refresh is set-based: the target members come from one query (the compiled rule, the RFM label
the metrics pipeline computed, or nothing for static segments); leavers get ``left_at`` in one
UPDATE, joiners a new row in one INSERT ... SELECT, so history keeps a row per stay.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

from django.core.exceptions import EmptyResultSet
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.text import slugify

from abtest.errors import ServiceError
from segmentation.models import (
    Customer,
    CustomerMetrics,
    Segment,
    SegmentKind,
    SegmentMembership,
    SegmentSizeSnapshot,
)
from segmentation.rules import (
    RuleError,
    rule_matches,
    rule_referenced_segments,
    rule_validate_references,
)

#: Identifiers per query when resolving or changing static membership (SQLite allows 32766
#: parameters per statement, PostgreSQL 65535).
CHUNK = 5000
#: Rows a static-segment CSV may have.
CSV_MAX_ROWS = 1_000_000
#: PostgreSQL settings for a refresh's transaction only (SET LOCAL): the anti-joins between a
#: large target set and the current members hash both sides; 4MB would spill to disk.
#: JIT compilation costs more than it saves on these statements (~10% of a refresh's
#: segments at 1M customers). Event windows count runs of sorted events rather than hashing
#: them, as previews do (``segmentation.selectors.PREVIEW_POSTGRES_SETTINGS``; "5+ page views
#: in 30 days, never bought" at 1M customers: 1.41 -> 0.56 s, other segments unchanged).
POSTGRES_SETTINGS: dict[str, str] = {"work_mem": "128MB", "jit": "off", "enable_hashagg": "off"}
NAME_MAX_LENGTH = 200
SLUG_MAX_LENGTH = 200


class SegmentRuleInvalid(ServiceError):
    """The rule is invalid; ``path`` names the condition (``all[2].any[0]``)."""

    def __init__(self, error: RuleError):
        super().__init__(str(error), field="rule", code="invalid_rule")
        self.path = error.path
        self.rule_message = error.message


# --- Create, update, delete ----------------------------------------------------------------


def segment_create(
    *,
    name: str,
    kind: str,
    rule: dict | None = None,
    description: str = "",
    slug: str | None = None,
    created_by: Any = None,
) -> Segment:
    """A new segment (empty until its first refresh, or until customers are added by hand).

    ``rule``: for ``rule`` segments the rule tree; for ``rfm`` segments
    ``{"r": [lo, hi], "f": [lo, hi]}`` with 1 <= lo <= hi <= 5 (placed after the others in
    matching order); none for ``static`` segments.
    """
    name = _clean_name(name)
    if kind not in SegmentKind.values:
        raise ServiceError(f"Unknown segment kind {kind!r}.", field="kind")
    with transaction.atomic():
        if slug is not None:
            slug = _clean_slug(slug)
            if Segment.objects.filter(slug=slug).exists():
                raise ServiceError(f"The slug {slug!r} is taken.", field="slug", code="taken")
        else:
            slug = _unique_slug(name)
        rule = _clean_rule(kind=kind, rule=rule, slug=slug)
        position = 0
        if kind == SegmentKind.RFM:
            last = Segment.objects.filter(kind=SegmentKind.RFM).order_by("-position").first()
            position = last.position + 1 if last else 0
        try:
            with transaction.atomic():
                return Segment.objects.create(
                    name=name,
                    slug=slug,
                    kind=kind,
                    rule=rule,
                    description=description or "",
                    position=position,
                    created_by=created_by,
                )
        except IntegrityError:
            if not Segment.objects.filter(slug=slug).exists():
                raise  # not the slug: a bug, not the marketer's mistake
            # A concurrent create took the slug.
            raise ServiceError(f"The slug {slug!r} is taken.", field="slug", code="taken") from None


def segment_update(
    *,
    segment: Segment,
    name: str | None = None,
    description: str | None = None,
    rule: dict | None = None,
    slug: str | None = None,
) -> Segment:
    """Change what is given (``None``: unchanged). The kind never changes. A slug that another
    rule references cannot change; a rule is validated (and checked for cycles) first."""
    fields: list[str] = []
    with transaction.atomic():
        segment = Segment.objects.select_for_update().get(pk=segment.pk)
        if name is not None:
            segment.name = _clean_name(name)
            fields.append("name")
        if description is not None:
            segment.description = description
            fields.append("description")
        if slug is not None and slug != segment.slug:
            slug = _clean_slug(slug)
            if Segment.objects.filter(slug=slug).exclude(pk=segment.pk).exists():
                raise ServiceError(f"The slug {slug!r} is taken.", field="slug", code="taken")
            users = _referencing(segment.slug)
            if users:
                raise ServiceError(
                    f"Segment {segment.slug!r} is used by the rules of {_names(users)}; "
                    "its slug cannot change.",
                    field="slug",
                    code="referenced",
                )
            if segment.kind == SegmentKind.RFM:
                # The metrics name their RFM segment by slug: follow the rename at once, so that
                # refreshing this segment before the next recompute keeps its members.
                CustomerMetrics.objects.filter(rfm_segment=segment.slug).update(rfm_segment=slug)
            segment.slug = slug
            fields.append("slug")
        if rule is not None:
            if segment.kind == SegmentKind.STATIC:
                raise ServiceError("Static segments have no rule.", field="rule")
            segment.rule = _clean_rule(kind=segment.kind, rule=rule, slug=segment.slug)
            fields.append("rule")
        if fields:
            segment.save(update_fields=[*fields, "updated_at"])
    return segment


def segment_delete(*, segment: Segment) -> None:
    """Delete a segment and its history; refused while another rule references it."""
    with transaction.atomic():
        users = [s for s in _referencing(segment.slug) if s.pk != segment.pk]
        if users:
            raise ServiceError(
                f"Segment {segment.slug!r} is used by the rules of {_names(users)}; "
                "change those rules first.",
                code="referenced",
            )
        Segment.objects.filter(pk=segment.pk).delete()


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ServiceError("A segment needs a name.", field="name", code="required")
    if len(name) > NAME_MAX_LENGTH:
        raise ServiceError(
            f"Names are at most {NAME_MAX_LENGTH} characters.", field="name", code="too_long"
        )
    return name


#: Slugs the segment pages use as fixed addresses (``/segments/new/`` ...).
RESERVED_SLUGS = frozenset({"new", "rfm", "preview", "refresh"})


def _clean_slug(slug: str) -> str:
    slug = (slug or "").strip()
    if not slug or slugify(slug) != slug or len(slug) > SLUG_MAX_LENGTH:
        raise ServiceError(
            "A slug is lowercase letters, digits and hyphens.", field="slug", code="invalid"
        )
    if slug in RESERVED_SLUGS:
        raise ServiceError(
            f"{slug!r} is reserved for a page address; choose another slug.",
            field="slug",
            code="reserved",
        )
    return slug


def _unique_slug(name: str) -> str:
    base = (slugify(name) or "segment")[: SLUG_MAX_LENGTH - 8].strip("-") or "segment"
    taken = set(Segment.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    taken |= RESERVED_SLUGS
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def segment_definition_validate(*, kind: str, rule: dict | None, slug: str | None = None) -> dict:
    """Check a segment's kind and rule as ``segment_create``/``segment_update`` would (rule
    structure, referenced segments, cycles through ``slug``; RFM ranges; no rule for static
    segments) and return the rule to store. Raises ``ServiceError`` (``SegmentRuleInvalid``
    for a rule segment's rule, with ``.path``). For forms that save without the services."""
    if kind not in SegmentKind.values:
        raise ServiceError(f"Unknown segment kind {kind!r}.", field="kind")
    return _clean_rule(kind=kind, rule=rule, slug=slug)


def _clean_rule(*, kind: str, rule: dict | None, slug: str | None) -> dict:
    if kind == SegmentKind.STATIC:
        if rule:
            raise ServiceError("Static segments have no rule.", field="rule")
        return {}
    if kind == SegmentKind.RFM:
        return _clean_rfm_rule(rule)
    if rule is None:
        raise ServiceError("A rule segment needs a rule.", field="rule", code="required")
    try:
        rule_validate_references(rule, slug=slug)
    except RuleError as error:
        raise SegmentRuleInvalid(error) from error
    return rule


def _clean_rfm_rule(rule: dict | None) -> dict:
    message = 'An RFM rule is {"r": [lo, hi], "f": [lo, hi]} with 1 <= lo <= hi <= 5.'
    if not isinstance(rule, dict) or set(rule) != {"r", "f"}:
        raise ServiceError(message, field="rule")
    for key in ("r", "f"):
        bounds = rule[key]
        if (
            not isinstance(bounds, list | tuple)
            or len(bounds) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            or not 1 <= bounds[0] <= bounds[1] <= 5
        ):
            raise ServiceError(f"{key}: {message}", field="rule")
    return {"r": list(rule["r"]), "f": list(rule["f"])}


def _referencing(slug: str) -> list[Segment]:
    return [
        s
        for s in Segment.objects.filter(kind=SegmentKind.RULE).order_by("name")
        if slug in rule_referenced_segments(s.rule)
    ]


def _names(segments: Iterable[Segment]) -> str:
    return ", ".join(f"{s.name!r} ({s.slug})" for s in segments)


# --- Refresh -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRefreshResult:
    joined: int
    left: int
    size: int
    slug: str = ""
    seconds: float = 0.0
    error: str = ""


def segment_refresh(
    *, segment: Segment, now: dt.datetime | None = None, _rfm_targets: bool = False
) -> SegmentRefreshResult:
    """Bring the segment's m membership in line with its definition as of ``now``.

    Leavers get ``left_at = now`` (one UPDATE), joiners a new membership row (one INSERT ...
    SELECT); ``size``, ``refreshed_at`` and today's ``SegmentSizeSnapshot`` follow. Static
    segments only get their size and snapshot. Raises ``SegmentRuleInvalid`` for a broken rule.
    """
    now = now or timezone.now()
    started = time.perf_counter()
    with transaction.atomic():
        # The row lock serializes refreshes and static edits of one segment.
        segment = Segment.objects.select_for_update().get(pk=segment.pk)
        # The rule is evaluated as of ``now``; the history only moves forward: a refresh as of
        # an earlier moment than the last one (recompute_segments --as-of in the past) records
        # its joins and leaves at the last refresh's time, never before what is recorded.
        stamp = max(now, segment.refreshed_at) if segment.refreshed_at else now
        joined = left = 0
        if segment.kind != SegmentKind.STATIC:
            _postgres_settings()
            if _rfm_targets and segment.kind == SegmentKind.RFM:
                target_sql, target_params = _RFM_TARGET_SQL, (segment.slug,)
            else:
                target_sql, target_params = _target_sql(segment, now)
            _materialize_target(target_sql, target_params)
            try:
                left = _mark_leavers(segment, stamp)
                joined = _insert_joiners(segment, stamp)
            finally:
                _drop_target()
        size = _record(segment, now=stamp, joined=joined, left=left)
    return SegmentRefreshResult(
        joined=joined,
        left=left,
        size=size,
        slug=segment.slug,
        seconds=round(time.perf_counter() - started, 3),
    )


def segment_target_queryset(*, segment: Segment, now: dt.datetime | None = None) -> QuerySet:
    """The customers the segment should hold now, as ``{"cid": customer id}`` rows."""
    if segment.kind == SegmentKind.RFM:
        return CustomerMetrics.objects.filter(rfm_segment=segment.slug).values(cid=F("customer_id"))
    if segment.kind == SegmentKind.RULE:
        try:
            return rule_matches(segment.rule, now=now).ids
        except RuleError as error:
            raise SegmentRuleInvalid(error) from error
    return SegmentMembership.objects.filter(segment=segment, left_at__isnull=True).values(
        cid=F("customer_id")
    )


def _postgres_settings() -> None:
    """Memory for the refresh's hash anti-joins (1M-member sets), for this transaction only."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            calls = ", ".join(["set_config(%s, %s, true)"] * len(POSTGRES_SETTINGS))
            cursor.execute(
                f"SELECT {calls}", [item for pair in POSTGRES_SETTINGS.items() for item in pair]
            )


#: An RFM segment's target from the table ``_rfm_targets_made`` fills (PostgreSQL).
_RFM_TARGET_SQL = "SELECT cid FROM pg_temp.rfm_targets WHERE slug = %s"


@contextmanager
def _rfm_targets_made(segments: Sequence[Segment]) -> Iterator[bool]:
    """Every RFM segment's members, from one pass over the metrics, in a session temporary
    table indexed by slug: ten RFM segments would otherwise read the metrics table ten times
    (its rows of one segment are spread over most of its pages). Yields whether it was made
    (PostgreSQL, with RFM segments to refresh)."""
    if connection.vendor != "postgresql" or not any(s.kind == SegmentKind.RFM for s in segments):
        yield False
        return
    metrics = CustomerMetrics._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pg_temp.rfm_targets")
        cursor.execute(
            "CREATE TEMPORARY TABLE rfm_targets AS "
            f"SELECT rfm_segment AS slug, customer_id AS cid FROM {metrics} "
            "WHERE rfm_segment <> '' ORDER BY rfm_segment"
        )
        cursor.execute("CREATE INDEX ON pg_temp.rfm_targets (slug)")
        cursor.execute("ANALYZE pg_temp.rfm_targets")
    try:
        yield True
    finally:
        # (In a failed outer transaction it stays until the session ends, and the next
        # refresh replaces it.)
        with suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS pg_temp.rfm_targets")


def _target_sql(segment: Segment, now: dt.datetime) -> tuple[str, tuple]:
    query = segment_target_queryset(segment=segment, now=now).query
    try:
        sql, params = query.get_compiler(connection=connection).as_sql()
    except EmptyResultSet:  # e.g. an empty "any": nobody
        sql, params = (
            Customer.objects.filter(pk__isnull=True).values(cid=F("pk")).query.sql_with_params()
        )
    return sql, tuple(params)


def _tables() -> tuple[str, str]:
    qn = connection.ops.quote_name
    return qn(SegmentMembership._meta.db_table), qn(Customer._meta.db_table)


def _db_datetime(value: dt.datetime) -> Any:
    return SegmentMembership._meta.get_field("joined_at").get_db_prep_save(value, connection)


def _temp(name: str) -> str:
    return f"pg_temp.{name}" if connection.vendor == "postgresql" else f"temp.{name}"


def _materialize_target(target_sql: str, target_params: tuple) -> None:
    """Compute the target set once into a temporary table the planner knows the size of.

    Both the leavers' UPDATE and the joiners' INSERT anti-join against it: the rule query
    runs exactly once, and stale statistics on freshly loaded tables cannot trick PostgreSQL
    into re-running it per member.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {_temp('segment_target')}")
        cursor.execute(
            f"CREATE TEMPORARY TABLE segment_target AS SELECT DISTINCT t.cid FROM ({target_sql}) t",
            target_params,
        )
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE segment_target")


def _drop_target() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {_temp('segment_target')}")


def _mark_leavers(segment: Segment, now: dt.datetime) -> int:
    membership, _ = _tables()
    sql = (
        f"UPDATE {membership} SET left_at = %s "
        f"WHERE segment_id = %s AND left_at IS NULL AND NOT EXISTS ("
        f"SELECT 1 FROM segment_target t WHERE t.cid = {membership}.customer_id)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, (_db_datetime(now), segment.pk))
        return cursor.rowcount


def _insert_joiners(segment: Segment, now: dt.datetime) -> int:
    """Insert the targets who are not current members.

    When the segment has no current members (its first refresh, or everyone left), every
    target joins: no anti-join. That is also the case the anti-join plans worst: on a
    membership table that looked empty when last analyzed (a first refresh of all segments),
    PostgreSQL probes it with a sequential scan per target, rescanning the rows this very
    statement inserts (measured: 12 s for 50,000 joiners instead of 0.2 s).
    """
    membership, _ = _tables()
    insert = (
        f"INSERT INTO {membership} (segment_id, customer_id, joined_at, left_at) "
        f"SELECT %s, t.cid, %s, NULL FROM segment_target t"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {membership} WHERE segment_id = %s AND left_at IS NULL LIMIT 1",
            [segment.pk],
        )
        if cursor.fetchone() is None:
            cursor.execute(insert, (segment.pk, _db_datetime(now)))
            return cursor.rowcount
        cursor.execute(
            f"{insert} WHERE NOT EXISTS (SELECT 1 FROM {membership} m "
            f"WHERE m.segment_id = %s AND m.left_at IS NULL AND m.customer_id = t.cid)",
            (segment.pk, _db_datetime(now), segment.pk),
        )
        return cursor.rowcount


def _record(segment: Segment, *, now: dt.datetime, joined: int, left: int) -> int:
    """Size, refresh time and today's snapshot (joins and leaves add up over the day)."""
    size = SegmentMembership.objects.filter(segment=segment, left_at__isnull=True).count()
    Segment.objects.filter(pk=segment.pk).update(size=size, refreshed_at=now)
    segment.size, segment.refreshed_at = size, now
    day = timezone.localdate(now)
    updated = SegmentSizeSnapshot.objects.filter(segment=segment, date=day).update(
        size=size, joined=F("joined") + joined, left=F("left") + left
    )
    if not updated:
        SegmentSizeSnapshot.objects.create(
            segment=segment, date=day, size=size, joined=joined, left=left
        )
    return size


def segments_refresh_order(segments: Sequence[Segment]) -> list[Segment]:
    """RFM segments (matching order), static ones, then rule segments so that every segment a
    rule references is refreshed before it (ties by position and name). Segments caught in a
    cycle (which saving prevents) come last."""
    rfm = sorted(
        (s for s in segments if s.kind == SegmentKind.RFM), key=lambda s: (s.position, s.name)
    )
    static = sorted((s for s in segments if s.kind == SegmentKind.STATIC), key=lambda s: s.name)
    rules = sorted(
        (s for s in segments if s.kind == SegmentKind.RULE),
        key=lambda s: (s.position, s.name, s.pk or 0),
    )
    by_slug = {s.slug: s for s in rules}
    waiting = {s.slug: rule_referenced_segments(s.rule) & by_slug.keys() for s in rules}
    ordered: list[Segment] = []
    while waiting:
        ready = [s for s in rules if s.slug in waiting and not waiting[s.slug]]
        if not ready:  # a cycle: keep going in a stable order
            ready = [s for s in rules if s.slug in waiting]
        for s in ready:
            ordered.append(s)
            del waiting[s.slug]
        for deps in waiting.values():
            deps.difference_update(s.slug for s in ready)
    return [*rfm, *static, *ordered]


def segments_refresh_all(
    *,
    now: dt.datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[SegmentRefreshResult]:
    """Refresh every RFM and rule segment in dependency order, each in its own transaction
    (static segments are skipped: their membership only changes by hand, which keeps their size
    and snapshot current).

    A segment whose rule is broken is reported (``error``) and skipped; the others go on.
    ``progress(label)`` is called after each segment with ``"Segment <name> (<slug>)"``, the
    convention of ``metrics_recompute`` (one call per unit of work, unique labels).
    """
    now = now or timezone.now()
    segments = segments_refresh_order(list(Segment.objects.exclude(kind=SegmentKind.STATIC)))
    results = []
    with _rfm_targets_made(segments) as rfm_targets:
        for segment in segments:
            try:
                result = segment_refresh(segment=segment, now=now, _rfm_targets=rfm_targets)
            except SegmentRuleInvalid as error:
                result = SegmentRefreshResult(
                    joined=0, left=0, size=segment.size, slug=segment.slug, error=error.message
                )
            results.append(result)
            if progress is not None:
                progress(f"Segment {segment.name} ({segment.slug})")
    return results


# --- Static segments -------------------------------------------------------------------------


class StaticChange(NamedTuple):
    """Customers added (or removed), and the identifiers that matched no customer."""

    count: int
    unknown: list[str]


def static_segment_add(
    *,
    segment: Segment,
    customer_ids: Iterable[int] | None = None,
    external_ids: Iterable[str] | None = None,
    emails: Iterable[str] | None = None,
    now: dt.datetime | None = None,
) -> StaticChange:
    """Add customers by id, external id or email (case-insensitive); existing members stay as
    they are. Returns ``(added, unknown identifiers)``."""
    now = now or timezone.now()
    with transaction.atomic():
        segment = _lock_static(segment)
        found, unknown = _resolve(customer_ids, external_ids, emails)
        added = 0
        with connection.cursor() as cursor:
            for chunk in _chunks(sorted(found)):
                cursor.execute(*_static_add_sql(segment, chunk, now))
                added += cursor.rowcount
        _record(segment, now=now, joined=added, left=0)
    return StaticChange(added, unknown)


def _static_add_sql(
    segment: Segment, chunk: Sequence[int], now: dt.datetime
) -> tuple[str, tuple[Any, ...]]:
    """Insert the chunk's customers who exist and are not current members.

    The current members among the chunk are read once (``NOT IN`` a subquery bounded by the
    chunk: always a hashed subquery). A correlated ``NOT EXISTS`` was planned, on a
    membership table that looked empty when last analyzed, as a sequential scan per customer
    that rescanned every row inserted so far: quadratic in the number of customers added.
    """
    membership, customer = _tables()
    placeholders = ", ".join(["%s"] * len(chunk))
    sql = (
        f"INSERT INTO {membership} (segment_id, customer_id, joined_at, left_at) "
        f"SELECT %s, c.id, %s, NULL FROM {customer} c WHERE c.id IN ({placeholders}) "
        f"AND c.id NOT IN (SELECT m.customer_id FROM {membership} m "
        f"WHERE m.segment_id = %s AND m.left_at IS NULL AND m.customer_id IN ({placeholders}))"
    )
    return sql, (segment.pk, _db_datetime(now), *chunk, segment.pk, *chunk)


def static_segment_remove(
    *,
    segment: Segment,
    customer_ids: Iterable[int] | None = None,
    external_ids: Iterable[str] | None = None,
    emails: Iterable[str] | None = None,
    now: dt.datetime | None = None,
) -> StaticChange:
    """Remove customers (their stay ends ``now``; history is kept). Returns ``(removed,
    unknown identifiers)``; known customers who were not members count as neither."""
    now = now or timezone.now()
    with transaction.atomic():
        segment = _lock_static(segment)
        found, unknown = _resolve(customer_ids, external_ids, emails)
        removed = 0
        for chunk in _chunks(sorted(found)):
            removed += SegmentMembership.objects.filter(
                segment=segment, left_at__isnull=True, customer_id__in=chunk
            ).update(left_at=now)
        _record(segment, now=now, joined=0, left=removed)
    return StaticChange(removed, unknown)


def _lock_static(segment: Segment) -> Segment:
    if segment.kind != SegmentKind.STATIC:
        raise ServiceError(
            f"Segment {segment.slug!r} is a {segment.get_kind_display()} segment: only static "
            "segments take customers by hand.",
            code="not_static",
        )
    return Segment.objects.select_for_update().get(pk=segment.pk)


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _resolve(
    customer_ids: Iterable[int] | None,
    external_ids: Iterable[str] | None,
    emails: Iterable[str] | None,
) -> tuple[set[int], list[str]]:
    """Customer ids for the identifiers, and the identifiers that matched nobody (in order)."""
    ids: list[int] = []
    for value in customer_ids or ():
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            raise ServiceError(f"{value!r} is not a customer id.", field="customer_ids") from None
    externals = list(dict.fromkeys(e.strip() for e in external_ids or () if e and e.strip()))
    wanted_emails = list(dict.fromkeys(e.strip() for e in emails or () if e and e.strip()))
    found: set[int] = set()
    unknown: list[str] = []

    for chunk in _chunks(list(dict.fromkeys(ids))):
        hits = set(Customer.objects.filter(pk__in=chunk).values_list("pk", flat=True))
        found |= hits
        unknown += [str(i) for i in chunk if i not in hits]
    for chunk in _chunks(externals):
        rows = dict(Customer.objects.filter(external_id__in=chunk).values_list("external_id", "pk"))
        found |= set(rows.values())
        unknown += [e for e in chunk if e not in rows]
    for chunk in _chunks(wanted_emails):
        lowered = {e.lower() for e in chunk}
        rows = dict(
            Customer.objects.annotate(email_ci=Lower("email"))
            .filter(email_ci__in=lowered)
            .values_list("email_ci", "pk")
        )
        found |= set(rows.values())
        unknown += [e for e in chunk if e.lower() not in rows]
    return found, unknown


@dataclass(frozen=True)
class CsvIdentifiers:
    """Identifiers read from a static-segment CSV, ready for ``static_segment_add(**...)``."""

    emails: list[str]
    external_ids: list[str]

    def __len__(self) -> int:
        return len(self.emails) + len(self.external_ids)

    def as_kwargs(self) -> dict[str, list[str]]:
        return {"emails": self.emails, "external_ids": self.external_ids}


_EMAIL_HEADERS = {"email", "e_mail", "email_address"}
_EXTERNAL_ID_HEADERS = {"external_id", "externalid"}


def static_segment_parse_csv(file_or_text: str | bytes | IO[Any]) -> CsvIdentifiers:
    """Read identifiers from a CSV: a header row with an ``email`` and/or ``external_id`` column
    (a row uses its external id when it has one, else its email), or a single column of values
    without header (values with ``@`` are emails, the rest external ids). UTF-8, with or without
    BOM; comma, semicolon or tab separated; blank lines and repeats are skipped."""
    raw = file_or_text.read() if hasattr(file_or_text, "read") else file_or_text
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ServiceError("The file is not UTF-8 text.", field="file") from None
    else:
        text = raw.removeprefix("\ufeff")
    # Imported here: the import services import the customer services, which import this.
    from segmentation.services.imports import csv_dialect

    try:
        rows = [
            [cell.strip() for cell in row]
            for row in csv.reader(io.StringIO(text, newline=""), csv_dialect(text[:4096]))
        ]
    except csv.Error as error:
        raise ServiceError(f"This is not a valid CSV file: {error}.", field="file") from None
    rows = [row for row in rows if any(row)]
    if len(rows) > CSV_MAX_ROWS:
        raise ServiceError(f"The file has more than {CSV_MAX_ROWS} rows.", field="file")
    emails: list[str] = []
    externals: list[str] = []
    if not rows:
        return CsvIdentifiers([], [])
    header = [cell.lower().replace(" ", "_").replace("-", "_") for cell in rows[0]]
    email_col = next((i for i, h in enumerate(header) if h in _EMAIL_HEADERS), None)
    external_col = next((i for i, h in enumerate(header) if h in _EXTERNAL_ID_HEADERS), None)
    if email_col is not None or external_col is not None:
        for row in rows[1:]:
            external = _cell(row, external_col)
            if external:
                externals.append(external)
            elif email := _cell(row, email_col):
                emails.append(email)
    else:
        for line, row in enumerate(rows, start=1):
            values = [cell for cell in row if cell]
            if len(values) > 1:
                raise ServiceError(
                    f"Line {line} has several columns: add a header row naming the 'email' "
                    "or 'external_id' column.",
                    field="file",
                )
            (emails if "@" in values[0] else externals).append(values[0])
    return CsvIdentifiers(list(dict.fromkeys(emails)), list(dict.fromkeys(externals)))


def _cell(row: list[str], index: int | None) -> str:
    return row[index] if index is not None and index < len(row) else ""


__all__ = [
    "CsvIdentifiers",
    "SegmentRefreshResult",
    "SegmentRuleInvalid",
    "StaticChange",
    "segment_create",
    "segment_definition_validate",
    "segment_delete",
    "segment_refresh",
    "segment_target_queryset",
    "segment_update",
    "segments_refresh_all",
    "segments_refresh_order",
    "static_segment_add",
    "static_segment_parse_csv",
    "static_segment_remove",
]
