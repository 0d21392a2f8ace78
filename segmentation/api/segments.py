"""Segments API: CRUD, members (static membership by API), preview, refresh.

Marketers (and staff) manage segments; integrators may read them and their members (to sync
an audience elsewhere); outsiders get 403.
"""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from abtest.api.pagination import CursorPagination
from abtest.errors import ServiceError
from abtest.roles import IsMarketer, IsMarketerOrIntegrator
from segmentation.models import RefreshRun, Segment, SegmentKind, SegmentMembership
from segmentation.rules import RuleError
from segmentation.selectors import segment_preview
from segmentation.services import segments as segment_services
from segmentation.services.refresh import refresh_run_submit

MAX_IDENTIFIERS = 10_000
PREVIEW_SAMPLE_MAX = 100


class SegmentPermission(IsMarketerOrIntegrator):
    """Marketers and integrators read; marketers (and staff) write."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return super().has_permission(request, view)
        return IsMarketer().has_permission(request, view)


class SegmentSerializer(serializers.ModelSerializer):
    """A segment. ``rule``: the rule tree (rule segments), ``{"r": [lo, hi], "f": [lo, hi]}``
    (RFM segments) or nothing (static segments); see the Rule JSON reference."""

    slug = serializers.RegexField(
        r"^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$",
        required=False,
        max_length=200,
        error_messages={"invalid": "A slug is lowercase letters, digits and hyphens."},
    )
    rule = serializers.JSONField(required=False, allow_null=True)

    class Meta:
        model = Segment
        fields = [
            "id",
            "name",
            "slug",
            "description",
            "kind",
            "rule",
            "position",
            "size",
            "refreshed_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["position", "size", "refreshed_at", "created_at", "updated_at"]
        extra_kwargs = {"slug": {"validators": []}}

    def validate_kind(self, value):
        if self.instance is not None and value != self.instance.kind:
            raise serializers.ValidationError("A segment's kind cannot change.")
        return value

    def validate(self, attrs):
        kind = self.instance.kind if self.instance is not None else attrs.get("kind")
        if "rule" in attrs and attrs["rule"] is None and kind == SegmentKind.RULE:
            raise serializers.ValidationError({"rule": ["A rule segment needs a rule."]})
        if "rule" in attrs and attrs["rule"] is None and kind == SegmentKind.RFM:
            raise serializers.ValidationError({"rule": ["An RFM segment needs its score ranges."]})
        return attrs


class MemberSerializer(serializers.ModelSerializer):
    external_id = serializers.CharField(source="customer.external_id")
    email = serializers.EmailField(source="customer.email", allow_null=True)
    first_name = serializers.CharField(source="customer.first_name")
    last_name = serializers.CharField(source="customer.last_name")

    class Meta:
        model = SegmentMembership
        fields = ["external_id", "email", "first_name", "last_name", "joined_at"]


class IdentifiersSerializer(serializers.Serializer):
    external_ids = serializers.ListField(
        child=serializers.CharField(max_length=255), required=False, max_length=MAX_IDENTIFIERS
    )
    emails = serializers.ListField(
        child=serializers.CharField(max_length=254), required=False, max_length=MAX_IDENTIFIERS
    )

    def validate(self, attrs):
        if not attrs.get("external_ids") and not attrs.get("emails"):
            raise serializers.ValidationError("Send external_ids and/or emails.")
        return attrs


class MembershipChangeSerializer(serializers.Serializer):
    changed = serializers.IntegerField(help_text="Customers added (or removed).")
    unknown = serializers.ListField(child=serializers.CharField())
    size = serializers.IntegerField()


class PreviewRequestSerializer(serializers.Serializer):
    rule = serializers.JSONField()
    sample_size = serializers.IntegerField(
        min_value=0, max_value=PREVIEW_SAMPLE_MAX, default=10, required=False
    )


class PreviewResponseSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    sample = serializers.ListField(child=serializers.DictField())


class RefreshRunSerializer(serializers.ModelSerializer):
    percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = RefreshRun
        fields = [
            "id",
            "status",
            "trigger",
            "as_of",
            "step",
            "steps_done",
            "steps_total",
            "percent",
            "timings",
            "message",
            "created_at",
            "started_at",
            "finished_at",
        ]


def _rule_error(error: RuleError) -> ServiceError:
    return ServiceError(str(error), field="rule", code="invalid_rule")


class SegmentViewSet(viewsets.ModelViewSet):
    """Segments by id. Creating, editing and deleting go through the same validation as the
    pages (rule structure, referenced segments, cycles, reserved slugs)."""

    queryset = Segment.objects.all()
    serializer_class = SegmentSerializer
    permission_classes = [SegmentPermission]
    filter_backends: list = []

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = segment_services.segment_create(
            name=data["name"],
            kind=data["kind"],
            rule=data.get("rule"),
            description=data.get("description", ""),
            slug=data.get("slug"),
            created_by=self.request.user,
        )

    def perform_update(self, serializer):
        data = serializer.validated_data
        serializer.instance = segment_services.segment_update(
            segment=serializer.instance,
            name=data.get("name"),
            description=data.get("description"),
            rule=data.get("rule") if "rule" in data else None,
            slug=data.get("slug"),
        )

    def perform_destroy(self, instance):
        segment_services.segment_delete(segment=instance)

    @extend_schema(responses=MemberSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="members", pagination_class=CursorPagination)
    def members(self, request: Request, pk=None) -> Response:
        """Current members, newest first, with a cursor."""
        segment = self.get_object()
        memberships = SegmentMembership.objects.filter(
            segment=segment, left_at__isnull=True
        ).select_related("customer")
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(memberships, request, view=self)
        return paginator.get_paginated_response(MemberSerializer(page, many=True).data)

    def _change_members(self, request: Request, *, remove: bool) -> Response:
        segment = self.get_object()
        if segment.kind != SegmentKind.STATIC:
            raise ServiceError(
                "Only static segments take members by hand; rule and RFM segments follow their "
                "definition.",
                field="segment",
            )
        payload = IdentifiersSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        change = (
            segment_services.static_segment_remove
            if remove
            else segment_services.static_segment_add
        )
        result = change(
            segment=segment,
            external_ids=payload.validated_data.get("external_ids"),
            emails=payload.validated_data.get("emails"),
        )
        segment.refresh_from_db(fields=["size"])
        return Response(
            {"changed": result.count, "unknown": list(result.unknown), "size": segment.size}
        )

    @extend_schema(request=IdentifiersSerializer, responses=MembershipChangeSerializer)
    @members.mapping.post
    def add_members(self, request: Request, pk=None) -> Response:
        """Add customers to a static segment by external id and/or email."""
        return self._change_members(request, remove=False)

    @extend_schema(request=IdentifiersSerializer, responses=MembershipChangeSerializer)
    @action(detail=True, methods=["post"], url_path="members/remove")
    def remove_members(self, request: Request, pk=None) -> Response:
        """Remove customers from a static segment (their membership history is kept)."""
        return self._change_members(request, remove=True)

    @extend_schema(
        request=None,
        responses=inline_serializer(
            "SegmentRefreshResult",
            fields={
                "joined": serializers.IntegerField(),
                "left": serializers.IntegerField(),
                "size": serializers.IntegerField(),
            },
        ),
    )
    @action(detail=True, methods=["post"], url_path="refresh")
    def refresh(self, request: Request, pk=None) -> Response:
        """Refresh this segment's membership now, from the current metrics."""
        result = segment_services.segment_refresh(segment=self.get_object())
        return Response({"joined": result.joined, "left": result.left, "size": result.size})

    @extend_schema(request=PreviewRequestSerializer, responses=PreviewResponseSerializer)
    @action(detail=False, methods=["post"], url_path="preview")
    def preview(self, request: Request) -> Response:
        """How many customers a rule matches now, and a sample of them. Nothing is saved."""
        payload = PreviewRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            result = segment_preview(
                rule=payload.validated_data["rule"],
                sample_size=payload.validated_data["sample_size"],
            )
        except RuleError as error:
            raise _rule_error(error) from None
        return Response(
            {
                "count": result.count,
                "sample": [
                    {
                        "external_id": c.external_id,
                        "email": c.email,
                        "name": c.name,
                    }
                    for c in result.sample
                ],
            }
        )


class RefreshRunViewSet(viewsets.ReadOnlyModelViewSet):
    """Runs of the refresh pipeline (metrics, RFM, tiers, every segment). POST starts one."""

    queryset = RefreshRun.objects.all()
    serializer_class = RefreshRunSerializer
    permission_classes = [SegmentPermission]
    filter_backends: list = []

    @extend_schema(request=None, responses={202: RefreshRunSerializer})
    def create(self, request: Request) -> Response:
        with transaction.atomic():
            run = refresh_run_submit(created_by=request.user, trigger="api")
        run.refresh_from_db()
        return Response(RefreshRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)
