"""The segment builder page: server-rendered rule tree, live preview, JSON, save."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from segmentation.models import CustomerMetrics, Segment
from segmentation.services.segments import segment_create
from segmentation.tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
NEW = reverse("segmentation:segment-create")
PREVIEW = reverse("segmentation:segment-preview")


@pytest.fixture
def buyers(db):
    """Three customers who bought 1, 3 and 5 times, and one without metrics."""
    people = []
    for n, frequency in enumerate([1, 3, 5]):
        customer = CustomerFactory(external_id=f"buyer-{n}", first_name=f"Buyer{n}")
        CustomerMetrics.objects.create(customer=customer, frequency=frequency)
        people.append(customer)
    people.append(CustomerFactory(external_id="window-shopper"))
    return people


def rule_form(**extra) -> dict[str, str]:
    """The builder's inputs for: all of [frequency >= value]."""
    data = {
        "name": "Frequent",
        "description": "",
        "r.kind": "group",
        "r.match": "all",
        "r-0.kind": "condition",
        "r-0.field": "metrics.frequency",
        "r-0.op": "gte",
        "r-0.value": "3",
    }
    data.update(extra)
    return data


def test_new_builder_page_starts_empty_matching_everyone(client_for, marketer, buyers):
    html = client_for(marketer).get(NEW).text
    assert "New rule segment" in html
    assert 'name="r.kind" value="group"' in html and 'name="r-0.kind"' not in html
    assert "No conditions: every customer matches." in html and 'data-count="4"' in html
    assert 'name="action" value="add-condition:r"' in html


def test_an_added_condition_offers_the_dropdowns(client_for, marketer):
    html = client_for(marketer).post(NEW, {"r.kind": "group", "action": "add-condition:r"}).text
    assert 'name="r-0.kind" value="condition"' in html
    assert '<optgroup label="Customer">' in html and '<optgroup label="Metrics">' in html
    assert 'value="metrics.frequency"' in html and 'value="event"' in html
    assert 'hx-post="' + PREVIEW + '"' in html
    assert 'hx-trigger="input changed delay:400ms target:.rule-input"' in html
    assert 'name="action" value="add-condition:r"' in html
    assert 'name="action" value="add-group:r"' in html
    assert 'name="action" value="save"' in html
    assert 'for="r-0-field"' in html and 'id="r-0-field"' in html  # labelled inputs
    assert "choose a field" in html  # the preview says what is missing


def test_choosing_a_field_rerenders_the_builder_with_its_operators(client_for, marketer, buyers):
    client = client_for(marketer)
    data = {"r.kind": "group", "r.match": "all", "r-0.kind": "condition", "r-0.field": "created_at"}
    response = client.post(NEW, data, headers=HX)
    html = response.text
    assert "<html" not in html and html.lstrip().startswith('<div id="builder"')
    ops = re.search(r'<select name="r-0.op".*?</select>', html, re.S).group(0)
    assert 'value="before"' in ops and 'value="gte"' not in ops
    assert 'placeholder="YYYY-MM-DD"' in html
    assert 'id="preview"' in html  # the preview comes along


def test_buttons_add_and_remove_rows(client_for, marketer, buyers):
    client = client_for(marketer)
    html = client.post(NEW, rule_form(action="add-group:r"), headers=HX).text
    assert 'name="r-1.kind" value="group"' in html and 'name="r-1-0.kind" value="condition"' in html
    html = client.post(NEW, rule_form(action="add-condition:r"), headers=HX).text
    assert 'name="r-1.kind" value="condition"' in html
    html = client.post(NEW, rule_form(action="remove:r-0"), headers=HX).text
    assert 'name="r-0.kind"' not in html
    assert "No conditions: every customer matches." in html
    assert 'data-count="4"' in html  # the empty "all" group matches everybody


