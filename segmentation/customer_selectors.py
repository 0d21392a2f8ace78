"""Reads over customers and their events: search, filters, keyset pages, timelines.

Also the reads behind the customer, RFM, segment and import pages (filter choices, the RFM
grid, membership history, size history): each is one or two queries, none scans a table per
row shown.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Lower
from django.utils import timezone

from segmentation.models import (
    Customer,
    CustomerMetrics,
    EngagementModel,
    Event,
    Segment,
    SegmentKind,
    SegmentMembership,
    SegmentSizeSnapshot,
)

#: Attribute keys the filters accept: no ``__``, which Django would read as a lookup.
ATTRIBUTE_KEY = re.compile(r"(?!.*__)[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class CustomerFilters:
    search: str = ""
    subscription_status: str = ""
    segment: Segment | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    r_score: int | None = None
    f_score: int | None = None
    rfm_segment: str = ""
    engagement_tier: str = ""


def _attribute_q(key: str, value: str) -> Q:
    """Equality on ``attributes[key]`` whether it was stored as a string, number or boolean."""
    lookup = f"attributes__{key}"
    q = Q(**{lookup: value})
    lowered = value.lower()
    if lowered in {"true", "false"}:
        q |= Q(**{lookup: lowered == "true"})
    else:
        try:
            number = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = None
        # float() also reads nan, inf and 1e400, which are not JSON; and the databases
        # compare integers of at most 64 bits.
        if number is not None and math.isfinite(number) and abs(number) < 2**63:
            q |= Q(**{lookup: number})
    return q


def customer_search(*, filters: CustomerFilters, queryset: QuerySet | None = None) -> QuerySet:
    """Customers matching ``filters``, newest first (ordered by id for keyset pagination).

    Search is case-insensitive and matches the start of the email, first name or last name,
    "first last" (the first word starts the first name, the rest the last name), or the exact
    external id. Every branch is an index lookup on PostgreSQL (``lower(column)
    text_pattern_ops`` indexes and the unique external id), so a search stays fast at any
    table size, even when nothing matches.
    """
    customers = Customer.objects.all() if queryset is None else queryset
    term = " ".join(filters.search.split())
    if term:
        lowered = term.lower()
        q = Q(email_lower__startswith=lowered) | Q(external_id=term)
        annotations = {"email_lower": Lower("email")}
        if "@" not in term:
            first, _, rest = lowered.partition(" ")
            q |= Q(first_name_lower__startswith=lowered) | Q(last_name_lower__startswith=lowered)
            if rest:
                q |= Q(first_name_lower__startswith=first) & Q(last_name_lower__startswith=rest)
            annotations |= {
                "first_name_lower": Lower("first_name"),
                "last_name_lower": Lower("last_name"),
            }
        customers = customers.annotate(**annotations).filter(q)
    if filters.subscription_status:
        customers = customers.filter(subscription_status=filters.subscription_status)
    if filters.segment is not None:
        customers = customers.filter(
            memberships__segment=filters.segment, memberships__left_at__isnull=True
        )
    for key, value in filters.attributes:
        if ATTRIBUTE_KEY.fullmatch(key):
            customers = customers.filter(_attribute_q(key, value))
    if filters.r_score is not None:
        customers = customers.filter(metrics__r_score=filters.r_score)
    if filters.f_score is not None:
        customers = customers.filter(metrics__f_score=filters.f_score)
    if filters.rfm_segment:
        customers = customers.filter(metrics__rfm_segment=filters.rfm_segment)
    if filters.engagement_tier:
        customers = customers.filter(metrics__engagement_tier=filters.engagement_tier)
    return customers.order_by("-id")


@dataclass(frozen=True)
class KeysetPage:
    items: list
    next_after: int | None  # pass as ?after= for the next (older) page
    prev_before: int | None  # pass as ?before= for the previous (newer) page


def keyset_page(
    queryset: QuerySet, *, after: int | None = None, before: int | None = None, size: int = 50
) -> KeysetPage:
    """One page of ``queryset`` ordered by descending id, without OFFSET (fast at any depth)."""
    if before is not None:
        rows = list(queryset.filter(id__gt=before).order_by("id")[: size + 1])
        has_newer = len(rows) > size
        rows = list(reversed(rows[:size]))
        return KeysetPage(
            items=rows,
            next_after=rows[-1].id if rows else None,
            prev_before=rows[0].id if rows and has_newer else None,
        )
    if after is not None:
        queryset = queryset.filter(id__lt=after)
    rows = list(queryset.order_by("-id")[: size + 1])
    has_older = len(rows) > size
    rows = rows[:size]
    return KeysetPage(
        items=rows,
        next_after=rows[-1].id if rows and has_older else None,
        prev_before=rows[0].id if rows and after is not None else None,
    )


def customer_timeline(
    *,
    customer: Customer,
    before: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Event]:
    """The customer's latest events (newest first), optionally older than ``before``.

    With ``before_id`` too, the keyset is ``(occurred_at, id)``: events at the same instant as
    ``before`` with a smaller id come next, so a page boundary never skips or repeats an event.
    Served by the ``(customer, occurred_at)`` index.
    """
    events = Event.objects.filter(customer=customer)
    if before is not None:
        if before_id is not None:
            events = events.filter(
                Q(occurred_at__lt=before) | Q(occurred_at=before, id__lt=before_id)
            )
        else:
            events = events.filter(occurred_at__lt=before)
    return list(events.order_by("-occurred_at", "-id")[:limit])


# --- Customer pages ----------------------------------------------------------------------------


def customer_count_estimate() -> int | None:
    """About how many customers there are, without counting them.

    PostgreSQL's planner statistics (``pg_class.reltuples``, kept by autovacuum/ANALYZE); None
    where there is no estimate (other databases, or a table never analysed).
    """
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
            [Customer._meta.db_table],
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] >= 0 else None


@dataclass(frozen=True)
class FilterChoices:
    """Options of the customer list's filter dropdowns (two small queries)."""

    segments: list[tuple[str, str]]  # (slug, name) of every segment
    rfm_segments: list[tuple[str, str]]  # (slug, name) of the RFM segments, in matching order
    engagement_tiers: list[str]


