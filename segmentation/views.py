"""Pages for customers, segments, the RFM grid, the segment builder and CSV imports.

Thin function views: a role check, a form or a few parameters, one selector or service call,
a template. The same view serves the full page and, for htmx requests, only the fragment the
page swaps (``template.html#partial``); polled fragments stop polling with 286 when done.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import (
    HttpResponseClientRedirect,
    HttpResponseStopPolling,
    trigger_client_event,
)

from abtest.errors import ServiceError
from abtest.roles import role_required
from segmentation import builder
from segmentation.customer_selectors import (
    customer_count_estimate,
    customer_filter_choices,
    customer_memberships,
    customer_search,
    customer_timeline,
    keyset_page,
    rfm_grid,
    segment_recent_changes,
    segment_size_history,
    segments_overview,
)
from segmentation.forms import (
    CustomerFilterForm,
    ImportForm,
    RfmRangesForm,
    SegmentDetailsForm,
    StaticAddForm,
    StaticCsvForm,
)
from segmentation.models import (
    Customer,
    CustomerMetrics,
    ImportJob,
    RefreshRun,
    Segment,
    SegmentKind,
)
from segmentation.rules import RuleError, rule_validate

PAGE_SIZE = 50
MEMBERS_PAGE = 25
TIMELINE_PAGE = 50
PREVIEW_SAMPLE = 10
RECENT_IMPORTS = 20
#: How often progress bars poll (htmx ``every`` syntax).
POLL_EVERY = "1s"

CUSTOMER_ROLES = ("marketer", "integrator")
SEGMENT_ROLES = ("marketer",)


def _fragment_request(request: HttpRequest) -> bool:
    """An htmx request for a fragment (not a history restore, which needs the whole page)."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.history_restore_request


def _page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any],
    *,
    partial: str | None = None,
    status: int = 200,
) -> HttpResponse:
    """The full page, or for htmx fragment requests only ``template#partial``."""
    name = f"{template}#{partial}" if partial and _fragment_request(request) else template
    response = render(request, template_name=name, context=context, status=status)
    if partial:
        patch_vary_headers(response, ["HX-Request"])
    return response


def _int_param(request: HttpRequest, name: str) -> int | None:
    value = request.GET.get(name, "")
    return int(value) if value.isdigit() and len(value) < 19 else None


def _datetime_param(request: HttpRequest, name: str) -> dt.datetime | None:
    try:
        return parse_datetime(request.GET.get(name, "")[:64])
    except ValueError:  # well formed but not a real date
        return None


# --- Customers ---------------------------------------------------------------------------------


@require_GET
@role_required(*CUSTOMER_ROLES)
def customer_list(request: HttpRequest) -> HttpResponse:
    choices = customer_filter_choices()
    form = CustomerFilterForm(request.GET, choices=choices)
    customers = customer_search(filters=form.filters()).select_related("metrics")
    page = keyset_page(
        customers,
        after=_int_param(request, "after"),
        before=_int_param(request, "before"),
        size=PAGE_SIZE,
    )
    context = {
        "form": form,
        "page": page,
        "rfm_names": dict(choices.rfm_segments),
        "estimate": None if _fragment_request(request) else customer_count_estimate(),
    }
    return _page(request, "segmentation/customer_list.html", context, partial="results")


@require_GET
@role_required(*CUSTOMER_ROLES)
def customer_detail(request: HttpRequest, pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, pk=pk)
    before = _datetime_param(request, "before")
    events = customer_timeline(
        customer=customer,
        before=before,
        before_id=_int_param(request, "before_id") if before else None,
        limit=TIMELINE_PAGE + 1,
    )
    older = events[TIMELINE_PAGE] if len(events) > TIMELINE_PAGE else None
    events = events[:TIMELINE_PAGE]
    context: dict[str, Any] = {
        "customer": customer,
        "events": events,
        "older": events[-1] if older else None,
        "is_older_page": before is not None,
    }
    if _fragment_request(request):
        return _page(request, "segmentation/customer_detail.html", context, partial="timeline")
    metrics = CustomerMetrics.objects.filter(customer=customer).first()
    context |= {
        "metrics": metrics,
        "memberships": customer_memberships(customer=customer),
        "attributes": sorted((customer.attributes or {}).items()),
        "event_counts": _event_counts(metrics),
    }
    return _page(request, "segmentation/customer_detail.html", context, partial="timeline")


