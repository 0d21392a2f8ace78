"""Segment pages: list with bars and refresh, RFM grid, detail with chart, members and history,
static membership by hand and by CSV, edit and delete."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from abtest.models import JobStatus
from segmentation.models import (
    CustomerMetrics,
    RefreshRun,
    Segment,
    SegmentMembership,
    SegmentSizeSnapshot,
)
from segmentation.services.segments import segment_create, static_segment_add
from segmentation.tests.factories import CustomerFactory, SegmentFactory

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
LIST = reverse("segmentation:segment-list")
RFM = reverse("segmentation:rfm")
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def squash(html: str) -> str:
    return re.sub(r"\s+", " ", html)


@pytest.fixture
def static(db):
    segment = segment_create(name="Beta testers", kind="static", description="Hand picked.")
    return segment


@pytest.fixture
def rule_segment(db):
    return segment_create(
        name="Frequent buyers",
        kind="rule",
        rule={"all": [{"field": "metrics.frequency", "op": "gte", "value": 3}]},
    )


# --- Roles ---------------------------------------------------------------------------------


def segment_urls(static: Segment, run: RefreshRun) -> list[str]:
    slug = static.slug
    return [
        LIST,
        RFM,
        reverse("segmentation:segment-detail", args=[slug]),
        reverse("segmentation:segment-update", args=[slug]),
        reverse("segmentation:segment-delete", args=[slug]),
        reverse("segmentation:segment-create"),
        reverse("segmentation:refresh-detail", args=[run.pk]),
    ]


@pytest.mark.parametrize(
    ("role", "allowed"),
    [("staff", True), ("marketer", True), ("integrator", False), ("outsider", False)],
)
def test_segment_pages_are_for_marketers_and_staff(client_for, users, static, role, allowed):
    run = RefreshRun.objects.create(as_of=T0)
    client = client_for(users[role])
    for url in segment_urls(static, run):
        for headers in ({}, HX):
            response = client.get(url, headers=headers)
            assert response.status_code == (200 if allowed else 403), (url, headers)
    customer = CustomerFactory()
    posts = [
        (reverse("segmentation:segment-member-add", args=[static.slug]), {"identifiers": "x"}),
        (
            reverse("segmentation:segment-member-remove", args=[static.slug]),
            {"customer": customer.pk},
        ),
        (reverse("segmentation:segment-preview"), {"r.kind": "group"}),
        (
            reverse("segmentation:segment-create"),
            {"name": "X", "action": "save", "r.kind": "group"},
        ),
    ]
    for url, data in posts:
        response = client.post(url, data, headers=HX)
        assert (response.status_code == 403) is (not allowed), url
    if not allowed:
        assert client.post(reverse("segmentation:refresh-create")).status_code == 403
        assert (
            client.post(reverse("segmentation:segment-delete", args=[static.slug])).status_code
            == 403
        )
        assert Segment.objects.filter(pk=static.pk).exists()
        assert not RefreshRun.objects.exclude(pk=run.pk).exists()


def test_anonymous_is_sent_to_login(client, static):
    for url in (LIST, RFM, static.get_absolute_url()):
        assert client.get(url)["Location"].startswith("/accounts/login/")


# --- List and refresh ----------------------------------------------------------------------


def test_list_groups_segments_by_kind_with_bars_scaled_to_the_largest(client_for, marketer, static):
    Segment.objects.filter(kind="rfm").delete()
    Segment.objects.create(
        name="Champions",
        slug="champions",
        kind="rfm",
        rule={"r": [4, 5], "f": [4, 5]},
        size=200,
        refreshed_at=T0,
    )
    SegmentFactory(name="Buyers", slug="buyers", size=50, refreshed_at=T0)
    Segment.objects.filter(pk=static.pk).update(size=0)
    client = client_for(marketer)
    with CaptureQueriesContext(connection) as queries:
        html = squash(client.get(LIST).text)
    assert len(queries.captured_queries) <= 6
    assert html.index("RFM segments") < html.index("Rule segments") < html.index("Static segments")
    assert re.search(
        r"Champions</a> <span[^>]*><span class=\"bar-fill\" style=\"width: 100.0%\"", html
    )
    assert re.search(r"Buyers</a> <span[^>]*><span class=\"bar-fill\" style=\"width: 25.0%\"", html)
    assert re.search(
        r"Beta testers</a> <span[^>]*><span class=\"bar-fill\" style=\"width: 0%\"", html
    )
    assert "never refreshed" in html
    for url in (reverse("segmentation:segment-create"), reverse("segmentation:rfm")):
        assert f'href="{url}"' in html
    assert "?kind=static" in html
    assert "Refresh now" in html


def test_refresh_button_submits_a_run_and_shows_its_progress_until_done(
    client_for, marketer, django_capture_on_commit_callbacks
):
    client = client_for(marketer)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("segmentation:refresh-create"), headers=HX)
    run = RefreshRun.objects.get()
    assert len(callbacks) == 1  # the task is queued after commit
    assert (
        run.status == JobStatus.PENDING and run.created_by == marketer and run.trigger == "manual"
    )
    html = response.text
    assert "<html" not in html and 'id="refresh"' in html and "<progress" in html
    poll_url = reverse("segmentation:refresh-detail", args=[run.pk])
    assert f'hx-get="{poll_url}"' in html and 'hx-trigger="every 1s"' in html
    assert "Refresh now" not in html

    # A second click while it runs returns the same run.
    with django_capture_on_commit_callbacks():
        client.post(reverse("segmentation:refresh-create"), headers=HX)
    assert RefreshRun.objects.count() == 1

    RefreshRun.objects.filter(pk=run.pk).update(
        status=JobStatus.RUNNING, step="RFM scores", steps_done=3, steps_total=4
    )
    running = client.get(poll_url, headers=HX)
    assert (
        running.status_code == 200 and 'value="75"' in running.text and "RFM scores" in running.text
    )
    # The segment list itself shows the running refresh and polls it.
    assert f'hx-get="{poll_url}"' in client.get(LIST).text

    RefreshRun.objects.filter(pk=run.pk).update(
        status=JobStatus.SUCCEEDED, steps_done=4, finished_at=T0, step="Done"
    )
    done = client.get(poll_url, headers=HX)
    assert done.status_code == 286
    assert json.loads(done["HX-Trigger"]) == {"segments-refreshed": {}}  # the table reloads
    assert "hx-trigger" not in done.text and "Done" in done.text and "Refresh now" in done.text


def test_segment_page_has_the_refresh_button_and_offers_a_reload_when_done(
    client_for, marketer, rule_segment, static
):
    client = client_for(marketer)
    assert "Refresh now" in client.get(rule_segment.get_absolute_url()).text
    assert "Refresh now" not in client.get(static.get_absolute_url()).text  # nothing to refresh
    run = RefreshRun.objects.create(as_of=T0, status=JobStatus.SUCCEEDED, finished_at=T0)
    poll = reverse("segmentation:refresh-detail", args=[run.pk])
    page = f"http://testserver{rule_segment.get_absolute_url()}"
    done = client.get(poll, headers={**HX, "HX-Current-URL": page})
    assert f'<a href="{rule_segment.get_absolute_url()}">Reload this page</a>' in done.text
    done = client.get(poll, headers={**HX, "HX-Current-URL": "http://testserver" + LIST})
    assert "Reload this page" not in done.text  # the list reloads its table by itself


def test_refresh_without_htmx_redirects_with_a_message(
    client_for, marketer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        response = client_for(marketer).post(reverse("segmentation:refresh-create"), follow=True)
    assert response.redirect_chain[-1][0] == LIST
    assert "Refresh started" in response.text


def test_refresh_run_page_shows_timings(client_for, marketer):
    run = RefreshRun.objects.create(
        as_of=T0,
        status=JobStatus.SUCCEEDED,
        timings={"Purchases": 0.5, "Champions": 1.25},
        steps_done=2,
        steps_total=2,
        finished_at=T0,
    )
    html = client_for(marketer).get(reverse("segmentation:refresh-detail", args=[run.pk])).text
    assert html.index("Champions") < html.index("Purchases")  # slowest first
    assert "1.25" in html


def test_segment_table_fragment_for_the_refreshed_event(client_for, marketer, static):
    fragment = client_for(marketer).get(LIST, headers=HX).text
    assert fragment.lstrip().startswith('<div id="segments"')
    assert 'hx-trigger="segments-refreshed from:body"' in fragment and "<html" not in fragment


# --- RFM -------------------------------------------------------------------------------------


def test_rfm_grid_counts_cells_in_one_group_by_and_links_each_cell(client_for, marketer):
    def scored(r, f, n, segment=""):
        for _ in range(n):
            CustomerMetrics.objects.create(
                customer=CustomerFactory(), r_score=r, f_score=f, rfm_segment=segment
            )

    scored(5, 5, 4, "champions")
    scored(4, 5, 1, "champions")
    scored(1, 1, 2, "hibernating")
    scored(None, None, 3)
    client = client_for(marketer)
    with CaptureQueriesContext(connection) as queries:
        html = squash(client.get(RFM).text)
    grouped = [q for q in queries.captured_queries if "GROUP BY" in q["sql"].upper()]
    assert len(grouped) == 1 and "customermetrics" in grouped[0]["sql"].lower()
    cells = re.findall(
        r'<a role="cell" class="cell" href="([^"]+)" style="([^"]+)" title="([^"]+)">', html
    )
    assert len(cells) == 25
    href, style, title = cells[4]  # top row (R 5), last column (F 5)
    assert href == reverse("segmentation:customer-list") + "?r_score=5&amp;f_score=5"
    assert "rgba(47, 91, 211, 1.00)" in style and "color: #fff" in style
    assert title == "R 5, F 5: 4 customers (Champions)"
    assert cells[20][2] == "R 1, F 1: 2 customers (Hibernating)"
    assert "#f1f3f7" in cells[12][1]  # an empty cell
    assert "3 without a score yet" in html
    legend = html[html.index("RFM segments") :]
    assert re.search(
        r"Champions</a>.*?<td class=\"nowrap\">4–5</td> <td class=\"nowrap\">4–5</td> "
        r"<td class=\"num\"><a href=\"[^\"]+rfm_segment=champions\">5</a>",
        legend,
    )


def test_rfm_cell_link_filters_the_customer_list(client_for, marketer):
    wanted = CustomerFactory()
    CustomerMetrics.objects.create(customer=wanted, r_score=2, f_score=3)
    CustomerMetrics.objects.create(customer=CustomerFactory(), r_score=2, f_score=4)
    html = (
        client_for(marketer)
        .get(reverse("segmentation:customer-list"), {"r_score": 2, "f_score": 3})
        .text
    )
    assert re.findall(r"<td><code>([^<]+)</code></td>", html) == [wanted.external_id]


# --- Detail ----------------------------------------------------------------------------------


def test_rule_segment_page_reads_the_rule_draws_the_chart_and_lists_changes(
    client_for, marketer, rule_segment
):
    members = [CustomerFactory(first_name=f"M{i}") for i in range(3)]
    SegmentMembership.objects.create(segment=rule_segment, customer=members[0], joined_at=T0)
    SegmentMembership.objects.create(
        segment=rule_segment, customer=members[1], joined_at=T0 + dt.timedelta(hours=1)
    )
    SegmentMembership.objects.create(
        segment=rule_segment,
        customer=members[2],
        joined_at=T0 - dt.timedelta(days=3),
        left_at=T0 + dt.timedelta(hours=2),
    )
    for day, size in enumerate([10, 30, 20]):
        SegmentSizeSnapshot.objects.create(
            segment=rule_segment, date=dt.date.today() - dt.timedelta(days=2 - day), size=size
        )
    html = squash(client_for(marketer).get(rule_segment.get_absolute_url()).text)
    assert "All of these:" in html and "Purchases is at least 3" in html
    assert "&quot;metrics.frequency&quot;" in html  # the JSON too
    assert "<svg" in html and "<polyline" in html and html.count("<circle") == 3
    assert ">50<" in html  # the y axis rounds 30 up to 50
    changes = html[html.index("Recent joins and leaves") :]
    assert changes.index("left") < changes.index("joined")  # the leave is the newest change
    members_html = html[html.index('id="members"') : html.index("Recent joins")]
    assert members[0].external_id in members_html and members[1].external_id in members_html
    assert members[2].external_id not in members_html
    assert "Remove" not in members_html  # only static segments have remove buttons
    assert reverse("segmentation:segment-update", args=[rule_segment.slug]) in html


def test_segment_without_history_says_so(client_for, marketer, static):
    html = client_for(marketer).get(static.get_absolute_url()).text
    assert "No history yet" in html and "No members" in html


def test_members_are_keyset_paginated_and_the_fragment_swaps_alone(client_for, marketer, static):
    customers = [CustomerFactory() for _ in range(30)]
    static_segment_add(segment=static, customer_ids=[c.pk for c in customers])
    client = client_for(marketer)
    html = client.get(static.get_absolute_url()).text
    older = re.search(r'href="\?after=(\d+)"', html)
    assert older
    fragment = client.get(static.get_absolute_url(), {"after": older.group(1)}, headers=HX)
    assert fragment.text.lstrip().startswith('<div id="members"')
    shown = re.findall(r"<td><code>([^<]+)</code></td>", fragment.text)
    assert shown == [c.external_id for c in reversed(customers[:5])]


def test_unknown_segment_is_404(client_for, marketer):
    assert (
        client_for(marketer).get(reverse("segmentation:segment-detail", args=["nope"])).status_code
        == 404
    )


# --- Static membership -----------------------------------------------------------------------


def test_add_customers_by_email_and_external_id_reports_unknown_ones(client_for, marketer, static):
    ann = CustomerFactory(email="ann@example.com")
    bob = CustomerFactory(external_id="bob-1")
    response = client_for(marketer).post(
        reverse("segmentation:segment-member-add", args=[static.slug]),
        {"identifiers": "ANN@example.com\nbob-1, ghost-9\nghost@example.com"},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == static.get_absolute_url()
    assert "Added 2 customers." in response.text
    assert "2 not found: ghost-9, ghost@example.com." in response.text
    current = set(
        SegmentMembership.objects.filter(segment=static, left_at=None).values_list(
            "customer", flat=True
        )
    )
    assert current == {ann.pk, bob.pk}


def test_add_with_nothing_says_so(client_for, marketer, static):
    response = client_for(marketer).post(
        reverse("segmentation:segment-member-add", args=[static.slug]),
        {"identifiers": " , "},
        follow=True,
    )
    assert "Enter at least one email or external id." in response.text


def test_remove_a_member_by_its_row_button(client_for, marketer, static):
    ann, bob = CustomerFactory(), CustomerFactory()
    static_segment_add(segment=static, customer_ids=[ann.pk, bob.pk])
    client = client_for(marketer)
    html = client.get(static.get_absolute_url()).text
    assert (
        html.count(reverse("segmentation:segment-member-remove", args=[static.slug])) == 4
    )  # 2 rows x (action, hx-post)
    response = client.post(
        reverse("segmentation:segment-member-remove", args=[static.slug]),
        {"customer": ann.pk},
        headers=HX,
    )
    assert response.status_code == 200 and response.text == ""  # htmx removes the row
    response = client.post(
        reverse("segmentation:segment-member-remove", args=[static.slug]),
        {"customer": bob.pk},
        follow=True,
    )
    assert "Removed 1 customer." in response.text
    assert not SegmentMembership.objects.filter(segment=static, left_at=None).exists()
    assert SegmentMembership.objects.filter(segment=static).count() == 2  # history is kept


def test_upload_a_csv_of_identifiers(client_for, marketer, static):
    ann = CustomerFactory(email="ann@example.com")
    bob = CustomerFactory(external_id="bob-1")
    csv_file = SimpleUploadedFile(
        "list.csv",
        b"email,external_id\nann@example.com,\n,bob-1\n,nobody-2\n",
        content_type="text/csv",
    )
    response = client_for(marketer).post(
        reverse("segmentation:segment-member-upload", args=[static.slug]),
        {"file": csv_file},
        follow=True,
    )
    assert "Added 2 customers." in response.text and "1 not found: nobody-2." in response.text
    assert set(
        SegmentMembership.objects.filter(segment=static).values_list("customer", flat=True)
    ) == {ann.pk, bob.pk}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00\x01", "not UTF-8"),
        (b"a@example.com,b@example.com\n", "add a header row"),
        (b"email\n", "holds no emails or external ids"),
        (b"external_id\n" + b"x" * 200_000 + b"\n", "not a valid CSV file"),
    ],
)
def test_bad_identifier_csv_is_reported(client_for, marketer, static, content, message):
    response = client_for(marketer).post(
        reverse("segmentation:segment-member-upload", args=[static.slug]),
        {"file": SimpleUploadedFile("x.csv", content)},
        follow=True,
    )
    assert response.status_code == 200 and message in response.text


def test_only_static_segments_take_customers_by_hand(client_for, marketer, rule_segment):
    client = client_for(marketer)
    url = reverse("segmentation:segment-member-add", args=[rule_segment.slug])
    assert client.post(url, {"identifiers": "x"}).status_code == 404
    html = client.get(rule_segment.get_absolute_url()).text
    assert "Add customers" not in html


# --- Create, edit and delete static/RFM segments -------------------------------------------


def test_create_a_static_segment(client_for, marketer):
    client = client_for(marketer)
    form = client.get(reverse("segmentation:segment-create"), {"kind": "static"}).text
    assert "New static segment" in form and 'name="kind" value="static"' in form
    response = client.post(
        reverse("segmentation:segment-create"),
        {"kind": "static", "name": "VIP list", "description": "d"},
    )
    segment = Segment.objects.get(name="VIP list")
    assert response.status_code == 302 and response["Location"] == segment.get_absolute_url()
    assert segment.kind == "static" and segment.created_by == marketer
    response = client.post(reverse("segmentation:segment-create"), {"kind": "static", "name": " "})
    assert response.status_code == 200 and "This field is required" in response.text


def test_edit_an_rfm_segment_ranges(client_for, marketer):
    segment = Segment.objects.get(slug="champions")
    client = client_for(marketer)
    url = reverse("segmentation:segment-update", args=[segment.slug])
    assert 'name="r_low"' in client.get(url).text
    response = client.post(
        url, {"name": "Champs", "description": "", "r_low": 5, "r_high": 5, "f_low": 4, "f_high": 5}
    )
    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.name == "Champs" and segment.rule == {"r": [5, 5], "f": [4, 5]}
    bad = client.post(url, {"name": "Champs", "r_low": 5, "r_high": 2, "f_low": 4, "f_high": 5})
    assert bad.status_code == 200 and "1 &lt;= lo &lt;= hi &lt;= 5" in bad.text


def test_delete_asks_then_deletes(client_for, marketer, static):
    client = client_for(marketer)
    url = reverse("segmentation:segment-delete", args=[static.slug])
    assert "Delete Beta testers?" in client.get(url).text
    response = client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == LIST and "Deleted “Beta testers”." in response.text
    assert not Segment.objects.filter(pk=static.pk).exists()


def test_delete_is_refused_with_the_services_message_while_a_rule_references_it(
    client_for, marketer, static
):
    segment_create(
        name="Uses it", kind="rule", rule={"all": [{"segment": static.slug, "op": "in"}]}
    )
    client = client_for(marketer)
    url = reverse("segmentation:segment-delete", args=[static.slug])
    assert "change those rules first" in client.get(url).text
    response = client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == static.get_absolute_url()
    assert "is used by the rules of" in response.text
    assert Segment.objects.filter(pk=static.pk).exists()
    assert "Used by the rules of" in response.text


def test_removing_what_is_not_a_member_says_so(client_for, marketer, static):
    client = client_for(marketer)
    url = reverse("segmentation:segment-member-remove", args=[static.slug])
    response = client.post(url, {"customer": "999999999"}, headers=HX)
    assert response.status_code == 200 and response["HX-Redirect"] == static.get_absolute_url()
    assert "Removed 0 customers." in client.get(static.get_absolute_url()).text
    response = client.post(url, {"customer": "9" * 30}, follow=True)
    assert response.status_code == 200 and "No customer to remove." in response.text


def test_identifier_csv_apostrophes_are_text(client_for, marketer, static):
    ann = CustomerFactory(email="o'neil@example.com")
    bob = CustomerFactory(external_id="'t-hooft")
    csv_file = SimpleUploadedFile(
        "list.csv", b"email,external_id\no'neil@example.com,\n,'t-hooft\n"
    )
    client_for(marketer).post(
        reverse("segmentation:segment-member-upload", args=[static.slug]), {"file": csv_file}
    )
    assert set(
        SegmentMembership.objects.filter(segment=static).values_list("customer", flat=True)
    ) == {ann.pk, bob.pk}