def customer_filter_choices() -> FilterChoices:
    segments = list(
        Segment.objects.order_by("kind", "position", "name").values_list("slug", "name", "kind")
    )
    model = EngagementModel.objects.filter(is_active=True).first()
    tiers = [
        tier["name"]
        for tier in (model.definition.get("tiers", []) if model else [])
        if isinstance(tier, dict) and isinstance(tier.get("name"), str)
    ]
    return FilterChoices(
        segments=[(slug, name) for slug, name, _ in segments],
        rfm_segments=[(slug, name) for slug, name, kind in segments if kind == SegmentKind.RFM],
        engagement_tiers=tiers,
    )


def customer_memberships(*, customer: Customer, limit: int = 100) -> list[SegmentMembership]:
    """The customer's stays in segments (joined, left), current stays first, then newest."""
    rows = list(
        SegmentMembership.objects.filter(customer=customer)
        .select_related("segment")
        .order_by("-joined_at", "-pk")[:limit]
    )
    return sorted(rows, key=lambda m: m.left_at is not None)  # stable sort keeps the order


# --- RFM grid ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RfmCell:
    r: int
    f: int
    count: int
    share: float  # count / the largest cell's count: 0..1, for the colour
    segment: Segment | None  # the RFM segment this cell belongs to (first match by position)


@dataclass(frozen=True)
class RfmSegmentRow:
    segment: Segment
    r: tuple[int, int]
    f: tuple[int, int]
    count: int  # customers in its cells now (the grid's counts)


@dataclass(frozen=True)
class RfmGrid:
    rows: list[list[RfmCell]]  # R from 5 (top) down to 1; each row F from 1 to 5
    segments: list[RfmSegmentRow]
    scored: int
    unscored: int  # metrics rows without R or F score (no purchase yet)
    max_count: int


