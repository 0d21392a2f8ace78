"""Events API: batch ingestion (POST) and listing (GET)."""

from __future__ import annotations

from typing import Any

import msgspec
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from abtest.api.pagination import CursorPagination
from abtest.roles import IsIntegrator, IsMarketerOrIntegrator
from segmentation.api.common import RowDecoder, decode_items, row_errors, truthy
from segmentation.models import Customer, Event
from segmentation.services.events import MAX_BATCH as MAX_EVENTS
from segmentation.services.events import events_ingest
from segmentation.services.validation import clean_event


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    customer: str | int
    type: str
    occurred_at: str
    value: Any = None
    properties: dict[str, Any] | None = None
    source: str | None = None
    event_id: str | int | None = None


def _clean_event_in(item: EventIn):
    return clean_event(
        {
            "customer": item.customer,
            "type": item.type,
            "occurred_at": item.occurred_at,
            "value": item.value,
            "properties": item.properties,
            "source": item.source,
            "event_id": item.event_id,
        }
    )


_decode_events = RowDecoder(EventIn)


class EventSerializer(serializers.ModelSerializer):
    customer = serializers.CharField(source="customer.external_id")

    class Meta:
        model = Event
        fields = [
            "id",
            "customer",
            "type",
            "occurred_at",
            "value",
            "properties",
            "source",
            "event_id",
        ]


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    customers_created = serializers.IntegerField()
    rejected = serializers.ListField(child=serializers.DictField())


def _event_item() -> serializers.Serializer:
    """The schema of one event sent to POST (the body is read by msgspec, not by this)."""
    return inline_serializer(
        "EventItem",
        fields={
            "customer": serializers.CharField(help_text="The customer's external_id."),
            "type": serializers.CharField(help_text="Free text: purchase, session, page_view ..."),
            "occurred_at": serializers.DateTimeField(help_text="ISO 8601; naive means UTC."),
            "value": serializers.DecimalField(
                max_digits=14, decimal_places=2, required=False, allow_null=True
            ),
            "properties": serializers.DictField(required=False),
            "source": serializers.CharField(required=False),
            "event_id": serializers.CharField(
                required=False, help_text="Idempotency key, unique per source."
            ),
        },
    )


_EVENT_ITEM = _event_item()
_EVENT_BATCH = PolymorphicProxySerializer(
    component_name="EventBatch",
    serializers=[_EVENT_ITEM, type(_EVENT_ITEM)(many=True, max_length=MAX_EVENTS)],
    resource_type_field_name=None,
    many=False,
)


class EventApi(APIView):
    """Ingest events (POST) and list them (GET)."""

    permission_classes = [IsMarketerOrIntegrator]
    # GET pages with this (read by the schema too).
    pagination_class = CursorPagination

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsIntegrator()]
        return super().get_permissions()

    @extend_schema(
        request=_EVENT_BATCH,
        parameters=[
            OpenApiParameter(
                "create_customers",
                OpenApiTypes.BOOL,
                description="Create customers for unknown external ids instead of rejecting "
                "those events.",
            )
        ],
        responses={200: IngestResultSerializer},
        description=(
            f"Send one event object or a list of up to {MAX_EVENTS:,}. A repeated "
            "(source, event_id) is counted as a duplicate and not stored twice. Invalid items "
            "are rejected one by one with their index and reason; the rest are stored."
        ),
    )
    def post(self, request: Request) -> Response:
        items = decode_items(request.body, limit=MAX_EVENTS)
        rows, errors = _decode_events(items, _clean_event_in)
        result = events_ingest(
            rows=rows, create_customers=truthy(request.query_params.get("create_customers"))
        )
        return Response(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "customers_created": result.customers_created,
                "rejected": row_errors(sorted(errors + result.rejected, key=lambda e: e.row)),
            },
            status=status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("customer", str, description="The customer's external_id."),
            OpenApiParameter("type", str),
        ],
        responses=EventSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        events = Event.objects.select_related("customer")
        if request.query_params.get("customer"):
            customer = get_object_or_404(Customer, external_id=request.query_params["customer"])
            events = events.filter(customer=customer)
        if request.query_params.get("type"):
            events = events.filter(type=request.query_params["type"])
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(EventSerializer(page, many=True).data)
