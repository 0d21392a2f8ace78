"""Customers, their engagement events, recomputed metrics, and segments.

Physical design notes (see docs/ops/data.md):

- ``Event`` is written at COPY speed, so it carries no foreign-key constraint (the ingestion
  services resolve customers in SQL before inserting) and only the indexes the reads need:
  (customer, time) for timelines, (type, time) covering customer for event-window rules and
  the type filter, a BRIN on time (PostgreSQL migration), and the idempotency key
  (source, event_id).
- Derived, high-volume rows (metrics, memberships) carry no database foreign-key constraints
  either; the ORM cascades deletes and the services write them set-based.
- ``CustomerMetrics`` is derived data, recomputed set-based; nothing edits it by hand.
- ``CustomerEventSummary`` (PostgreSQL) is derived too: per customer and type, count, value
  and first/last time, kept by ``segmentation.services.event_summary`` and database triggers.
- ``SegmentMembership`` keeps history: a row per stay in a segment, ``left_at`` set when the
  customer leaves; current members have ``left_at IS NULL``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.urls import reverse

from abtest.models import TrackedJob


class SubscriptionStatus(models.TextChoices):
    SUBSCRIBED = "subscribed", "Subscribed"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
    BOUNCED = "bounced", "Bounced"
    COMPLAINED = "complained", "Complained"


class Customer(models.Model):
    # Unique through a constraint rather than unique=True, which on PostgreSQL also builds a
    # second, pattern-ops index that nothing here uses and every insert pays for.
    external_id = models.CharField(
        max_length=255, help_text="The integrator's key for this customer (unique)."
    )
    email = models.EmailField(max_length=254, null=True, blank=True)
    first_name = models.CharField(max_length=150, blank=True, default="")
    last_name = models.CharField(max_length=150, blank=True, default="")
    locale = models.CharField(max_length=35, blank=True, default="", help_text="BCP 47 tag.")
    time_zone = models.CharField(max_length=64, blank=True, default="", help_text="IANA name.")
    attributes = models.JSONField(default=dict, blank=True)
    subscription_status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.SUBSCRIBED
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # On PostgreSQL its index also carries the id (migration 0010), so resolving
            # external ids reads the index only.
            models.UniqueConstraint(fields=["external_id"], name="customer_external_id_unique"),
            models.UniqueConstraint(Lower("email"), name="customer_email_ci_unique"),
        ]

    def __str__(self) -> str:
        name = self.full_name
        return (
            f"{name} <{self.email}>"
            if name and self.email
            else (self.email or name or self.external_id)
        )

    def get_absolute_url(self) -> str:
        return reverse("segmentation:customer-detail", args=[self.pk])

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


class Event(models.Model):
    # No database constraint (write speed); the ORM still cascades deletes of a customer.
    customer = models.ForeignKey(
        Customer,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,  # covered by (customer, occurred_at)
        related_name="events",
    )
    type = models.CharField(max_length=100)
    occurred_at = models.DateTimeField()
    value = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    source = models.CharField(
        max_length=100, blank=True, default="", help_text="Where the event came from (api, csv...)."
    )
    event_id = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        help_text="Optional idempotency key, unique per source: a repeat is ignored.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "event_id"], name="event_source_event_id"),
        ]
        indexes = [
            # Timelines; and covering (with the type) for a customer's counts per type in a
            # window, which incremental metrics recomputes read from the index alone.
            models.Index(
                fields=["customer", "occurred_at"], include=["type"], name="event_customer_time"
            ),
            # Covering: event-window rules ("purchase at least twice in 30 days") are answered
            # from the index alone on PostgreSQL.
            models.Index(
                fields=["type", "occurred_at"], include=["customer"], name="event_type_time"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} at {self.occurred_at:%Y-%m-%d %H:%M}"


class CustomerEventSummary(models.Model):
    """Per customer and event type: how many events, their value, the first and the last.

    Derived from ``Event`` by ``segmentation.services.event_summary`` on PostgreSQL, where it
    answers rule conditions over all time ("never", "fewer than 2", "in the last 90 days") and
    the all-time metrics without aggregating every event again. It covers the events up to
    ``EventSummaryState.last_event_id``; readers add the (few) events after it. Database
    triggers keep it right when events are updated or deleted. Unused (empty) on SQLite.
    """

    customer = models.ForeignKey(
        Customer,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,  # covered by (customer, type)
        related_name="event_summaries",
    )
    type = models.CharField(max_length=100)
    count = models.BigIntegerField()
    #: Sum of the events' values in integer cents (exact, and cheap to add up).
    value_cents = models.BigIntegerField(default=0)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "customer event summaries"
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "type"], name="event_summary_customer_type"
            ),
        ]
        indexes = [
            # "did X in the last d days" and "at least k X ever" read one type's rows.
            models.Index(
                fields=["type", "last_at"], include=["customer", "count"], name="event_summary_last"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} x{self.count} for customer {self.customer_id}"


class EventSummaryState(models.Model):
    """The single row saying how far ``CustomerEventSummary`` has read the events."""

    last_event_id = models.BigIntegerField(default=0)
    #: The latest ``occurred_at`` among the summarized events (an upper bound after deletes).
    max_occurred_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "event summary state"

    def __str__(self) -> str:
        return f"events summarized up to #{self.last_event_id}"


class MetricsState(models.Model):
    """The single row saying what the last metrics recompute read (PostgreSQL).

    With it the next recompute redoes the aggregates of only the customers whose events
    changed since (``segmentation.services.metrics``); ``last_event_id = 0`` forces a full
    recompute.
    """

    as_of = models.DateTimeField(null=True, blank=True)
    #: Every event with an id up to this one was read by that recompute.
    last_event_id = models.BigIntegerField(default=0)
    purchase_types = models.JSONField(default=list, blank=True)
    #: The engagement points model it applied (None: no active model).
    engagement = models.JSONField(null=True, blank=True)
    computed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "metrics state"

    def __str__(self) -> str:
        return f"metrics as of {self.as_of}, events up to #{self.last_event_id}"


class StaleCustomerMetrics(models.Model):
    """Customers whose metrics inputs changed behind the recompute's back since it last ran:
    events updated or deleted, the customer deleted, email counts changed.

    Filled by triggers (migration 0007), emptied by the next recompute, which redoes them.
    """

    customer_id = models.BigIntegerField(primary_key=True)

    class Meta:
        verbose_name = "stale customer metrics"
        verbose_name_plural = "stale customer metrics"

    def __str__(self) -> str:
        return f"metrics of customer {self.customer_id} to redo"


class CustomerMetrics(models.Model):
    """One row per customer, recomputed by ``segmentation.services.metrics``."""

    # No database constraint: a first recompute inserts a row per customer, and a million
    # deferred constraint checks at commit would cost more than the insert. The ORM cascades.
    customer = models.OneToOneField(
        Customer,
        on_delete=models.CASCADE,
        primary_key=True,
        db_constraint=False,
        related_name="metrics",
    )
    first_purchase_at = models.DateTimeField(null=True, blank=True)
    last_purchase_at = models.DateTimeField(null=True, blank=True)
    recency_days = models.IntegerField(null=True, blank=True)
    frequency = models.IntegerField(default=0)
    monetary = models.DecimalField(max_digits=16, decimal_places=2, default=0)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    event_counts_30d = models.JSONField(default=dict, blank=True)
    event_counts_90d = models.JSONField(default=dict, blank=True)
    #: Events of every type in the last 30 and 90 days (the sums of the two objects above).
    events_30d = models.IntegerField(default=0)
    events_90d = models.IntegerField(default=0)
    emails_sent = models.IntegerField(default=0)
    emails_opened = models.IntegerField(default=0)
    emails_clicked = models.IntegerField(default=0)
    r_score = models.PositiveSmallIntegerField(null=True, blank=True)
    f_score = models.PositiveSmallIntegerField(null=True, blank=True)
    m_score = models.PositiveSmallIntegerField(null=True, blank=True)
    rfm_segment = models.CharField(max_length=100, blank=True, default="")
    engagement_points = models.IntegerField(default=0)
    engagement_tier = models.CharField(max_length=100, blank=True, default="")
    as_of = models.DateTimeField(null=True, blank=True)
    computed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "customer metrics"
        indexes = [
            # RFM grid cells, and a cell's customers newest first without a sort.
            models.Index(fields=["r_score", "f_score", "customer"], name="metrics_rf"),
            # An RFM segment's members, read by its refresh without scanning every row.
            models.Index(fields=["rfm_segment", "customer"], name="metrics_rfm_segment"),
        ]

    def __str__(self) -> str:
        return f"metrics of customer {self.customer_id}"


class SegmentKind(models.TextChoices):
    RFM = "rfm", "RFM"
    RULE = "rule", "Rule"
    STATIC = "static", "Static"


class Segment(models.Model):
    """A named group of customers.

    - ``rfm``: ``rule`` is ``{"r": [lo, hi], "f": [lo, hi]}`` over the 1..5 scores; RFM
      segments are matched in ``position`` order and a customer gets the first that fits.
    - ``rule``: ``rule`` is a tree of ``all``/``any`` groups (see ``segmentation.rules``).
    - ``static``: members are added and removed by hand, by file or by API.
    """

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=200, unique=True)
    description = models.TextField(blank=True, default="")
    kind = models.CharField(max_length=10, choices=SegmentKind.choices)
    rule = models.JSONField(default=dict, blank=True)
    position = models.PositiveIntegerField(default=0)
    size = models.PositiveIntegerField(default=0)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", "position", "name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("segmentation:segment-detail", args=[self.slug])


class SegmentMembership(models.Model):
    """One stay of a customer in a segment; current members have ``left_at`` NULL."""

    # No database constraints: refreshes insert members set-based by the hundred thousand, and
    # deferred constraint checks at commit would dominate. The ORM cascades deletes.
    segment = models.ForeignKey(
        Segment,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,  # covered by (segment, joined_at)
        related_name="memberships",
    )
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, db_constraint=False, related_name="memberships"
    )
    joined_at = models.DateTimeField()
    left_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["segment", "customer"],
                condition=Q(left_at__isnull=True),
                name="membership_current_unique",
            ),
        ]
        indexes = [
            # Members and recent joins of a segment; recent leaves from the (small) history.
            models.Index(fields=["segment", "joined_at"], name="membership_joined"),
            models.Index(
                fields=["segment", "left_at"],
                condition=Q(left_at__isnull=False),
                name="membership_left",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} in {self.segment_id}"


class SegmentSizeSnapshot(models.Model):
    """The size of a segment at the end of its last refresh of the day (for charts)."""

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="snapshots")
    date = models.DateField()
    size = models.PositiveIntegerField()
    joined = models.PositiveIntegerField(default=0)
    left = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["segment", "date"]
        constraints = [
            models.UniqueConstraint(fields=["segment", "date"], name="snapshot_segment_date"),
        ]

    def __str__(self) -> str:
        return f"{self.segment_id} on {self.date}: {self.size}"


class EngagementModel(models.Model):
    """A points model: points per threshold band on metrics, summed, mapped to named tiers.

    ``definition`` (validated by ``segmentation.services.engagement.validate_definition``)::

        {"rules": [{"metric": "frequency",
                    "bands": [{"min": 10, "points": 30}, {"min": 4, "max": 10, "points": 20}]}],
         "tiers": [{"name": "Star", "min_points": 70}, {"name": "Lost", "min_points": 0}]}

    A band matches when ``min <= value < max`` (either bound may be omitted); the first
    matching band of a rule scores; a missing metric scores nothing. The highest tier whose
    ``min_points`` the total reaches is the customer's tier. Exactly one model is active.
    """

    name = models.CharField(max_length=200)
    definition = models.JSONField()
    is_active = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_engagement"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ImportKind(models.TextChoices):
    CUSTOMERS = "customers", "Customers"
    EVENTS = "events", "Events"


class ImportJob(TrackedJob):
    """A CSV import: uploaded through the page (run by a task) or by a management command."""

    kind = models.CharField(max_length=16, choices=ImportKind.choices)
    file = models.FileField(upload_to="imports/%Y/%m/", blank=True)
    filename = models.CharField(max_length=255, blank=True, default="")
    options = models.JSONField(default=dict, blank=True)
    total_rows = models.PositiveIntegerField(null=True, blank=True)
    processed_rows = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    errors = models.JSONField(
        default=list, blank=True, help_text="The first rejected rows: line, column, reason."
    )

    def __str__(self) -> str:
        return f"{self.get_kind_display()} import #{self.pk} ({self.status})"

    def progress(self) -> tuple[int, int | None]:
        return self.processed_rows, self.total_rows


class RefreshRun(TrackedJob):
    """One run of the metrics, RFM, tier and segment refresh pipeline."""

    as_of = models.DateTimeField()
    trigger = models.CharField(max_length=20, default="manual")  # manual, schedule, command, api
    step = models.CharField(max_length=100, blank=True, default="")
    steps_done = models.PositiveSmallIntegerField(default=0)
    steps_total = models.PositiveSmallIntegerField(default=0, validators=[MinValueValidator(0)])
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds per step.")

    def __str__(self) -> str:
        return f"refresh #{self.pk} ({self.status})"

    def progress(self) -> tuple[int, int | None]:
        return self.steps_done, self.steps_total
