"""The htmx flows of the segmentation pages, in a real Chromium.

Each test signs in through the login form and drives the page as a person would; the
assertions wait for what the server swaps in (Playwright's ``expect`` retries until timeout).
"""

from __future__ import annotations

import re
import time

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from abtest.models import JobStatus
from segmentation.models import (
    CustomerMetrics,
    ImportJob,
    RefreshRun,
    Segment,
)
from segmentation.services.imports import import_job_run
from segmentation.tests.factories import CustomerFactory

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


def mark_page(tab) -> None:
    """Set a flag that a full page load would wipe: its survival proves htmx swapped."""
    tab.evaluate("window.__stillHere = true")


def still_same_page(tab) -> bool:
    return tab.evaluate("window.__stillHere === true")


def after_swap(tab, action) -> None:
    """Run ``action`` and wait until the htmx swap it causes has settled (a person waits for
    the builder to redraw before typing into it; a test must too)."""
    tab.evaluate(
        "window.__settled = false; document.body.addEventListener("
        "'htmx:afterSettle', () => { window.__settled = true }, {once: true})"
    )
    action()
    tab.wait_for_function("window.__settled === true")


def test_customer_search_updates_the_table_as_you_type(tab, login, marketer):
    for n in range(55):
        CustomerFactory(first_name="Pat", last_name=f"Smith{n}")
    zelda = CustomerFactory(first_name="Zelda", last_name="Fitz", email="zelda@example.com")
    CustomerFactory(first_name="Zeno", last_name="Elea", subscription_status="unsubscribed")
    login(marketer)
    tab.goto("/customers/")
    rows = tab.locator("#results tbody tr")
    expect(rows).to_have_count(50)
    mark_page(tab)

    tab.get_by_label("Search").press_sequentially("ze", delay=60)
    expect(rows).to_have_count(2)
    tab.get_by_label("Search").press_sequentially("l", delay=60)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Zelda")
    expect(tab).to_have_url(re.compile(r"/customers/\?q=zel"))  # pushed to the address bar

    tab.get_by_label("Search").fill("ze")
    tab.get_by_label("Subscription").select_option("unsubscribed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Zeno")
    assert still_same_page(tab)

    tab.get_by_label("Search").fill("")
    tab.get_by_label("Subscription").select_option("")
    expect(rows).to_have_count(50)
    tab.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(7)
    expect(tab).to_have_url(re.compile(r"after=\d+"))
    assert still_same_page(tab)

    rows.filter(has_text="Pat").first.get_by_role("link").click()
    expect(tab.get_by_role("heading", name="Events")).to_be_visible()
    assert zelda.pk  # the detail page is a real link


def test_builder_live_preview_follows_edits_and_saves_the_segment(tab, login, marketer):
    for n, frequency in enumerate([1, 3, 5, 8]):
        customer = CustomerFactory(first_name=f"Buyer{n}", external_id=f"buyer-{n}")
        CustomerMetrics.objects.create(customer=customer, frequency=frequency)
    CustomerFactory(first_name="Nobody", external_id="window-shopper")
    login(marketer)
    tab.goto("/segments/new/")
    count = tab.locator("#preview-count")
    tab.get_by_label("Name").fill("Frequent buyers")
    mark_page(tab)

    expect(count).to_have_text("5")  # an empty "all of" group: everyone
    after_swap(tab, lambda: tab.get_by_role("button", name="+ Condition").click())
    row = tab.locator("#row-r-0")
    expect(tab.locator("#err-r-0")).to_have_text("choose a field")
    after_swap(tab, lambda: row.get_by_label("Field").select_option("metrics.frequency"))
    after_swap(tab, lambda: row.get_by_label("Operator").select_option("gte"))
    row.get_by_label("Value").press_sequentially("3", delay=50)
    expect(count).to_have_text("3")
    expect(tab.locator("#preview .sample li")).to_have_count(3)
    row.get_by_label("Value").fill("5")
    expect(count).to_have_text("2")

    # A new, unfinished condition: the preview explains, next to that row.
    after_swap(tab, lambda: tab.get_by_role("button", name="+ Condition").first.click())
    second = tab.locator("#row-r-1")
    expect(second).to_be_visible()
    expect(tab.locator("#err-r-1")).to_have_text("choose a field")
    after_swap(tab, lambda: second.get_by_label("Field").select_option("first_name"))
    after_swap(tab, lambda: second.get_by_label("Operator").select_option("starts_with"))
    second.get_by_label("Value").press_sequentially("Buyer3", delay=30)
    expect(count).to_have_text("1")
    expect(tab.locator("#err-r-1")).to_have_text("")

    # Typing, then at once adding a group while the server is slow: the debounced preview
    # fires while the redraw is in flight, and must not abort it.
    def slow_redraw(route):
        time.sleep(0.8)
        route.continue_()

    tab.route("**/segments/new/", slow_redraw)
    second.get_by_label("Value").fill("Buyer")
    tab.get_by_role("button", name="+ Group").last.click()
    expect(tab.locator("#row-r-2")).to_be_visible()
    tab.unroute("**/segments/new/")
    tab.wait_for_timeout(600)  # let the debounced preview run
    expect(tab.locator("#row-r-2")).to_be_visible()
    expect(tab.locator("#err-r-2-0")).to_have_text("choose a field")
    expect(second.get_by_label("Value")).to_have_value("Buyer")
    after_swap(tab, lambda: tab.get_by_role("button", name="Remove this group").click())
    expect(tab.locator("#row-r-2")).to_have_count(0)
    second.get_by_label("Value").fill("Buyer3")
    expect(count).to_have_text("1")

    # Any of the two: the match switch is live too.
    tab.locator("#r-match").select_option("any")
    expect(count).to_have_text("2")
    tab.locator("#r-match").select_option("all")
    expect(count).to_have_text("1")
    assert still_same_page(tab)

    tab.get_by_role("button", name="Save segment").click()
    expect(tab.get_by_role("heading", name=re.compile("Frequent buyers"))).to_be_visible()
    segment = Segment.objects.get(name="Frequent buyers")
    assert segment.rule == {
        "all": [
            {"field": "metrics.frequency", "op": "gte", "value": 5},
            {"field": "first_name", "op": "starts_with", "value": "Buyer3"},
        ]
    }
    expect(tab.get_by_text("Purchases is at least 5")).to_be_visible()


