"""Demo data: the real CDNOW purchase history, dressed up with names, emails and sessions.

CDNOW (from the ``lifetimes`` package): 23,570 customers who first bought at CDNOW in Q1 1997,
and their 69,659 purchases until 1998-06-30. ``cdnow_load`` loads exactly that; ``demo_seed``
adds generated names, emails, attributes, browsing sessions and example segments.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
from django.utils import timezone

from abtest.errors import ServiceError
from segmentation.models import Customer, Event, Segment
from segmentation.services.customers import customers_upsert
from segmentation.services.events import events_ingest
from segmentation.services.validation import CustomerRow, EventRow, clean_customer

CDNOW_FILE = "lifetimes/datasets/CDNOW_master.txt"
CDNOW_AS_OF = datetime(1998, 7, 1, tzinfo=UTC)
CDNOW_SOURCE = "cdnow"
DEMO_SOURCE = "demo"
CHUNK = 20_000


@dataclass(frozen=True)
class CdnowLine:
    line: int
    customer_id: str
    day: date
    cds: int
    dollars: Decimal


def cdnow_lines() -> Iterator[CdnowLine]:
    """Every purchase line of ``datasets/CDNOW_master.txt`` from the lifetimes package."""
    # Located through the installed distribution's file list: importing the lifetimes package
    # itself would drag in its modelling code (and pandas deprecation warnings).
    path = importlib.metadata.distribution("lifetimes").locate_file(CDNOW_FILE)
    with open(path, encoding="ascii") as handle:
        for number, text in enumerate(handle, start=1):
            parts = text.split()
            if not parts or parts[0] == "customer_id":
                continue
            customer_id, day, cds, dollars = parts
            yield CdnowLine(
                line=number,
                customer_id=customer_id,
                day=date(int(day[:4]), int(day[4:6]), int(day[6:])),
                cds=int(cds),
                dollars=Decimal(dollars),
            )


def _chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cdnow_load(*, progress: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Load CDNOW into an empty database and refresh metrics as of 1998-07-01T00:00Z.

    One customer per CDNOW id (the id, as written in the file, is the ``external_id``); one
    ``purchase`` event per line at midnight UTC of its date with ``value`` = the dollar value
    and ``properties.cds`` = the number of CDs. Returns (customers, events).
    """
    from segmentation.services.refresh import refresh_now

    if Customer.objects.exists() or Event.objects.exists():
        raise ServiceError("load_cdnow needs an empty database (no customers, no events).")
    lines = list(cdnow_lines())
    customer_ids = sorted({line.customer_id for line in lines})
    for chunk in _chunks(customer_ids):
        result = customers_upsert(
            rows=[(i, clean_customer({"external_id": c})) for i, c in enumerate(chunk)]
        )
        assert not result.rejected, result.rejected[:3]
    if progress:
        progress(f"{len(customer_ids):,} customers")
    events = [
        (
            line.line,
            EventRow(
                external_id=line.customer_id,
                type="purchase",
                occurred_at=datetime(line.day.year, line.day.month, line.day.day, tzinfo=UTC),
                value=line.dollars,
                properties={"cds": line.cds},
                source=CDNOW_SOURCE,
                event_id=str(line.line),
            ),
        )
        for line in lines
    ]
    stored = 0
    for chunk in _chunks(events):
        stored += events_ingest(rows=chunk).accepted
    if progress:
        progress(f"{stored:,} purchases")
    refresh_now(as_of=CDNOW_AS_OF, trigger="command")
    if progress:
        progress("metrics as of 1998-07-01")
    return len(customer_ids), stored


# --- The demo on top of CDNOW -------------------------------------------------------------------

CITIES = [
    ("Boston", "en-US", "America/New_York"),
    ("Chicago", "en-US", "America/Chicago"),
    ("Denver", "en-US", "America/Denver"),
    ("Seattle", "en-US", "America/Los_Angeles"),
    ("Toronto", "en-CA", "America/Toronto"),
    ("London", "en-GB", "Europe/London"),
    ("Berlin", "de-DE", "Europe/Berlin"),
    ("Paris", "fr-FR", "Europe/Paris"),
    ("Madrid", "es-ES", "Europe/Madrid"),
    ("Sydney", "en-AU", "Australia/Sydney"),
]
CHANNELS = ["web", "store", "app", "partner"]

DEMO_SEGMENTS = [
    (
        "Recent browsers",
        "recent-browsers",
        "Had at least three sessions in the last 30 days.",
        {"all": [{"event": "session", "op": "at_least", "count": 3, "days": 30}]},
    ),
    (
        "Big spenders",
        "big-spenders",
        "Spent $300 or more in total and are still subscribed.",
        {
            "all": [
                {"field": "metrics.monetary", "op": "gte", "value": 300},
                {"field": "subscription_status", "op": "eq", "value": "subscribed"},
            ]
        },
    ),
    (
        "Loyalty members at risk",
        "loyalty-at-risk",
        "Loyalty members in the At risk or Can't lose them RFM segments.",
        {
            "all": [
                {"field": "attributes.loyalty_member", "op": "eq", "value": True},
                {
                    "field": "metrics.rfm_segment",
                    "op": "in",
                    "value": ["at-risk", "cant-lose-them"],
                },
            ]
        },
    ),
    (
        "Champions in Europe",
        "champions-europe",
        "Champions whose time zone is in Europe.",
        {
            "all": [
                {"segment": "champions", "op": "in"},
                {"field": "time_zone", "op": "starts_with", "value": "Europe/"},
            ]
        },
    ),
]


