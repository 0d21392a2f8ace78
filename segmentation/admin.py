"""Admin for staff: see and fix any record. Large tables avoid full counts and big widgets."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from abtest.admin_actions import export_as_csv
from abtest.errors import ServiceError
from segmentation.models import (
    Customer,
    CustomerEventSummary,
    CustomerMetrics,
    EngagementModel,
    Event,
    EventSummaryState,
    ImportJob,
    MetricsState,
    RefreshRun,
    Segment,
    SegmentMembership,
    SegmentSizeSnapshot,
    StaleCustomerMetrics,
)


class ReadOnlyAdminMixin:
    """Derived or historical records: staff may look and export, never edit by hand."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class CustomerMetricsInline(admin.StackedInline):
    model = CustomerMetrics
    can_delete = False
    extra = 0
    max_num = 0
    readonly_fields = [field.name for field in CustomerMetrics._meta.fields]
    fields = readonly_fields


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = (
        "external_id",
        "email",
        "first_name",
        "last_name",
        "subscription_status",
        "created_at",
    )
    list_filter = ("subscription_status", "locale")
    search_fields = ("=external_id", "email", "first_name", "last_name")
    readonly_fields = ("created_at", "updated_at")
    inlines = [CustomerMetricsInline]
    show_full_result_count = False
    list_per_page = 50
    actions = [export_as_csv]


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("id", "customer", "type", "occurred_at", "value", "source", "event_id")
    list_select_related = ("customer",)
    raw_id_fields = ("customer",)
    search_fields = ("=customer__external_id", "=event_id", "=type")
    show_full_result_count = False
    list_per_page = 50
    actions = [export_as_csv]


@admin.register(CustomerEventSummary)
class CustomerEventSummaryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Derived from the events by the refresh (PostgreSQL); rebuilt, never edited."""

    list_display = ("customer", "type", "count", "value_cents", "first_at", "last_at")
    list_select_related = ("customer",)
    list_filter = ("type",)
    search_fields = ("=customer__external_id", "customer__email")
    raw_id_fields = ("customer",)
    show_full_result_count = False
    actions = [export_as_csv]


@admin.register(EventSummaryState)
class EventSummaryStateAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("last_event_id", "max_occurred_at", "synced_at")


@admin.register(MetricsState)
class MetricsStateAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """What the last metrics recompute read; the next one starts from it (PostgreSQL)."""

    list_display = ("as_of", "last_event_id", "purchase_types", "computed_at")


@admin.register(StaleCustomerMetrics)
class StaleCustomerMetricsAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Customers whose events changed since the last recompute (filled by triggers)."""

    list_display = ("customer_id",)
    show_full_result_count = False


@admin.register(CustomerMetrics)
class CustomerMetricsAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "customer",
        "recency_days",
        "frequency",
        "monetary",
        "r_score",
        "f_score",
        "m_score",
        "rfm_segment",
        "engagement_tier",
        "computed_at",
    )
    list_select_related = ("customer",)
    list_filter = ("rfm_segment", "engagement_tier", "r_score", "f_score", "m_score")
    search_fields = ("=customer__external_id", "customer__email")
    raw_id_fields = ("customer",)
    show_full_result_count = False
    actions = [export_as_csv]


class SegmentAdminForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ["name", "slug", "description", "kind", "rule", "position", "created_by"]

    def clean(self):
        cleaned = super().clean()
        from segmentation.services.segments import segment_definition_validate

        try:
            segment_definition_validate(
                kind=cleaned.get("kind"),
                rule=cleaned.get("rule"),
                slug=cleaned.get("slug") or (self.instance.slug if self.instance.pk else None),
            )
        except ServiceError as error:
            raise forms.ValidationError({"rule": error.message}) from None
        return cleaned


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentAdminForm
    list_display = ("name", "slug", "kind", "size", "refreshed_at", "position")
    list_filter = ("kind",)
    search_fields = ("name", "slug", "description")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("size", "refreshed_at", "created_at", "updated_at")
    raw_id_fields = ("created_by",)
    actions = [export_as_csv]


@admin.register(SegmentMembership)
class SegmentMembershipAdmin(admin.ModelAdmin):
    list_display = ("segment", "customer", "joined_at", "left_at")
    list_select_related = ("segment", "customer")
    list_filter = ("segment",)
    raw_id_fields = ("segment", "customer")
    search_fields = ("=customer__external_id", "customer__email")
    show_full_result_count = False
    actions = [export_as_csv]


@admin.register(SegmentSizeSnapshot)
class SegmentSizeSnapshotAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("segment", "date", "size", "joined", "left")
    list_select_related = ("segment",)
    list_filter = ("segment",)
    date_hierarchy = "date"
    actions = [export_as_csv]


class EngagementModelForm(forms.ModelForm):
    class Meta:
        model = EngagementModel
        fields = ["name", "definition", "is_active"]

    def clean_definition(self):
        from segmentation.services.engagement import engagement_definition_validate

        definition = self.cleaned_data["definition"]
        try:
            engagement_definition_validate(definition)
        except ServiceError as error:
            raise forms.ValidationError(error.message) from None
        return definition


@admin.register(EngagementModel)
class EngagementModelAdmin(admin.ModelAdmin):
    form = EngagementModelForm
    list_display = ("name", "is_active", "updated_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    actions = [export_as_csv]


@admin.register(ImportJob)
class ImportJobAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "kind",
        "filename",
        "status",
        "processed_rows",
        "created",
        "updated",
        "unchanged",
        "rejected",
        "created_by",
        "created_at",
    )
    list_filter = ("kind", "status")
    list_select_related = ("created_by",)
    search_fields = ("filename",)
    actions = [export_as_csv]


@admin.register(RefreshRun)
class RefreshRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "trigger", "status", "as_of", "step", "created_at", "finished_at")
    list_filter = ("status", "trigger")
    list_select_related = ("created_by",)
    actions = [export_as_csv]
