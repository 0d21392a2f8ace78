from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import factory

from segmentation.models import Customer, Event, Segment, SegmentKind


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"c{n:06d}")
    email = factory.LazyAttribute(lambda o: f"{o.external_id}@example.com")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    attributes = factory.LazyFunction(dict)


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    customer = factory.SubFactory(CustomerFactory)
    type = "session"
    occurred_at = factory.LazyFunction(lambda: datetime(2024, 1, 1, tzinfo=UTC))
    properties = factory.LazyFunction(dict)


class PurchaseFactory(EventFactory):
    type = "purchase"
    value = Decimal("10.00")


class SegmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Segment

    name = factory.Sequence(lambda n: f"Segment {n}")
    slug = factory.Sequence(lambda n: f"segment-{n}")
    kind = SegmentKind.RULE
    rule = factory.LazyFunction(lambda: {"all": []})