def test_preview_counts_and_samples_as_the_marketer_types(client_for, marketer, buyers):
    client = client_for(marketer)
    response = client.post(PREVIEW, rule_form(), headers=HX)
    html = response.text
    assert response.status_code == 200 and "<html" not in html
    assert html.lstrip().startswith('<aside id="preview"')
    assert 'data-count="2"' in html
    assert "Buyer1" in html and "Buyer2" in html and "Buyer0" not in html
    assert reverse("segmentation:customer-detail", args=[buyers[1].pk]) in html
    assert "&quot;metrics.frequency&quot;" in html  # the rule JSON, in sync
    # Every row's error slot is cleared out of band.
    assert '<p class="rule-error error" id="err-r-0" hx-swap-oob="true"></p>' in html
    html = client.post(PREVIEW, rule_form(**{"r-0.value": "5"}), headers=HX).text
    assert 'data-count="1"' in html


def test_a_preview_too_slow_to_count_says_so(client_for, marketer, buyers, monkeypatch):
    from segmentation import selectors

    def too_slow(**kwargs):
        raise selectors.SegmentPreviewTooSlow()

    monkeypatch.setattr(selectors, "segment_preview", too_slow)
    html = client_for(marketer).post(PREVIEW, rule_form(), headers=HX).text
    assert "took longer than 15 seconds" in html and "Not a valid rule yet" not in html
    assert "data-count" not in html


def test_preview_of_an_invalid_rule_shows_the_error_next_to_its_condition(
    client_for, marketer, buyers
):
    data = rule_form(
        **{"r-0.value": "lots", "r-1.kind": "condition", "r-1.field": "email", "r-1.op": "is_set"}
    )
    html = client_for(marketer).post(PREVIEW, data, headers=HX).text
    assert "Not a valid rule yet" in html and "needs a number" in html and "(at all[0])" in html
    slot = re.search(
        r'<p class="rule-error error" id="err-r-0" hx-swap-oob="true">([^<]*)</p>', html
    )
    assert slot and "needs a number" in slot.group(1)
    assert '<p class="rule-error error" id="err-r-1" hx-swap-oob="true"></p>' in html
    assert "data-count" not in html


def test_builder_rerender_marks_the_condition_with_the_error(client_for, marketer, buyers):
    data = rule_form(**{"r-0.value": ""})
    html = client_for(marketer).post(NEW, data, headers=HX).text
    assert re.search(r'id="row-r-0"', html)
    assert re.search(r'id="err-r-0">[^<]*needs a value', html)


def test_unknown_segment_reference_is_an_error_of_its_row(client_for, marketer, buyers):
    data = {
        "r.kind": "group", "r.match": "any",
        "r-0.kind": "condition", "r-0.field": "email", "r-0.op": "is_set",
        "r-1.kind": "condition", "r-1.field": "segment", "r-1.key": "ghost", "r-1.op": "in",
    }  # fmt: skip
    html = client_for(marketer).post(PREVIEW, data, headers=HX).text
    assert re.search(r'id="err-r-1" hx-swap-oob="true">[^<]*ghost', html)


def test_save_creates_the_segment_and_redirects_to_it(client_for, marketer, buyers):
    response = client_for(marketer).post(NEW, rule_form(action="save", description="3+"))
    segment = Segment.objects.get(name="Frequent")
    assert response.status_code == 302 and response["Location"] == segment.get_absolute_url()
    assert segment.kind == "rule" and segment.description == "3+" and segment.created_by == marketer
    assert segment.rule == {"all": [{"field": "metrics.frequency", "op": "gte", "value": 3}]}


def test_save_with_an_invalid_rule_or_name_shows_the_errors(client_for, marketer, buyers):
    client = client_for(marketer)
    response = client.post(NEW, rule_form(action="save", **{"r-0.value": "lots"}))
    assert response.status_code == 200 and "<html" in response.text
    assert "The rule has an error" in response.text
    assert re.search(r'id="err-r-0">[^<]*needs a number', response.text)
    response = client.post(NEW, rule_form(action="save", name=""))
    assert "This field is required" in response.text
    assert not Segment.objects.filter(kind="rule").exists()