def _event_counts(metrics: CustomerMetrics | None) -> list[tuple[str, int, int]]:
    """(type, last 30 days, last 90 days) per event type."""
    if metrics is None:
        return []
    d30 = metrics.event_counts_30d or {}
    d90 = metrics.event_counts_90d or {}
    return [(t, d30.get(t, 0), d90.get(t, 0)) for t in sorted(set(d30) | set(d90))]


# --- RFM ---------------------------------------------------------------------------------------


@require_GET
@role_required(*SEGMENT_ROLES)
def rfm(request: HttpRequest) -> HttpResponse:
    return render(request, "segmentation/rfm.html", {"grid": rfm_grid()})


# --- Segments ----------------------------------------------------------------------------------


@require_GET
@role_required(*SEGMENT_ROLES)
def segment_list(request: HttpRequest) -> HttpResponse:
    context = {
        "overview": segments_overview(),
        "run": RefreshRun.objects.first(),
        "poll_every": POLL_EVERY,
    }
    return _page(request, "segmentation/segment_list.html", context, partial="segments")


@require_POST
@role_required(*SEGMENT_ROLES)
def refresh_create(request: HttpRequest) -> HttpResponse:
    from segmentation.services.refresh import refresh_run_submit

    run = refresh_run_submit(created_by=request.user, trigger="manual")
    if _fragment_request(request):
        return render(
            request,
            "segmentation/segment_list.html#refresh",
            {"run": run, "poll_every": POLL_EVERY},
        )
    messages.info(request, "Refresh started: segment sizes update when it is done.")
    return redirect("segmentation:segment-list")


@require_GET
@role_required(*SEGMENT_ROLES)
def refresh_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(RefreshRun, pk=pk)
    context: dict[str, Any] = {"run": run, "poll_every": POLL_EVERY}
    if _fragment_request(request) and run.is_finished:
        # Polled from a segment's page: offer to reload it (the list reloads its table).
        page = request.htmx.current_url_abs_path or ""
        if page and page.split("?")[0] != reverse("segmentation:segment-list"):
            context["reload_url"] = page
    if not _fragment_request(request):
        timings = sorted((run.timings or {}).items(), key=lambda item: -float(item[1] or 0))
        return render(request, "segmentation/refresh_detail.html", context | {"timings": timings})
    if not run.is_finished:
        return render(request, "segmentation/segment_list.html#refresh", context)
    response = HttpResponseStopPolling(
        render(request, "segmentation/segment_list.html#refresh", context).content
    )
    # The segment table listens for this and reloads its sizes.
    return trigger_client_event(response, "segments-refreshed")


@require_GET
@role_required(*SEGMENT_ROLES)
def segment_detail(request: HttpRequest, slug: str) -> HttpResponse:
    from segmentation.selectors import segment_members

    segment = get_object_or_404(Segment, slug=slug)
    page = keyset_page(
        segment_members(segment=segment).select_related("metrics"),
        after=_int_param(request, "after"),
        before=_int_param(request, "before"),
        size=MEMBERS_PAGE,
    )
    context: dict[str, Any] = {"segment": segment, "page": page}
    if _fragment_request(request):
        return _page(request, "segmentation/segment_detail.html", context, partial="members")
    context |= _segment_context(segment) | {
        "run": RefreshRun.objects.first(),
        "poll_every": POLL_EVERY,
    }
    return _page(request, "segmentation/segment_detail.html", context, partial="members")


def _segment_context(segment: Segment) -> dict[str, Any]:
    from segmentation.selectors import segments_referencing

    history = segment_size_history(segment=segment)
    names = dict(Segment.objects.values_list("slug", "name"))
    return {
        "history": history,
        "changes": segment_recent_changes(segment=segment),
        "rule_sentence": builder.describe_rule(segment.rule, segment_names=names)
        if segment.kind == SegmentKind.RULE
        else None,
        "rule_json": builder.rule_json(segment.rule),
        "used_by": segments_referencing(slug=segment.slug),
        "add_form": StaticAddForm(),
        "csv_form": StaticCsvForm(),
    }


# --- Static membership ---------------------------------------------------------------------


def _static_segment(slug: str) -> Segment:
    segment = get_object_or_404(Segment, slug=slug)
    if segment.kind != SegmentKind.STATIC:
        raise Http404("Only static segments take customers by hand.")
    return segment


