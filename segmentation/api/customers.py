"""Customers API: CRUD by external_id and bulk upsert."""

from __future__ import annotations

from typing import Any

import msgspec
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from abtest.api.pagination import CursorPagination
from abtest.roles import IsIntegrator, IsMarketerOrIntegrator
from segmentation.api.common import RowDecoder, decode_items, row_errors
from segmentation.customer_selectors import ATTRIBUTE_KEY, CustomerFilters, customer_search
from segmentation.models import Customer, Segment, SubscriptionStatus
from segmentation.services import customers as customer_services
from segmentation.services.validation import (
    CUSTOMER_FIELDS,
    RowInvalid,
    clean_customer,
    clean_email,
    clean_locale,
    clean_time_zone,
)


class CustomerIn(msgspec.Struct, forbid_unknown_fields=True):
    """One customer in a bulk upsert; fields left out are not changed."""

    external_id: str | int
    email: str | None | msgspec.UnsetType = msgspec.UNSET
    first_name: str | None | msgspec.UnsetType = msgspec.UNSET
    last_name: str | None | msgspec.UnsetType = msgspec.UNSET
    locale: str | None | msgspec.UnsetType = msgspec.UNSET
    time_zone: str | None | msgspec.UnsetType = msgspec.UNSET
    subscription_status: str | None | msgspec.UnsetType = msgspec.UNSET
    attributes: dict[str, Any] | None | msgspec.UnsetType = msgspec.UNSET


def _clean_customer_in(item: CustomerIn):
    return clean_customer(
        {
            name: getattr(item, name)
            for name in item.__struct_fields__
            if getattr(item, name) is not msgspec.UNSET
        }
    )


_decode_customers = RowDecoder(CustomerIn)


class CustomerMetricsSerializer(serializers.Serializer):
    recency_days = serializers.IntegerField(allow_null=True)
    frequency = serializers.IntegerField()
    monetary = serializers.DecimalField(max_digits=16, decimal_places=2)
    first_purchase_at = serializers.DateTimeField(allow_null=True)
    last_purchase_at = serializers.DateTimeField(allow_null=True)
    last_activity_at = serializers.DateTimeField(allow_null=True)
    event_counts_30d = serializers.DictField(child=serializers.IntegerField())
    event_counts_90d = serializers.DictField(child=serializers.IntegerField())
    emails_sent = serializers.IntegerField()
    emails_opened = serializers.IntegerField()
    emails_clicked = serializers.IntegerField()
    r_score = serializers.IntegerField(allow_null=True)
    f_score = serializers.IntegerField(allow_null=True)
    m_score = serializers.IntegerField(allow_null=True)
    rfm_segment = serializers.CharField()
    engagement_points = serializers.IntegerField()
    engagement_tier = serializers.CharField()
    as_of = serializers.DateTimeField(allow_null=True)
    computed_at = serializers.DateTimeField(allow_null=True)