def test_import_upload_shows_progress_until_done_with_rejected_rows(
    tab, login, integrator, no_worker
):
    login(integrator)
    tab.goto("/imports/")
    tab.get_by_label("CSV file", exact=True).set_input_files(
        {"name": "notes.csv", "mimeType": "text/csv", "buffer": b"\x00\x01\x02binary"}
    )
    tab.get_by_role("button", name="Upload and import").click()
    expect(tab.locator("#file-errors")).to_contain_text("not a CSV file")

    tab.get_by_role("radio", name="Customers").check()
    tab.get_by_label("CSV file", exact=True).set_input_files(
        {
            "name": "people.csv",
            "mimeType": "text/csv",
            "buffer": b"external_id,email\nb1,b1@example.com\nb2,broken\nb3,b3@example.com\n",
        }
    )
    tab.get_by_role("button", name="Upload and import").click()
    expect(tab.get_by_role("heading", name=re.compile(r"Import #\d+: people.csv"))).to_be_visible()
    bar = tab.locator("#job-bar")
    expect(bar).to_have_attribute("value", "0")
    expect(tab.locator("#job-progress .badge")).to_have_text("Pending")

    job = ImportJob.objects.get()
    assert no_worker["imports"] == [job.pk]  # queued for a worker once committed
    polls: list[str] = []
    tab.on(
        "request", lambda request: polls.append(request.url) if "/imports/" in request.url else None
    )
    import_job_run(job=job)  # what the worker does

    expect(tab.locator("#job-progress .badge")).to_have_text("Succeeded")
    expect(bar).to_have_attribute("value", "100")
    expect(tab.locator("#rejected-rows tbody tr")).to_have_count(1)
    expect(tab.locator("#rejected-rows")).to_contain_text("email")
    expect(tab.get_by_role("link", name="Download rejected rows (CSV)")).to_be_visible()
    # 286 stopped the polling.
    seen = len(polls)
    tab.wait_for_timeout(2500)
    assert len(polls) == seen


def test_refresh_button_shows_progress_until_done_and_reloads_sizes(
    tab, login, marketer, no_worker
):
    # A transactional test may find the migration's default segments flushed away.
    champions, _ = Segment.objects.get_or_create(
        slug="champions",
        defaults={"name": "Champions", "kind": "rfm", "rule": {"r": [4, 5], "f": [4, 5]}},
    )
    Segment.objects.update(size=0)
    login(marketer)
    tab.goto("/segments/")
    mark_page(tab)
    tab.get_by_role("button", name="Refresh now").click()
    progress = tab.locator("#refresh progress")
    expect(progress).to_be_visible()
    expect(tab.get_by_role("button", name="Refresh now")).to_have_count(0)
    run = RefreshRun.objects.get()
    assert no_worker["refreshes"] == [run.pk]

    RefreshRun.objects.filter(pk=run.pk).update(
        status=JobStatus.RUNNING, step="RFM scores and segments", steps_done=2, steps_total=4
    )
    expect(progress).to_have_attribute("value", "50")
    expect(tab.locator("#refresh")).to_contain_text("RFM scores and segments")

    Segment.objects.filter(pk=champions.pk).update(size=1234, refreshed_at=timezone.now())
    RefreshRun.objects.filter(pk=run.pk).update(
        status=JobStatus.SUCCEEDED, step="Done", steps_done=4, finished_at=timezone.now()
    )
    expect(tab.locator("#refresh .badge")).to_have_text("Done")
    expect(tab.get_by_role("button", name="Refresh now")).to_be_visible()
    # The finished poll tells the segment table to reload its sizes.
    expect(tab.locator("#segments")).to_contain_text("1,234")
    assert still_same_page(tab)