def _unknown_message(unknown: list[str]) -> str:
    shown = ", ".join(unknown[:20])
    more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
    return f"{len(unknown)} not found: {shown}{more}."


@require_POST
@role_required(*SEGMENT_ROLES)
def segment_member_add(request: HttpRequest, slug: str) -> HttpResponse:
    from segmentation.services.segments import static_segment_add

    segment = _static_segment(slug)
    form = StaticAddForm(request.POST)
    if not form.is_valid():
        for error in form.errors.get("identifiers", []):
            messages.error(request, error)
        return redirect(segment)
    emails, external_ids = form.cleaned_data["identifiers"]
    try:
        change = static_segment_add(segment=segment, emails=emails, external_ids=external_ids)
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect(segment)
    _report_change(request, change, verb="Added")
    return redirect(segment)


@require_POST
@role_required(*SEGMENT_ROLES)
def segment_member_upload(request: HttpRequest, slug: str) -> HttpResponse:
    from segmentation.services.segments import static_segment_add, static_segment_parse_csv

    segment = _static_segment(slug)
    form = StaticCsvForm(request.POST, request.FILES)
    if not form.is_valid():
        for error in form.errors.get("file", []):
            messages.error(request, error)
        return redirect(segment)
    try:
        identifiers = static_segment_parse_csv(form.cleaned_data["file"])
        if not len(identifiers):
            raise ServiceError("The file holds no emails or external ids.", field="file")
        change = static_segment_add(segment=segment, **identifiers.as_kwargs())
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect(segment)
    _report_change(request, change, verb="Added")
    return redirect(segment)


@require_POST
@role_required(*SEGMENT_ROLES)
def segment_member_remove(request: HttpRequest, slug: str) -> HttpResponse:
    from segmentation.services.segments import static_segment_remove

    segment = _static_segment(slug)
    customer_id = request.POST.get("customer", "")
    if not customer_id.isdigit() or len(customer_id) > 18:
        messages.error(request, "No customer to remove.")
        return redirect(segment)
    try:
        change = static_segment_remove(segment=segment, customer_ids=[int(customer_id)])
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect(segment)
    if _fragment_request(request) and change[0]:
        return HttpResponse("")  # the row goes away
    _report_change(request, change, verb="Removed")
    if _fragment_request(request):
        # Nothing was removed (not a member any more): show why on the reloaded page.
        return HttpResponseClientRedirect(segment.get_absolute_url())
    return redirect(segment)


def _report_change(request: HttpRequest, change, *, verb: str) -> None:
    count, unknown = change
    noun = "customer" if count == 1 else "customers"
    messages.success(request, f"{verb} {count} {noun}.")
    if unknown:
        messages.warning(request, _unknown_message(unknown))


# --- Create, edit, delete ------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@role_required(*SEGMENT_ROLES)
def segment_create(request: HttpRequest) -> HttpResponse:
    kind = request.POST.get("kind") or request.GET.get("kind") or SegmentKind.RULE
    if kind not in (SegmentKind.RULE, SegmentKind.STATIC):
        kind = SegmentKind.RULE
    if kind == SegmentKind.STATIC:
        return _simple_form(request, segment=None)
    return _builder(request, segment=None)


@require_http_methods(["GET", "POST"])
@role_required(*SEGMENT_ROLES)
def segment_update(request: HttpRequest, slug: str) -> HttpResponse:
    segment = get_object_or_404(Segment, slug=slug)
    if segment.kind == SegmentKind.RULE:
        return _builder(request, segment=segment)
    return _simple_form(request, segment=segment)


def _simple_form(request: HttpRequest, *, segment: Segment | None) -> HttpResponse:
    """Static segments (name, description) and RFM segments (and their score ranges)."""
    from segmentation.services.segments import segment_create, segment_update

    is_rfm = segment is not None and segment.kind == SegmentKind.RFM
    initial = {"name": segment.name, "description": segment.description} if segment else {}
    if request.method == "POST":
        form = SegmentDetailsForm(request.POST)
        ranges = RfmRangesForm(request.POST) if is_rfm else None
        if form.is_valid() and (ranges is None or ranges.is_valid()):
            try:
                if segment is None:
                    segment = segment_create(
                        name=form.cleaned_data["name"],
                        description=form.cleaned_data["description"],
                        kind=SegmentKind.STATIC,
                        created_by=request.user,
                    )
                else:
                    segment = segment_update(
                        segment=segment,
                        name=form.cleaned_data["name"],
                        description=form.cleaned_data["description"],
                        rule=ranges.rule() if ranges is not None else None,
                    )
            except ServiceError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                messages.success(request, f"Saved “{segment.name}”.")
                return redirect(segment)
    else:
        form = SegmentDetailsForm(initial=initial)
        ranges = RfmRangesForm(initial=RfmRangesForm.initial_for(segment.rule)) if is_rfm else None
    return render(
        request,
        "segmentation/segment_form.html",
        {"form": form, "ranges": ranges, "segment": segment, "kind": SegmentKind.STATIC},
    )