def _in_range(bounds, value: int) -> bool:
    try:
        low, high = int(bounds[0]), int(bounds[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return False
    return low <= value <= high


def rfm_grid() -> RfmGrid:
    """Customer counts per (R, F) score pair: one GROUP BY over the metrics, plus the RFM
    segments (each cell belongs to the first segment, by position, whose ranges hold it)."""
    counts: dict[tuple[int, int], int] = {}
    unscored = 0
    rows = (
        CustomerMetrics.objects.order_by().values_list("r_score", "f_score").annotate(n=Count("*"))
    )
    for r, f, n in rows:
        if r is None or f is None:
            unscored += n
        else:
            counts[(r, f)] = counts.get((r, f), 0) + n
    segments = list(Segment.objects.filter(kind=SegmentKind.RFM).order_by("position", "name"))

    def owner(r: int, f: int) -> Segment | None:
        for segment in segments:
            rule = segment.rule if isinstance(segment.rule, dict) else {}
            if _in_range(rule.get("r"), r) and _in_range(rule.get("f"), f):
                return segment
        return None

    max_count = max(counts.values(), default=0)
    grid = [
        [
            RfmCell(
                r=r,
                f=f,
                count=counts.get((r, f), 0),
                share=counts.get((r, f), 0) / max_count if max_count else 0.0,
                segment=owner(r, f),
            )
            for f in range(1, 6)
        ]
        for r in range(5, 0, -1)
    ]
    per_segment: dict[int, int] = {}
    for row in grid:
        for cell in row:
            if cell.segment is not None:
                per_segment[cell.segment.pk] = per_segment.get(cell.segment.pk, 0) + cell.count
    legend = []
    for segment in segments:
        rule = segment.rule if isinstance(segment.rule, dict) else {}
        r_bounds, f_bounds = rule.get("r") or [0, 0], rule.get("f") or [0, 0]
        legend.append(
            RfmSegmentRow(
                segment=segment,
                r=(r_bounds[0], r_bounds[-1]),
                f=(f_bounds[0], f_bounds[-1]),
                count=per_segment.get(segment.pk, 0),
            )
        )
    return RfmGrid(
        rows=grid,
        segments=legend,
        scored=sum(counts.values()),
        unscored=unscored,
        max_count=max_count,
    )


# --- Segment pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentGroup:
    kind: str
    label: str
    segments: list[Segment]


@dataclass(frozen=True)
class SegmentOverview:
    groups: list[SegmentGroup]
    max_size: int
    last_refreshed: dt.datetime | None


def segments_overview() -> SegmentOverview:
    """Every segment, grouped by kind (RFM, rule, static), with what the bar chart needs."""
    segments = list(Segment.objects.order_by("kind", "position", "name"))
    groups = [
        SegmentGroup(kind, label, [s for s in segments if s.kind == kind])
        for kind, label in (
            (SegmentKind.RFM, "RFM segments"),
            (SegmentKind.RULE, "Rule segments"),
            (SegmentKind.STATIC, "Static segments"),
        )
    ]
    refreshed = [s.refreshed_at for s in segments if s.refreshed_at is not None]
    return SegmentOverview(
        groups=groups,
        max_size=max((s.size for s in segments), default=0),
        last_refreshed=max(refreshed, default=None),
    )


def segment_size_history(
    *, segment: Segment, days: int = 180, today: dt.date | None = None
) -> list[SegmentSizeSnapshot]:
    """The daily size snapshots of the last ``days`` days, oldest first."""
    today = today or timezone.localdate()
    return list(
        SegmentSizeSnapshot.objects.filter(
            segment=segment, date__gt=today - dt.timedelta(days=days)
        ).order_by("date")
    )


@dataclass(frozen=True)
class MembershipChange:
    at: dt.datetime
    customer: Customer
    joined: bool  # False: left


def segment_recent_changes(*, segment: Segment, limit: int = 20) -> list[MembershipChange]:
    """The latest joins and leaves, newest first (two LIMIT queries merged)."""
    memberships = SegmentMembership.objects.filter(segment=segment).select_related("customer")
    joins = memberships.order_by("-joined_at", "-pk")[:limit]
    leaves = memberships.filter(left_at__isnull=False).order_by("-left_at", "-pk")[:limit]
    changes = [MembershipChange(m.joined_at, m.customer, True) for m in joins]
    changes += [MembershipChange(m.left_at, m.customer, False) for m in leaves]
    changes.sort(key=lambda c: c.at, reverse=True)
    return changes[:limit]
