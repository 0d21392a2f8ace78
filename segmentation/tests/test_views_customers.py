"""Customer pages: the searchable list with keyset pages, the detail page and its timeline."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from segmentation.models import CustomerMetrics, Segment, SegmentMembership
from segmentation.tests.factories import CustomerFactory, EventFactory, SegmentFactory

pytestmark = pytest.mark.django_db

LIST = reverse("segmentation:customer-list")
HX = {"HX-Request": "true"}
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def ids_in(html: str) -> list[str]:
    """External ids in the order the table shows them."""
    return re.findall(r"<td><code>([^<]+)</code></td>", html)


@pytest.fixture
def crowd(db):
    """Sixty customers c000000..c000059 (created in that order), a few with metrics."""
    customers = [CustomerFactory(first_name="Pat", last_name="Smith") for _ in range(60)]
    customers[0].first_name, customers[0].email = "Zelda", "zelda@example.com"
    customers[0].attributes = {"plan": "pro", "seats": 3}
    customers[0].save()
    customers[1].subscription_status = "unsubscribed"
    customers[1].attributes = {"plan": "free"}
    customers[1].save()
    CustomerMetrics.objects.create(
        customer=customers[2],
        r_score=5,
        f_score=4,
        rfm_segment="champions",
        engagement_tier="Star",
        frequency=9,
    )
    CustomerMetrics.objects.create(
        customer=customers[3],
        r_score=1,
        f_score=1,
        rfm_segment="hibernating",
        engagement_tier="Lost",
        frequency=1,
    )
    return customers


@pytest.mark.parametrize(
    ("role", "status"),
    [("staff", 200), ("marketer", 200), ("integrator", 200), ("outsider", 403)],
)
def test_customer_pages_are_for_marketers_integrators_and_staff(client_for, users, role, status):
    customer = CustomerFactory()
    client = client_for(users[role])
    assert client.get(LIST).status_code == status
    assert client.get(LIST, headers=HX).status_code == status
    assert client.get(customer.get_absolute_url()).status_code == status
    assert (
        client.get(customer.get_absolute_url(), {"before": T0.isoformat()}, headers=HX).status_code
        == status
    )


def test_anonymous_visitors_are_sent_to_the_login_page(client, db):
    customer = CustomerFactory()
    for url in (LIST, customer.get_absolute_url()):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_list_shows_newest_first_in_pages_of_fifty_without_offset_or_count(
    client_for, marketer, crowd
):
    client = client_for(marketer)
    with CaptureQueriesContext(connection) as queries:
        html = client.get(LIST).text
    first_page = ids_in(html)
    assert first_page[0] == crowd[-1].external_id
    assert len(first_page) == 50
    sql = " ".join(q["sql"].upper() for q in queries.captured_queries)
    assert "OFFSET" not in sql
    assert "COUNT(" not in sql
    assert len(queries.captured_queries) <= 8  # session, user, groups, choices, page

    older = re.search(r'href="\?after=(\d+)"', html)
    assert older, "an Older link with ?after="
    html2 = client.get(LIST, {"after": older.group(1)}).text
    second_page = ids_in(html2)
    assert second_page == [c.external_id for c in reversed(crowd[:10])]
    assert "?after=" not in html2  # the last page
    newer = re.search(r'href="\?before=(\d+)"', html2)
    assert newer
    assert ids_in(client.get(LIST, {"before": newer.group(1)}).text) == first_page


def test_search_matches_email_or_name_prefix_and_exact_external_id(client_for, marketer, crowd):
    client = client_for(marketer)
    assert ids_in(client.get(LIST, {"q": "zel"}).text) == [crowd[0].external_id]
    assert ids_in(client.get(LIST, {"q": "ZELDA@"}).text) == [crowd[0].external_id]
    assert ids_in(client.get(LIST, {"q": crowd[5].external_id}).text) == [crowd[5].external_id]
    assert ids_in(client.get(LIST, {"q": "nobody-like-this"}).text) == []
    assert "No customers match these filters" in client.get(LIST, {"q": "nobody"}).text


def test_filters_narrow_the_list(client_for, marketer, crowd):
    client = client_for(marketer)
    segment = SegmentFactory(slug="vip", kind="static")
    SegmentMembership.objects.create(segment=segment, customer=crowd[7], joined_at=T0)
    SegmentMembership.objects.create(
        segment=segment, customer=crowd[8], joined_at=T0, left_at=T0 + dt.timedelta(days=1)
    )

    def only(**params):
        return ids_in(client.get(LIST, params).text)

    assert only(subscription_status="unsubscribed") == [crowd[1].external_id]
    assert only(segment="vip") == [crowd[7].external_id]
    assert only(attribute="plan=pro") == [crowd[0].external_id]
    assert only(attribute="seats=3") == [crowd[0].external_id]
    assert only(r_score="5", f_score="4") == [crowd[2].external_id]
    assert only(r_score="1") == [crowd[3].external_id]
    assert only(rfm_segment="hibernating") == [crowd[3].external_id]
    assert only(engagement_tier="Star") == [crowd[2].external_id]
    assert only(q="Pat", rfm_segment="champions") == [crowd[2].external_id]


def test_invalid_filters_are_reported_and_ignored(client_for, marketer, crowd):
    response = client_for(marketer).get(LIST, {"attribute": "no equals sign", "r_score": "9"})
    assert response.status_code == 200
    assert "Write key=value" in response.text
    assert "Filters with an error were ignored" in response.text
    assert len(ids_in(response.text)) == 50


def test_htmx_request_gets_only_the_results_fragment(client_for, marketer, crowd):
    client = client_for(marketer)
    full = client.get(LIST, {"q": "zel"})
    fragment = client.get(LIST, {"q": "zel"}, headers=HX)
    assert "<html" in full.text and 'id="results"' in full.text
    assert "<html" not in fragment.text and "<form" not in fragment.text
    assert fragment.text.lstrip().startswith('<section id="results"')
    assert ids_in(fragment.text) == [crowd[0].external_id]
    assert "HX-Request" in fragment["Vary"]
    # A history restore (cache miss after Back) needs the whole page.
    restore = client.get(LIST, headers={**HX, "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text


def test_filter_form_is_wired_for_htmx_and_works_without_it(client_for, marketer, crowd):
    html = client_for(marketer).get(LIST).text
    form = re.search(r"<form[^>]*role=\"search\"[^>]*>", html, re.S).group(0)
    assert 'method="get"' in form and f'action="{LIST}"' in form
    assert f'hx-get="{LIST}"' in form and 'hx-target="#results"' in form
    assert 'hx-push-url="true"' in form and "delay:300ms" in form
    for name in (
        "q",
        "subscription_status",
        "segment",
        "attribute",
        "r_score",
        "f_score",
        "rfm_segment",
        "engagement_tier",
    ):
        assert f'name="{name}"' in html
        assert re.search(rf'<label for="id_{name}"', html), f"{name} has a label"


def test_detail_shows_profile_attributes_metrics_segments_and_history(
    client_for, integrator, crowd
):
    customer = crowd[2]
    customer.attributes = {"plan": "pro"}
    customer.save()
    CustomerMetrics.objects.filter(customer=customer).update(
        recency_days=3,
        monetary=120,
        event_counts_30d={"purchase": 2},
        event_counts_90d={"purchase": 5, "session": 7},
        emails_sent=4,
        emails_opened=2,
        emails_clicked=1,
        engagement_points=75,
        m_score=3,
    )
    current = SegmentFactory(name="Big spenders", slug="big")
    former = SegmentFactory(name="Sleepers", slug="sleepers")
    SegmentMembership.objects.create(segment=current, customer=customer, joined_at=T0)
    SegmentMembership.objects.create(
        segment=former, customer=customer, joined_at=T0 - dt.timedelta(days=9), left_at=T0
    )
    html = client_for(integrator).get(customer.get_absolute_url()).text
    for text in (
        customer.external_id,
        "plan",
        "pro",
        "champions",
        "Star",
        "75 points",
        "3 days since the last purchase",
        "9 purchases",
        "120",
        "4 sent, 2 opened, 1 clicked",
        "Big spenders",
        "Sleepers",
        "member",
    ):
        assert text in html, text
    assert "session" in html and ">7<" in html  # 90-day counts by type
    # Integrators do not get links to segment pages (they cannot open them).
    assert current.get_absolute_url() not in html


def test_detail_without_metrics_or_events_says_so(client_for, marketer):
    html = client_for(marketer).get(CustomerFactory().get_absolute_url()).text
    assert "No metrics yet" in html and "No events yet" in html and "Not in any segment" in html


def test_a_broken_timeline_cursor_shows_the_newest_events(client_for, marketer):
    customer = CustomerFactory()
    EventFactory(customer=customer, type="only", occurred_at=T0)
    for value in ("2024-13-45T00:00:00", "yesterday"):
        html = client_for(marketer).get(customer.get_absolute_url(), {"before": value}).text
        assert "<strong>only</strong>" in html


def test_list_names_the_rfm_segment(client_for, marketer, crowd):
    html = client_for(marketer).get(LIST, {"rfm_segment": "champions"}).text
    assert "<td>Champions</td>" in html


def test_unknown_customer_is_404(client_for, marketer):
    assert (
        client_for(marketer).get(reverse("segmentation:customer-detail", args=[999999])).status_code
        == 404
    )


def test_timeline_is_newest_first_and_loads_older_events_by_keyset(client_for, marketer):
    customer = CustomerFactory()
    # 55 events; five share one instant, straddling the page boundary.
    for i in range(50):
        EventFactory(customer=customer, type=f"t{i}", occurred_at=T0 + dt.timedelta(minutes=i))
    same = T0 - dt.timedelta(hours=1)
    for i in range(5):
        EventFactory(customer=customer, type=f"same{i}", occurred_at=same)
    client = client_for(marketer)
    html = client.get(customer.get_absolute_url()).text
    types = re.findall(r"<strong>([^<]+)</strong>", html)
    assert types[:2] == ["t49", "t48"] and len([t for t in types if t.startswith("t")]) == 50
    more = re.search(r'hx-get="([^"]+before=[^"]+)"', html)
    assert more, "an Older events button"
    fragment = client.get(more.group(1).replace("&amp;", "&"), headers=HX)
    assert "<html" not in fragment.text and "<section" not in fragment.text
    older = re.findall(r"<strong>([^<]+)</strong>", fragment.text)
    assert sorted(older) == [f"same{i}" for i in range(5)]
    assert "Older events" not in fragment.text  # nothing older
    # Without htmx the same link opens the page of older events.
    page = client.get(more.group(1).replace("&amp;", "&"))
    assert "<html" in page.text and "(older)" in page.text and "same0" in page.text


def test_segment_filter_choices_list_segments(client_for, marketer, crowd):
    Segment.objects.create(
        name="Champions X", slug="champions-x", kind="rfm", rule={"r": [5, 5], "f": [5, 5]}
    )
    html = client_for(marketer).get(LIST).text
    assert 'value="champions-x"' in html