@require_http_methods(["GET", "POST"])
@role_required(*SEGMENT_ROLES)
def segment_delete(request: HttpRequest, slug: str) -> HttpResponse:
    from segmentation.selectors import segments_referencing
    from segmentation.services.segments import segment_delete as delete

    segment = get_object_or_404(Segment, slug=slug)
    if request.method == "POST":
        try:
            delete(segment=segment)
        except ServiceError as error:
            messages.error(request, error.message)
            return redirect(segment)
        messages.success(request, f"Deleted “{segment.name}”.")
        return redirect("segmentation:segment-list")
    used_by = [s for s in segments_referencing(slug=segment.slug) if s.pk != segment.pk]
    return render(
        request, "segmentation/segment_delete.html", {"segment": segment, "used_by": used_by}
    )


# --- The rule builder ----------------------------------------------------------------------


def _builder(request: HttpRequest, *, segment: Segment | None) -> HttpResponse:
    """The builder page. POSTs come from its buttons (add, remove...: re-render), from the
    selects (htmx: re-render the builder), or from Save."""
    from segmentation.selectors import rule_builder_catalogue

    options = builder.field_options(rule_builder_catalogue())
    action = request.POST.get("action", "") if request.method == "POST" else ""
    json_error = ""
    if request.method == "POST":
        # Bound (and so validated, with errors shown) only when saving.
        posted = {
            "name": request.POST.get("name", ""),
            "description": request.POST.get("description", ""),
        }
        details = (
            SegmentDetailsForm(request.POST)
            if action == "save"
            else SegmentDetailsForm(initial=posted)
        )
        tree = builder.tree_from_data(request.POST)
        pasted = request.POST.get("rule_json", "").strip()
        if action == "load-json":
            tree, json_error = _tree_from_json(pasted, fallback=tree)
        else:
            tree = builder.apply_action(tree, action)
    else:
        details = SegmentDetailsForm(
            initial={"name": segment.name, "description": segment.description} if segment else {}
        )
        tree = builder.tree_from_rule(segment.rule) if segment else builder.new_tree()
        pasted = ""
    builder.normalise(tree)
    rule = builder.rule_from_tree(tree)

    save_error: RuleError | None = None
    if action == "save":
        saved, save_error = _save(request, segment=segment, details=details, rule=rule)
        if saved is not None:
            messages.success(request, f"Saved “{saved.name}”.")
            if _fragment_request(request):
                return HttpResponseClientRedirect(saved.get_absolute_url())
            return redirect(saved)
    preview, rule_error = _preview(tree, rule)
    if save_error is not None:
        preview, rule_error = None, save_error

    errors = {builder.node_id_for_path(rule_error.path): rule_error.message} if rule_error else {}
    context = {
        "segment": segment,
        "details": details,
        "view": builder.builder_view(tree, options=options, errors=errors),
        "options": options,
        "preview": preview,
        "rule_error": rule_error,
        "rule_json": builder.rule_json(rule),
        "pasted_json": "" if action == "load-json" and not json_error else pasted,
        "json_error": json_error,
        "action_url": request.path,
        "preview_url": reverse("segmentation:segment-preview"),
        "event_types": settings.PURCHASE_EVENT_TYPES,
    }
    if _fragment_request(request):
        return render(request, "segmentation/segment_builder.html#builder", context)
    return render(request, "segmentation/segment_builder.html", context)


def _tree_from_json(text: str, *, fallback: builder.Group) -> tuple[builder.Group, str]:
    try:
        rule = json.loads(text)
        rule_validate(rule)
    except RecursionError:
        return fallback, "That is not a rule: it is nested far too deeply."
    except ValueError as error:  # json.JSONDecodeError and RuleError are ValueErrors
        if isinstance(error, RuleError):
            where = f" (at {error.path})" if error.path else ""
            return fallback, f"That rule is not valid{where}: {error.message}."
        return fallback, f"That is not JSON: {error}."
    return builder.tree_from_rule(rule), ""