class CustomerSerializer(serializers.ModelSerializer):
    """A customer. Writes go through the same validation as bulk upserts."""

    metrics = serializers.SerializerMethodField()

    class Meta:
        model = Customer
        fields = [
            "external_id",
            *CUSTOMER_FIELDS,
            "created_at",
            "updated_at",
            "metrics",
        ]
        read_only_fields = ["created_at", "updated_at", "metrics"]
        # Uniqueness is checked by the service (case-insensitively for email).
        extra_kwargs = {"external_id": {"validators": []}, "email": {"validators": []}}

    @extend_schema_field(CustomerMetricsSerializer(allow_null=True))
    def get_metrics(self, customer: Customer) -> dict | None:
        try:
            metrics = customer.metrics
        except Customer.metrics.RelatedObjectDoesNotExist:
            return None
        return CustomerMetricsSerializer(metrics).data

    @staticmethod
    def _clean(cleaner, value):
        try:
            return cleaner(value)
        except RowInvalid as error:
            raise serializers.ValidationError(error.reason) from None

    def validate_email(self, value):
        return self._clean(clean_email, value)

    def validate_locale(self, value):
        return self._clean(clean_locale, value)

    def validate_time_zone(self, value):
        return self._clean(clean_time_zone, value)

    def validate_attributes(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


class BulkResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    unchanged = serializers.IntegerField()
    rejected = serializers.ListField(
        child=inline_serializer(
            "RejectedItem",
            fields={
                "index": serializers.IntegerField(),
                "column": serializers.CharField(allow_null=True),
                "reason": serializers.CharField(),
            },
        )
    )


class CustomerWritePermission(IsMarketerOrIntegrator):
    """Marketers and integrators read; integrators (and staff) write."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return super().has_permission(request, view)
        return IsIntegrator().has_permission(request, view)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter(
                "search", str, description="Prefix of email, name; or exact external id."
            ),
            OpenApiParameter("subscription_status", str, enum=SubscriptionStatus.values),
            OpenApiParameter("segment", str, description="Slug of a segment: its current members."),
            OpenApiParameter(
                "attributes.<key>",
                str,
                description="Attribute equality, e.g. `attributes.plan=pro` (repeatable).",
            ),
        ]
    )
)
class CustomerViewSet(viewsets.ModelViewSet):
    """Customers, addressed by their ``external_id``."""

    serializer_class = CustomerSerializer
    permission_classes = [CustomerWritePermission]
    pagination_class = CursorPagination
    lookup_field = "external_id"
    # Any external id, slashes included (``/customers/shop%2F12/``: the server decodes %2F
    # before routing); the only other route under customers/ is the list-level bulk/.
    lookup_value_regex = ".+"
    filter_backends: list = []

    def get_queryset(self):
        if self.action != "list":
            return Customer.objects.select_related("metrics")
        params = self.request.query_params
        segment = None
        if params.get("segment"):
            segment = Segment.objects.filter(slug=params["segment"]).first()
            if segment is None:
                raise ValidationError({"segment": [f"No segment {params['segment']!r}."]})
        status_filter = params.get("subscription_status", "")
        if status_filter and status_filter not in SubscriptionStatus.values:
            raise ValidationError(
                {"subscription_status": [f"Choose one of {', '.join(SubscriptionStatus.values)}."]}
            )
        attributes = tuple(
            (key.removeprefix("attributes."), value)
            for key, value in params.items()
            if key.startswith("attributes.")
        )
        for key, _ in attributes:
            if not ATTRIBUTE_KEY.fullmatch(key):
                raise ValidationError(
                    {
                        f"attributes.{key}": [
                            "Attribute keys are 1 to 64 letters, digits, '_' or '-' (without '__')."
                        ]
                    }
                )
        filters = CustomerFilters(
            search=params.get("search", ""),
            subscription_status=status_filter,
            segment=segment,
            attributes=attributes,
        )
        return customer_search(filters=filters).select_related("metrics")

    def perform_create(self, serializer):
        serializer.instance = customer_services.customer_create(values=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = customer_services.customer_update(
            customer=serializer.instance,
            values=serializer.validated_data,
            replace_attributes=not serializer.partial,
        )

    def perform_destroy(self, instance):
        customer_services.customer_delete(customer=instance)

    @extend_schema(
        request=inline_serializer(
            "CustomerBulkItem",
            fields={
                "external_id": serializers.CharField(),
                "email": serializers.EmailField(required=False, allow_null=True),
                "first_name": serializers.CharField(required=False),
                "last_name": serializers.CharField(required=False),
                "locale": serializers.CharField(required=False),
                "time_zone": serializers.CharField(required=False),
                "subscription_status": serializers.ChoiceField(
                    SubscriptionStatus.choices, required=False
                ),
                "attributes": serializers.DictField(required=False),
            },
            many=True,
        ),
        responses=BulkResultSerializer,
        description=(
            f"Create or update up to {customer_services.MAX_BATCH:,} customers by external_id. "
            "Fields left out are not changed; attributes are merged (null removes a key). "
            "Invalid items are rejected one by one with their index and reason; the rest are "
            "stored."
        ),
    )
    @action(detail=False, methods=["post"], url_path="bulk")
    def bulk(self, request: Request) -> Response:
        items = decode_items(request.body, limit=customer_services.MAX_BATCH)
        rows, errors = _decode_customers(items, _clean_customer_in)
        result = customer_services.customers_upsert(rows=rows)
        return Response(
            {
                "created": result.created,
                "updated": result.updated,
                "unchanged": result.unchanged,
                "rejected": row_errors(sorted(errors + result.rejected, key=lambda e: e.row)),
            }
        )
