"""Staff can see, search, fix and export every record in the admin."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib import admin
from django.urls import reverse

from segmentation.models import (
    CustomerEventSummary,
    CustomerMetrics,
    EngagementModel,
    EventSummaryState,
    ImportJob,
    MetricsState,
    RefreshRun,
    Segment,
    SegmentMembership,
    SegmentSizeSnapshot,
    StaleCustomerMetrics,
)
from segmentation.tests.factories import CustomerFactory, PurchaseFactory, SegmentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def records():
    customer = CustomerFactory(external_id="adm-1", email="adm@example.com")
    PurchaseFactory(customer=customer)
    CustomerMetrics.objects.create(customer=customer, frequency=1, r_score=5, f_score=1)
    segment = SegmentFactory(slug="admin-static", kind="static")
    SegmentMembership.objects.create(
        segment=segment, customer=customer, joined_at="2024-01-01T00:00:00Z"
    )
    SegmentSizeSnapshot.objects.create(segment=segment, date="2024-01-01", size=1, joined=1)
    ImportJob.objects.create(kind="customers", filename="x.csv")
    RefreshRun.objects.create(as_of="2024-01-01T00:00:00Z")
    # Written by hand here (on SQLite nothing fills them).
    CustomerEventSummary.objects.create(
        customer=customer,
        type="purchase",
        count=1,
        first_at="2024-01-01T00:00:00Z",
        last_at="2024-01-01T00:00:00Z",
    )
    EventSummaryState.objects.update_or_create(pk=1, defaults={"last_event_id": 1})
    MetricsState.objects.update_or_create(pk=1, defaults={"last_event_id": 1})
    StaleCustomerMetrics.objects.get_or_create(customer_id=customer.pk)
    return customer


MODELS = [
    "customer",
    "event",
    "customermetrics",
    "customereventsummary",
    "eventsummarystate",
    "metricsstate",
    "stalecustomermetrics",
    "segment",
    "segmentmembership",
    "segmentsizesnapshot",
    "engagementmodel",
    "importjob",
    "refreshrun",
]


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_working_changelist_search_and_detail(
    client_for, staff_user, records, model
):
    client = client_for(staff_user)
    url = reverse(f"admin:segmentation_{model}_changelist")
    assert client.get(url).status_code == 200
    model_admin = admin.site._registry[
        next(m for m in admin.site._registry if m._meta.model_name == model)
    ]
    if model_admin.search_fields:
        assert client.get(url, {"q": "adm-1"}).status_code == 200
    obj = model_admin.model.objects.first()
    change = reverse(f"admin:segmentation_{model}_change", args=[obj.pk])
    assert client.get(change).status_code == 200


def test_metrics_are_read_only(client_for, staff_user, records):
    client = client_for(staff_user)
    metrics = CustomerMetrics.objects.get()
    url = reverse("admin:segmentation_customermetrics_change", args=[metrics.pk])
    response = client.post(url, {"frequency": 99})
    assert response.status_code == 403
    metrics.refresh_from_db()
    assert metrics.frequency == 1
    assert client.get(reverse("admin:segmentation_customermetrics_add")).status_code == 403


def test_csv_export_action_streams_the_selected_rows(client_for, staff_user, records):
    client = client_for(staff_user)
    response = client.post(
        reverse("admin:segmentation_customer_changelist"),
        {"action": "export_as_csv", "_selected_action": [records.pk]},
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["id", "external_id", "email"]
    assert rows[1][1:3] == ["adm-1", "adm@example.com"]


def test_segment_admin_validates_rules(client_for, staff_user, records):
    client = client_for(staff_user)
    response = client.post(
        reverse("admin:segmentation_segment_add"),
        {
            "name": "Broken",
            "slug": "broken",
            "description": "",
            "kind": "rule",
            "rule": '{"all": [{"field": "nope", "op": "eq", "value": 1}]}',
            "position": 0,
        },
    )
    assert response.status_code == 200
    assert "nope" in response.text
    assert not Segment.objects.filter(slug="broken").exists()


def test_engagement_model_admin_validates_the_definition(client_for, staff_user, db):
    client = client_for(staff_user)
    response = client.post(
        reverse("admin:segmentation_engagementmodel_add"),
        {"name": "Bad", "definition": '{"rules": [], "tiers": []}', "is_active": ""},
    )
    assert response.status_code == 200
    assert EngagementModel.objects.filter(name="Bad").count() == 0


def test_non_staff_cannot_open_the_admin(client_for, marketer):
    response = client_for(marketer).get(reverse("admin:segmentation_customer_changelist"))
    assert response.status_code == 302


def test_csv_export_neutralises_formulas(client_for, staff_user, records):
    type(records).objects.filter(pk=records.pk).update(
        first_name='=HYPERLINK("http://evil","x")', last_name="-2+3", locale="@SUM(A1)"
    )
    response = client_for(staff_user).post(
        reverse("admin:segmentation_customer_changelist"),
        {"action": "export_as_csv", "_selected_action": [records.pk]},
    )
    header, row = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    values = dict(zip(header, row, strict=True))
    assert values["first_name"] == '\'=HYPERLINK("http://evil","x")'
    assert values["last_name"] == "'-2+3"
    assert values["locale"] == "'@SUM(A1)"
    assert values["id"] == str(records.pk)
