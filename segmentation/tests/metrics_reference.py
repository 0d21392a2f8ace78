"""An independent, plain-Python reference for customer metrics, RFM and engagement tiers.

Written from the definitions (not from the SQL): scores count strictly smaller (larger) values
with ``bisect`` instead of ranking, money is summed in :class:`~decimal.Decimal`, and days are
``timedelta`` floor division. Also a seeded generator of awkward data sets.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

DAY = timedelta(days=1)
US = timedelta(microseconds=1)


@dataclass(frozen=True)
class RefEvent:
    customer_id: int
    type: str
    occurred_at: datetime
    value: Decimal | None = None


def _score(w: int, n: int) -> int:
    return 1 + (5 * w) // n


def _band_matches(band: Mapping[str, Any], value: Any) -> bool:
    if value is None:
        return False
    if "min" in band and not Decimal(str(value)) >= Decimal(str(band["min"])):
        return False
    return not ("max" in band and not Decimal(str(value)) < Decimal(str(band["max"])))


def reference_engagement(definition: Mapping[str, Any], metrics: Mapping[str, Any]) -> tuple:
    """(points, tier) of one customer under a points model, by the documented rules."""
    points = 0
    for rule in definition["rules"]:
        value = metrics[rule["metric"]]
        for band in rule["bands"]:
            if _band_matches(band, value):
                points += band["points"]
                break
    reached = [t for t in definition["tiers"] if points >= t["min_points"]]
    tier = max(reached, key=lambda t: t["min_points"])["name"] if reached else ""
    return points, tier


def reference_metrics(
    *,
    customer_ids: Iterable[int],
    events: Iterable[RefEvent],
    as_of: datetime,
    purchase_types: Sequence[str],
    rfm_segments: Sequence[tuple[str, Mapping[str, Sequence[int]]]],
    engagement: Mapping[str, Any] | None,
    emails: Mapping[int, tuple[int, int, int]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Expected ``CustomerMetrics`` values per customer id (fields the recompute writes)."""
    ids = set(customer_ids)
    emails = emails or {}
    counted = [e for e in events if e.customer_id in ids and e.occurred_at <= as_of]
    by_customer: dict[int, list[RefEvent]] = defaultdict(list)
    for event in counted:
        by_customer[event.customer_id].append(event)

    rows: dict[int, dict[str, Any]] = {}
    for cid in ids:
        evs = by_customer.get(cid, [])
        purchases = [e for e in evs if e.type in purchase_types]
        last_purchase = max((e.occurred_at for e in purchases), default=None)
        last_activity = max((e.occurred_at for e in evs), default=None)
        c30 = Counter(e.type for e in evs if e.occurred_at > as_of - 30 * DAY)
        c90 = Counter(e.type for e in evs if e.occurred_at > as_of - 90 * DAY)
        sent, opened, clicked = emails.get(cid, (0, 0, 0))
        rows[cid] = {
            "first_purchase_at": min((e.occurred_at for e in purchases), default=None),
            "last_purchase_at": last_purchase,
            "recency_days": (as_of - last_purchase) // DAY if purchases else None,
            "frequency": len(purchases),
            "monetary": sum((e.value or Decimal(0) for e in purchases), Decimal("0.00")),
            "last_activity_at": last_activity,
            "event_counts_30d": dict(c30),
            "event_counts_90d": dict(c90),
            "emails_sent": sent,
            "emails_opened": opened,
            "emails_clicked": clicked,
            "r_score": None,
            "f_score": None,
            "m_score": None,
            "rfm_segment": "",
            "_days_since_last_activity": (
                (as_of - last_activity) // DAY if last_activity else None
            ),
            "_events_30d": sum(c30.values()),
            "_events_90d": sum(c90.values()),
        }

    scored = [cid for cid in ids if rows[cid]["frequency"] > 0]
    n = len(scored)
    recencies = sorted(rows[c]["recency_days"] for c in scored)
    frequencies = sorted(rows[c]["frequency"] for c in scored)
    monetaries = sorted(rows[c]["monetary"] for c in scored)
    for cid in scored:
        row = rows[cid]
        # R: w = customers with a strictly larger recency; F, M: strictly smaller values.
        row["r_score"] = _score(n - bisect_right(recencies, row["recency_days"]), n)
        row["f_score"] = _score(bisect_left(frequencies, row["frequency"]), n)
        row["m_score"] = _score(bisect_left(monetaries, row["monetary"]), n)
        for slug, rule in rfm_segments:
            if all(
                rule[key][0] <= row[f"{key}_score"] <= rule[key][1]
                for key in ("r", "f", "m")
                if key in rule
            ):
                row["rfm_segment"] = slug
                break

    for row in rows.values():
        if engagement is None:
            row["engagement_points"], row["engagement_tier"] = 0, ""
            continue
        values = {
            "frequency": row["frequency"],
            "monetary": row["monetary"],
            "recency_days": row["recency_days"],
            "emails_sent": row["emails_sent"],
            "emails_opened": row["emails_opened"],
            "emails_clicked": row["emails_clicked"],
            "r_score": row["r_score"],
            "f_score": row["f_score"],
            "m_score": row["m_score"],
            "days_since_last_activity": row["_days_since_last_activity"],
            "events_30d": row["_events_30d"],
            "events_90d": row["_events_90d"],
        }
        row["engagement_points"], row["engagement_tier"] = reference_engagement(engagement, values)
    for row in rows.values():
        for key in [k for k in row if k.startswith("_")]:
            del row[key]
    return rows


# --- Awkward data --------------------------------------------------------------------------

AS_OF = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)

#: Values chosen for ties, zeros, a refund, and sums that floats get wrong (0.1 + 0.2).
VALUES = [
    None,
    Decimal("0.00"),
    Decimal("0.01"),
    Decimal("0.10"),
    Decimal("0.20"),
    Decimal("0.30"),
    Decimal("9.99"),
    Decimal("10.00"),
    Decimal("24.99"),
    Decimal("25.00"),
    Decimal("100.00"),
    Decimal("499.99"),
    Decimal("500.00"),
    Decimal("1234.56"),
    Decimal("-5.00"),
]

#: Ages (before as_of) on and around the day and window boundaries; negative: after as_of.
AGES = [
    timedelta(0),
    US,
    DAY - US,
    DAY,
    DAY + US,
    29 * DAY,
    30 * DAY - US,
    30 * DAY,
    30 * DAY + US,
    31 * DAY,
    89 * DAY + timedelta(hours=23, microseconds=999_999),
    90 * DAY,
    90 * DAY + US,
    180 * DAY,
    365 * DAY + timedelta(seconds=1),
    400 * DAY,
    -US,
    -DAY,
]

TYPES = ["purchase", "order", "session", "page_view", "email_click", "Purchase"]


def random_events(
    rng: random.Random, customer_ids: Sequence[int], *, orphan_id: int, as_of: datetime = AS_OF
) -> list[RefEvent]:
    """Events for the given customers (some get none) plus a few for a missing customer."""
    events = []
    for cid in [*customer_ids, orphan_id, orphan_id]:
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 5, 8])):
            type_ = rng.choice(TYPES)
            age = rng.choice(AGES)
            if rng.random() < 0.3:  # some continuous times, so not everything ties
                age = timedelta(
                    seconds=rng.randrange(0, 500 * 86400), microseconds=rng.randrange(10**6)
                )
            value = rng.choice(VALUES) if type_ in {"purchase", "order"} else None
            if type_ not in {"purchase", "order"} and rng.random() < 0.1:
                value = Decimal("3.00")  # a value on a non-purchase must not count
            events.append(RefEvent(cid, type_, as_of - age, value))
    return events
