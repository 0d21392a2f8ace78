"""Reads for segmentation that are more than a one-line queryset.

Sections: segments (preview, members, references, the rule builder's catalogue). Customer
selectors live in their own section or module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import OperationalError, connection, transaction
from django.db.models import QuerySet

from abtest.db import is_statement_timeout, postgres_local_settings
from abtest.errors import ServiceError
from segmentation.models import (
    Customer,
    CustomerMetrics,
    EngagementModel,
    Segment,
    SegmentKind,
    SegmentMembership,
)
from segmentation.rules import (
    rule_catalogue,
    rule_has_event_conditions,
    rule_matches,
    rule_referenced_segments,
)

# --- Segments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewCustomer:
    id: int
    external_id: str
    email: str | None
    name: str


@dataclass(frozen=True)
class SegmentPreview:
    count: int
    sample: list[PreviewCustomer]


#: A live preview may take this long before it is cancelled (a marketer is waiting for it).
PREVIEW_TIMEOUT_SECONDS = 15
#: Memory for the preview's hashed subqueries (event windows inside "any" groups): with the
#: default 4MB they do not fit, and PostgreSQL rescans the events once per customer. JIT
#: compilation (tens of milliseconds) costs more than it saves on a count. Parallel workers:
#: ``settings.SEGMENT_PREVIEW_PARALLEL_WORKERS`` (default one: a preview is interactive and
#: several marketers may be typing at once; on a 2-core server, the server's default two
#: workers plus the leader made each preview 10-30% slower than one worker, three processes
#: sharing two cores and each hashed subquery built three times). No hash aggregation: an
#: event window ("5+ page views in 7 days") groups the window's events by customer, and sorting
#: them (or reading them in customer order) and counting each run beats hashing them (measured
#: at 1M customers: 366 -> 254 ms for 526,000 events in 7 days, 168 -> 106 ms for purchases
#: in 30 days, 3.4 -> 1.6 s for three years of page views; the other rule shapes unchanged).
PREVIEW_POSTGRES_SETTINGS = {"work_mem": "128MB", "jit": "off", "enable_hashagg": "off"}


def preview_postgres_settings() -> dict[str, str]:
    """The settings a preview's transaction runs with (see ``PREVIEW_POSTGRES_SETTINGS``)."""
    return {
        **PREVIEW_POSTGRES_SETTINGS,
        "max_parallel_workers_per_gather": str(settings.SEGMENT_PREVIEW_PARALLEL_WORKERS),
    }


class SegmentPreviewTooSlow(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            f"Counting this rule took longer than {PREVIEW_TIMEOUT_SECONDS} seconds and was "
            "stopped. Narrow the event windows or split the rule; saved segments are still "
            "refreshed in the background.",
            field="rule",
            code="preview_timeout",
        )


def segment_preview(
    *, rule: dict, sample_size: int = 10, now: dt.datetime | None = None
) -> SegmentPreview:
    """How many customers a rule matches now, and a few of them (the lowest ids).

    One COUNT and one LIMIT query (plus one to resolve slugs when the rule names segments,
    one to read the event summary's cutoff when it has event conditions, and one to see how
    long the stale list is when the rule is read from the metrics alone, see
    ``rule_matches``; no count at all for a rule that can match nobody), in one transaction
    with enough memory for hashed subqueries and a time limit. Raises ``RuleError`` for an
    invalid rule and ``SegmentPreviewTooSlow`` when the database gives up.
    """
    matches = rule_matches(rule, now=now, event_summary=False)
    try:
        matches.ids.query.sql_with_params()
    except EmptyResultSet:  # e.g. an empty "any": nobody, and no query to run
        return SegmentPreview(count=0, sample=[])
    try:
        with (
            transaction.atomic(),
            postgres_local_settings(
                **preview_postgres_settings(),
                statement_timeout=f"{round(PREVIEW_TIMEOUT_SECONDS * 1000)}ms",
            ),
        ):
            if connection.vendor == "postgresql" and rule_has_event_conditions(rule):
                # With the event summary; its cutoff stays locked until the count is done.
                matches = rule_matches(rule, now=now)
            count = matches.ids.count()
            sample: list[PreviewCustomer] = []
            if count and sample_size > 0:
                rows = matches.customers.order_by("pk").values_list(
                    "pk", "external_id", "email", "first_name", "last_name"
                )[:sample_size]
                sample = [
                    PreviewCustomer(pk, external_id, email, f"{first} {last}".strip())
                    for pk, external_id, email, first, last in rows
                ]
    except OperationalError as error:
        if is_statement_timeout(error):
            raise SegmentPreviewTooSlow() from None
        raise
    return SegmentPreview(count=count, sample=sample)


def segment_members(*, segment: Segment) -> QuerySet[Customer]:
    """The segment's current members (a plain queryset: order, slice and count it at will)."""
    return Customer.objects.filter(
        pk__in=SegmentMembership.objects.filter(segment=segment, left_at__isnull=True).values(
            "customer_id"
        )
    )


def segment_memberships(*, segment: Segment) -> QuerySet[SegmentMembership]:
    """Every stay of every customer in the segment, newest first (joins and leaves history)."""
    return (
        SegmentMembership.objects.filter(segment=segment)
        .select_related("customer")
        .order_by("-joined_at", "-pk")
    )


def segments_referencing(*, slug: str) -> list[Segment]:
    """The rule segments whose rules name segment ``slug`` (directly)."""
    return [
        segment
        for segment in Segment.objects.filter(kind=SegmentKind.RULE).order_by("name")
        if slug in rule_referenced_segments(segment.rule)
    ]


def rule_builder_catalogue() -> dict[str, Any]:
    """``rules.rule_catalogue()`` with the choices that live in the database filled in: the
    RFM segments' slugs for ``metrics.rfm_segment``, the active engagement model's tiers for
    ``metrics.engagement_tier``, and every segment a condition can reference."""
    catalogue = rule_catalogue()
    rfm = list(
        Segment.objects.filter(kind=SegmentKind.RFM)
        .order_by("position", "name")
        .values_list("slug", "name")
    )
    model = EngagementModel.objects.filter(is_active=True).first()
    tiers = [
        tier["name"]
        for tier in (model.definition.get("tiers", []) if model else [])
        if isinstance(tier, dict) and "name" in tier
    ]
    if not tiers:  # no model: whatever tiers the metrics hold
        tiers = list(
            CustomerMetrics.objects.exclude(engagement_tier="")
            .order_by()
            .values_list("engagement_tier", flat=True)
            .distinct()[:50]
        )
    for field in catalogue["fields"]:
        if field["name"] == "metrics.rfm_segment":
            field["choices"] = [[slug, name] for slug, name in rfm]
        elif field["name"] == "metrics.engagement_tier":
            field["choices"] = [[tier, tier] for tier in tiers]
    catalogue["segments"] = [
        {"slug": slug, "name": name, "kind": kind}
        for slug, name, kind in Segment.objects.order_by("kind", "position", "name").values_list(
            "slug", "name", "kind"
        )
    ]
    return catalogue
