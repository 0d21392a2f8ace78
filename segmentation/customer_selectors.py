"""Reads over customers and their events: search, filters, keyset pages, timelines."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet, Value
from django.db.models.functions import Concat, Lower

from segmentation.models import Customer, Event, Segment

ATTRIBUTE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        if number is not None:
            q |= Q(**{lookup: number})
    return q


def customer_search(*, filters: CustomerFilters, queryset: QuerySet | None = None) -> QuerySet:
    """Customers matching ``filters``, newest first (ordered by id for keyset pagination).

    Search is case-insensitive and matches the start of the email, first name, last name or
    full name, or the exact external id. On PostgreSQL the email prefix uses an index.
    """
    customers = Customer.objects.all() if queryset is None else queryset
    term = filters.search.strip()
    if term:
        lowered = term.lower()
        q = Q(email_lower__startswith=lowered) | Q(external_id=term)
        if "@" not in term:
            q |= (
                Q(first_name__istartswith=term)
                | Q(last_name__istartswith=term)
                | Q(full_name_lower__startswith=lowered)
            )
        customers = customers.annotate(
            email_lower=Lower("email"),
            full_name_lower=Lower(Concat("first_name", Value(" "), "last_name")),
        ).filter(q)
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
    *, customer: Customer, before: datetime | None = None, limit: int = 50
) -> list[Event]:
    """The customer's latest events (newest first), optionally older than ``before``."""
    events = Event.objects.filter(customer=customer)
    if before is not None:
        events = events.filter(occurred_at__lt=before)
    return list(events.order_by("-occurred_at", "-id")[:limit])