class PreviewFailed:
    """A preview that could not be counted (not a rule error: nothing to point at)."""

    def __init__(self, message: str):
        self.failed = message


def _preview(tree: builder.Group, rule: dict):
    from segmentation.selectors import segment_preview

    try:
        builder.check_tree(tree)
        return segment_preview(rule=rule, sample_size=PREVIEW_SAMPLE), None
    except RuleError as error:
        return None, error
    except ServiceError as error:  # too slow to count: the rule itself is fine
        return PreviewFailed(error.message), None


def _save(request: HttpRequest, *, segment: Segment | None, details, rule: dict):
    """Create or update through the services; returns (segment, None) or (None, RuleError)."""
    from segmentation.services.segments import (
        SegmentRuleInvalid,
        segment_create,
        segment_update,
    )

    if not details.is_valid():
        return None, None
    try:
        if segment is None:
            saved = segment_create(
                name=details.cleaned_data["name"],
                description=details.cleaned_data["description"],
                kind=SegmentKind.RULE,
                rule=rule,
                created_by=request.user,
            )
        else:
            saved = segment_update(
                segment=segment,
                name=details.cleaned_data["name"],
                description=details.cleaned_data["description"],
                rule=rule,
            )
    except SegmentRuleInvalid as error:
        details.add_error(None, "The rule has an error: see the marked condition.")
        return None, RuleError(error.path, error.rule_message)
    except ServiceError as error:
        details.add_error(error.field if error.field in details.fields else None, error.message)
        return None, None
    return saved, None


@require_POST
@role_required(*SEGMENT_ROLES)
def segment_preview(request: HttpRequest) -> HttpResponse:
    """The live preview (htmx, as the marketer types): the count and a sample, or the rule's
    error, plus the error slot of every row (out of band) so the message sits by its row."""
    tree = builder.normalise(builder.tree_from_data(request.POST))
    rule = builder.rule_from_tree(tree)
    preview, rule_error = _preview(tree, rule)
    error_id = builder.node_id_for_path(rule_error.path) if rule_error else None
    slots = [
        (node.id, rule_error.message if node.id == error_id else "") for node in builder.walk(tree)
    ]
    return render(
        request,
        "segmentation/segment_builder.html#preview-response",
        {
            "preview": preview,
            "rule_error": rule_error,
            "rule_json": builder.rule_json(rule),
            "slots": slots,
        },
    )


# --- Imports -------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@role_required(*CUSTOMER_ROLES)
def import_list(request: HttpRequest) -> HttpResponse:
    from segmentation.services.imports import import_job_submit

    if request.method == "POST":
        form = ImportForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                job = import_job_submit(
                    kind=form.cleaned_data["kind"],
                    upload=form.cleaned_data["file"],
                    created_by=request.user,
                    create_customers=form.cleaned_data["create_customers"],
                )
            except ServiceError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                return redirect("segmentation:import-detail", pk=job.pk)
    else:
        form = ImportForm()
    jobs = ImportJob.objects.defer("errors").select_related("created_by")[:RECENT_IMPORTS]
    status = 400 if request.method == "POST" else 200
    return render(
        request, "segmentation/import_list.html", {"form": form, "jobs": jobs}, status=status
    )


@require_GET
@role_required(*CUSTOMER_ROLES)
def import_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(ImportJob, pk=pk)
    context = {"job": job, "poll_every": POLL_EVERY}
    if not _fragment_request(request):
        return render(request, "segmentation/import_detail.html", context)
    content = render(request, "segmentation/import_detail.html#progress", context).content
    if job.is_finished:
        return HttpResponseStopPolling(content)
    return HttpResponse(content)


@require_GET
@role_required(*CUSTOMER_ROLES)
def import_rejected(request: HttpRequest, pk: int) -> HttpResponse:
    """The rejected rows the job kept, as CSV (line, column, reason)."""
    job = get_object_or_404(ImportJob, pk=pk)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    stamp = dt.date.today().isoformat()
    response["Content-Disposition"] = f'attachment; filename="import-{job.pk}-rejected-{stamp}.csv"'
    writer = csv.writer(response)
    writer.writerow(["line", "column", "reason"])
    for error in job.errors or []:
        writer.writerow([error.get("line", ""), error.get("column") or "", error.get("reason", "")])
    return response
