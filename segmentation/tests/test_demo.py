"""The CDNOW dataset loads exactly, with metrics as of 1998-07-01 checked independently."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from django.db.models import Max, Min, Sum

from segmentation.models import Customer, CustomerMetrics, Event, Segment
from segmentation.services.demo import CDNOW_AS_OF, cdnow_lines

pytestmark = pytest.mark.django_db


def reference_scores() -> pd.DataFrame:
    """RFM straight from the file with pandas, following the rules word for word."""
    lines = pd.DataFrame(
        [(line.customer_id, line.day, line.dollars) for line in cdnow_lines()],
        columns=["customer", "day", "dollars"],
    )
    per = lines.groupby("customer").agg(
        frequency=("day", "size"), monetary=("dollars", "sum"), last=("day", "max")
    )
    as_of = CDNOW_AS_OF.date()
    per["recency_days"] = [(as_of - d).days for d in per["last"]]
    n = len(per)

    def score(values: pd.Series, larger_is_worse: bool) -> pd.Series:
        ordered = values.sort_values().tolist()
        import bisect

        if larger_is_worse:  # w = customers with a strictly larger value
            w = [n - bisect.bisect_right(ordered, v) for v in values]
        else:  # w = customers with a strictly smaller value
            w = [bisect.bisect_left(ordered, v) for v in values]
        return pd.Series([1 + (5 * x) // n for x in w], index=values.index)

    per["r"] = score(per["recency_days"], larger_is_worse=True)
    per["f"] = score(per["frequency"], larger_is_worse=False)
    per["m"] = score(per["monetary"], larger_is_worse=False)
    return per


def test_the_file_is_the_published_dataset():
    lines = list(cdnow_lines())
    assert len(lines) == 69_659
    assert len({line.customer_id for line in lines}) == 23_570
    assert min(line.day for line in lines).isoformat() == "1997-01-01"
    assert max(line.day for line in lines).isoformat() == "1998-06-30"


@pytest.mark.slow
def test_load_cdnow_loads_exactly_the_dataset_and_scores_match_an_independent_reference():
    out = io.StringIO()
    call_command("load_cdnow", stdout=out)
    assert "Loaded 23,570 customers and 69,659 purchases." in out.getvalue()

    assert Customer.objects.count() == 23_570
    assert Event.objects.count() == Event.objects.filter(type="purchase").count() == 69_659
    span = Event.objects.aggregate(first=Min("occurred_at"), last=Max("occurred_at"))
    assert span == {
        "first": datetime(1997, 1, 1, tzinfo=UTC),
        "last": datetime(1998, 6, 30, tzinfo=UTC),
    }
    first = Event.objects.filter(customer__external_id="00001").get()
    assert (first.value, first.properties) == (Decimal("11.77"), {"cds": 1})
    reference = reference_scores()
    total = Event.objects.aggregate(total=Sum("value"))["total"]  # SQLite sums in floating point
    assert round(total, 2) == reference["monetary"].sum() == Decimal("2500315.63")

    rows = CustomerMetrics.objects.values_list(
        "customer__external_id",
        "recency_days",
        "frequency",
        "monetary",
        "r_score",
        "f_score",
        "m_score",
        "as_of",
    )
    assert len(rows) == 23_570
    mismatches = []
    for external_id, recency, frequency, monetary, r, f, m, as_of in rows:
        expected = reference.loc[external_id]
        got = (recency, frequency, monetary, r, f, m)
        want = (
            expected["recency_days"],
            expected["frequency"],
            expected["monetary"],
            expected["r"],
            expected["f"],
            expected["m"],
        )
        if tuple(got) != tuple(want) or as_of != CDNOW_AS_OF:
            mismatches.append((external_id, got, want))
    assert not mismatches, mismatches[:5]
    champions = Segment.objects.get(slug="champions")
    assert champions.size == CustomerMetrics.objects.filter(rfm_segment="champions").count() > 0

    with pytest.raises(CommandError, match="empty database"):
        call_command("load_cdnow", stdout=io.StringIO())


@pytest.mark.slow
def test_seed_demo_dresses_cdnow_up_and_skips_a_loaded_database():
    out = io.StringIO()
    call_command("seed_demo", "--if-empty", stdout=out)
    assert "Demo data loaded: 23,570 customers, 69,659 purchases" in out.getvalue()
    assert not Customer.objects.filter(email__isnull=True).exists()
    assert Customer.objects.exclude(first_name="").count() == 23_570
    assert Event.objects.filter(type="session").count() > 50_000
    for slug in ("recent-browsers", "big-spenders", "loyalty-at-risk", "champions-europe"):
        assert Segment.objects.get(slug=slug).refreshed_at is not None
    assert Segment.objects.get(slug="vip-list").size == 25
    assert Segment.objects.get(slug="recent-browsers").size > 0, "recent sessions exist"
    out = io.StringIO()
    call_command("seed_demo", "--if-empty", stdout=out)
    assert "already has customers" in out.getvalue()