def _customer_rows(
    customer_ids: list[str], rng: np.random.Generator
) -> list[tuple[int, CustomerRow]]:
    # Faker's name lists, drawn with numpy (Faker's own per-call API is slow at this scale).
    from faker.providers.person.en_US import Provider as Names

    first_names = np.array(sorted(Names.first_names))
    last_names = np.array(sorted(Names.last_names))
    firsts = rng.choice(first_names, len(customer_ids))
    lasts = rng.choice(last_names, len(customer_ids))
    places = rng.integers(len(CITIES), size=len(customer_ids))
    channels = rng.integers(len(CHANNELS), size=len(customer_ids))
    statuses = rng.choice(
        ["subscribed", "unsubscribed", "bounced", "complained"],
        size=len(customer_ids),
        p=[0.9, 0.07, 0.02, 0.01],
    )
    loyal = rng.random(len(customer_ids)) < 0.3
    rows = []
    for index, external_id in enumerate(customer_ids):
        first, last = str(firsts[index]), str(lasts[index])
        city, locale, tz = CITIES[places[index]]
        rows.append(
            (
                index,
                clean_customer(
                    {
                        "external_id": external_id,
                        "email": f"{first}.{last}.{external_id}@example.com".lower(),
                        "first_name": first,
                        "last_name": last,
                        "locale": locale,
                        "time_zone": tz,
                        "subscription_status": str(statuses[index]),
                        "attributes": {
                            "city": city,
                            "channel": CHANNELS[channels[index]],
                            "loyalty_member": bool(loyal[index]),
                        },
                    }
                ),
            )
        )
    return rows


def _session_rows(rng: np.random.Generator, now: datetime) -> Iterator[tuple[int, EventRow]]:
    """Sessions around each purchase (browsing before buying), plus recent activity."""
    purchases = Event.objects.filter(source=CDNOW_SOURCE).values_list(
        "customer__external_id", "occurred_at"
    )
    key = 0
    for external_id, bought_at in purchases.iterator(chunk_size=5000):
        for _ in range(int(rng.integers(0, 3))):
            key += 1
            before = timedelta(minutes=int(rng.integers(5, 7 * 24 * 60)))
            yield key, _session(external_id, bought_at - before, key, rng)
    # A third of customers came back recently: sessions in the last 90 days, so that
    # time-window rules have something to find today.
    customer_ids = list(Customer.objects.values_list("external_id", flat=True))
    for external_id in customer_ids:
        if rng.random() < 0.33:
            for _ in range(int(rng.integers(1, 7))):
                key += 1
                ago = timedelta(minutes=int(rng.integers(1, 90 * 24 * 60)))
                yield key, _session(external_id, now - ago, key, rng)


def _session(external_id: str, at: datetime, key: int, rng: np.random.Generator) -> EventRow:
    return EventRow(
        external_id=external_id,
        type="session",
        occurred_at=at.replace(second=0, microsecond=0),
        value=None,
        properties={
            "pages": int(rng.integers(1, 15)),
            "device": "mobile" if rng.random() < 0.55 else "desktop",
        },
        source=DEMO_SOURCE,
        event_id=f"session-{key}",
    )


def demo_seed(*, progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """CDNOW plus names, emails, attributes, sessions and example segments; refreshed now."""
    from segmentation.services.refresh import refresh_now
    from segmentation.services.segments import segment_create

    say = progress or (lambda message: None)
    customers, purchases = cdnow_load(progress=say)
    rng = np.random.default_rng(1997)
    customer_ids = list(
        Customer.objects.order_by("external_id").values_list("external_id", flat=True)
    )
    for chunk in _chunks(_customer_rows(customer_ids, rng)):
        customers_upsert(rows=chunk)
    say("names, emails and attributes")
    now = timezone.now()
    sessions = 0
    batch: list[tuple[int, EventRow]] = []
    for item in _session_rows(rng, now):
        batch.append(item)
        if len(batch) >= CHUNK:
            sessions += events_ingest(rows=batch).accepted
            batch = []
    sessions += events_ingest(rows=batch).accepted
    say(f"{sessions:,} sessions")
    for name, slug, description, rule in DEMO_SEGMENTS:
        if not Segment.objects.filter(slug=slug).exists():
            segment_create(name=name, slug=slug, kind="rule", rule=rule, description=description)
    vip = Segment.objects.filter(slug="vip-list").first()
    if vip is None:
        from segmentation.services.segments import static_segment_add

        vip = segment_create(
            name="VIP list",
            slug="vip-list",
            kind="static",
            description="Hand-picked customers (the 25 biggest spenders at load time).",
        )
        top = Customer.objects.order_by("-metrics__monetary", "external_id").values_list(
            "external_id", flat=True
        )[:25]
        static_segment_add(segment=vip, external_ids=list(top))
    refresh_now(as_of=now, trigger="command")
    say("metrics and segments refreshed as of now")
    return {"customers": customers, "purchases": purchases, "sessions": sessions}