def test_save_refuses_a_reference_cycle_and_marks_the_row(client_for, marketer, buyers):
    first = segment_create(name="First", kind="rule", rule={"all": []})
    second = segment_create(
        name="Second", kind="rule", rule={"all": [{"segment": "first", "op": "in"}]}
    )
    data = {
        "name": "First", "action": "save", "r.kind": "group", "r.match": "all",
        "r-0.kind": "condition", "r-0.field": "segment", "r-0.key": second.slug, "r-0.op": "in",
    }  # fmt: skip
    html = (
        client_for(marketer)
        .post(reverse("segmentation:segment-update", args=[first.slug]), data)
        .text
    )
    assert re.search(r'id="err-r-0">[^<]*cycle', html)
    first.refresh_from_db()
    assert first.rule == {"all": []}


def test_edit_page_shows_the_saved_rule_and_updates_it(client_for, marketer, buyers):
    segment = segment_create(
        name="Pros", kind="rule",
        rule={"any": [{"field": "attributes.plan", "op": "eq", "value": "pro"},
                      {"event": "purchase", "op": "at_least", "count": 2, "days": 30}]},
    )  # fmt: skip
    client = client_for(marketer)
    url = reverse("segmentation:segment-update", args=[segment.slug])
    html = client.get(url).text
    assert "Edit Pros" in html
    assert 'name="r-0.key" id="r-0-key" value="plan"' in html
    assert re.search(r'<option value="any" selected>', html)
    assert 'name="r-1.count" id="r-1-count" value="2"' in html
    response = client.post(
        url,
        {"name": "Pros", "action": "save", "r.kind": "group", "r.match": "all",
         "r-0.kind": "condition", "r-0.field": "first_name", "r-0.op": "starts_with",
         "r-0.value": "Buy"},
    )  # fmt: skip
    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.rule == {"all": [{"field": "first_name", "op": "starts_with", "value": "Buy"}]}


def test_htmx_save_redirects_the_page(client_for, marketer, buyers):
    response = client_for(marketer).post(NEW, rule_form(action="save"), headers=HX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == Segment.objects.get(name="Frequent").get_absolute_url()


def test_pasted_json_replaces_the_tree(client_for, marketer, buyers):
    rule = {
        "any": [
            {"field": "metrics.frequency", "op": "lt", "value": 2},
            {"field": "locale", "op": "is_set"},
        ]
    }
    html = (
        client_for(marketer)
        .post(NEW, rule_form(action="load-json", rule_json=json.dumps(rule)), headers=HX)
        .text
    )
    assert 'name="r-1.field"' in html and re.search(r'<option value="lt" selected>', html)
    assert 'data-count="1"' in html  # buyer-0
    assert "Paste rule JSON" in html


@pytest.mark.parametrize(
    ("pasted", "message"),
    [
        ("{not json", "That is not JSON"),
        ('{"all": [{"field": "nope", "op": "eq"}]}', "nope is not a known field"),
        ("[" * 100_000, "nested far too deeply"),
        (
            '{"all": [{"field": "created_at", "op": "after", "value": "9999-12-31"}]}',
            "out of range",
        ),
    ],
)
def test_bad_pasted_json_is_reported_and_the_tree_kept(
    client_for, marketer, buyers, pasted, message
):
    html = (
        client_for(marketer)
        .post(NEW, rule_form(action="load-json", rule_json=pasted), headers=HX)
        .text
    )
    assert message in html and 'id="json-error"' in html
    assert 'value="metrics.frequency" selected' in html


def test_redraws_do_not_nag_about_the_name_until_saving(client_for, marketer, buyers):
    html = (
        client_for(marketer)
        .post(NEW, rule_form(name="", action="add-condition:r"), headers=HX)
        .text
    )
    assert "This field is required" not in html
    html = (
        client_for(marketer)
        .post(NEW, rule_form(name="Kept", action="add-condition:r"), headers=HX)
        .text
    )
    assert 'value="Kept"' in html


def test_without_javascript_buttons_post_the_whole_page(client_for, marketer, buyers):
    response = client_for(marketer).post(NEW, rule_form(action="add-condition:r"))
    assert "<html" in response.text and 'name="r-1.kind" value="condition"' in response.text
    assert "<noscript>" in response.text
