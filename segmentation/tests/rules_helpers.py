"""Shared data for the rule, selector and segment tests: four customers who differ in every
field a rule can test, and their events, around a fixed ``NOW``."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from segmentation.models import Customer, CustomerMetrics, Event
from segmentation.rules import rule_compile, rule_matches
from segmentation.tests.factories import CustomerFactory, EventFactory

UTC = dt.UTC
NOW = dt.datetime(2024, 7, 15, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)


def make_customer(external_id: str, *, created_at: dt.datetime, metrics: dict | None, **fields):
    customer = CustomerFactory(external_id=external_id, **fields)
    Customer.objects.filter(pk=customer.pk).update(created_at=created_at, updated_at=created_at)
    if metrics is not None:
        CustomerMetrics.objects.create(customer=customer, **metrics)
    return customer


def make_people() -> dict[str, Customer]:
    """alice: engaged, bob: lapsed and unsubscribed, carol: no metrics row and no events,
    dave: metrics row with nothing set, sessions only."""
    people = {
        "alice": make_customer(
            "alice",
            email="Alice.Smith@Example.com",
            first_name="Alice",
            last_name="Smith",
            locale="en-GB",
            time_zone="Europe/London",
            attributes={"plan": "pro", "seats": 5, "beta": True, "tags": ["a", "b"], "a__b": "x"},
            created_at=dt.datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
            metrics={
                "frequency": 5,
                "monetary": Decimal("120.50"),
                "recency_days": 3,
                "first_purchase_at": NOW - 200 * DAY,
                "last_purchase_at": NOW - 3 * DAY,
                "last_activity_at": NOW - 1 * DAY,
                "emails_sent": 10,
                "emails_opened": 6,
                "emails_clicked": 2,
                "r_score": 5,
                "f_score": 4,
                "m_score": 3,
                "rfm_segment": "champions",
                "engagement_points": 80,
                "engagement_tier": "Star",
            },
        ),
        "bob": make_customer(
            "bob",
            email=None,
            first_name="Bob",
            last_name="Jones",
            locale="",
            attributes={"plan": "team", "seats": "5", "beta": False, "contains": "y"},
            subscription_status="unsubscribed",
            created_at=dt.datetime(2024, 6, 30, 23, 0, tzinfo=UTC),
            metrics={
                "frequency": 1,
                "monetary": Decimal("10"),
                "recency_days": 100,
                "first_purchase_at": NOW - 100 * DAY,
                "last_purchase_at": NOW - 100 * DAY,
                "last_activity_at": NOW - 100 * DAY,
                "emails_sent": 3,
                "r_score": 2,
                "f_score": 1,
                "m_score": 1,
                "rfm_segment": "hibernating",
                "engagement_points": 5,
                "engagement_tier": "Lost",
            },
        ),
        "carol": make_customer(
            "carol",
            email="carol@example.com",
            first_name="Carol",
            last_name="",
            locale="fr-FR",
            attributes={"plan": None, "seats": 12.5},
            created_at=dt.datetime(2024, 7, 1, 0, 0, tzinfo=UTC),
            metrics=None,
        ),
        "dave": make_customer(
            "dave",
            email="dave@sample.org",
            first_name="",
            last_name="Brown",
            attributes={},
            subscription_status="bounced",
            created_at=dt.datetime(2023, 12, 31, 23, 59, tzinfo=UTC),
            metrics={},
        ),
    }
    return people


def make_events(people: dict[str, Customer]) -> None:
    alice, bob, dave = people["alice"], people["bob"], people["dave"]
    for when in (NOW - DAY, NOW - 10 * DAY, NOW - 40 * DAY):
        EventFactory(customer=alice, type="purchase", occurred_at=when)
    EventFactory(customer=alice, type="session", occurred_at=NOW - 5 * DAY)
    EventFactory(customer=bob, type="purchase", occurred_at=NOW - 100 * DAY)
    EventFactory(customer=bob, type="session", occurred_at=NOW - 200 * DAY)
    for hours in (1, 2, 3):
        EventFactory(customer=dave, type="session", occurred_at=NOW - hours * dt.timedelta(hours=1))
    assert Event.objects.count() == 9


def matches(rule: dict, *, now: dt.datetime = NOW) -> set[str]:
    """External ids of the customers the rule matches.

    Checks that ``rule_matches`` (which counts metrics-only rules over the metrics table on
    PostgreSQL) finds the same customers as the plain ``Customer`` query of ``rule_compile``.
    """
    q = rule_compile(rule, now=now)
    found = set(Customer.objects.filter(q).values_list("external_id", flat=True))
    rooted = rule_matches(rule, now=now)
    ids = list(rooted.ids.values_list("cid", flat=True))
    assert len(ids) == len(set(ids)), rule
    by_ids = set(Customer.objects.filter(pk__in=ids).values_list("external_id", flat=True))
    assert by_ids == found, rule
    assert set(rooted.customers.values_list("external_id", flat=True)) == found, rule
    return found


def one(condition: dict) -> dict:
    return {"all": [condition]}
