"""The segments API: roles, CRUD with validation, members, static membership, preview."""

from __future__ import annotations

import pytest

from abtest.models import JobStatus
from segmentation.models import RefreshRun, Segment
from segmentation.tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

RULE = {"all": [{"field": "attributes.plan", "op": "eq", "value": "pro"}]}


@pytest.fixture
def people():
    return [
        CustomerFactory(external_id="p1", email="p1@example.com", attributes={"plan": "pro"}),
        CustomerFactory(external_id="p2", email="p2@example.com", attributes={"plan": "pro"}),
        CustomerFactory(external_id="f1", email="f1@example.com", attributes={"plan": "free"}),
    ]


@pytest.mark.parametrize(
    ("role", "read", "write"),
    [("staff", 200, 201), ("marketer", 200, 201), ("integrator", 200, 403), ("outsider", 403, 403)],
)
def test_roles(api_client_for, users, role, read, write):
    client = api_client_for(users[role])
    assert client.get("/api/v1/segments/").status_code == read
    response = client.post("/api/v1/segments/", {"name": f"S {role}", "kind": "static"})
    assert response.status_code == write
    preview = client.post("/api/v1/segments/preview/", {"rule": RULE})
    assert preview.status_code == (200 if write == 201 else 403)


def test_create_read_update_delete_a_rule_segment(api_client_for, marketer, people):
    client = api_client_for(marketer)
    created = client.post("/api/v1/segments/", {"name": "Pro plan", "kind": "rule", "rule": RULE})
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["slug"] == "pro-plan" and body["size"] == 0
    segment_id = body["id"]

    refreshed = client.post(f"/api/v1/segments/{segment_id}/refresh/").json()
    assert refreshed == {"joined": 2, "left": 0, "size": 2}
    members = client.get(f"/api/v1/segments/{segment_id}/members/").json()["results"]
    assert sorted(m["external_id"] for m in members) == ["p1", "p2"]

    new_rule = {"all": [{"field": "attributes.plan", "op": "eq", "value": "free"}]}
    patched = client.patch(f"/api/v1/segments/{segment_id}/", {"rule": new_rule})
    assert patched.status_code == 200 and patched.json()["rule"] == new_rule
    assert client.post(f"/api/v1/segments/{segment_id}/refresh/").json() == {
        "joined": 1,
        "left": 2,
        "size": 1,
    }
    assert client.patch(f"/api/v1/segments/{segment_id}/", {"kind": "static"}).status_code == 400
    assert client.delete(f"/api/v1/segments/{segment_id}/").status_code == 204
    assert not Segment.objects.filter(pk=segment_id).exists()


def test_invalid_rules_and_cycles_are_400_naming_the_condition(api_client_for, marketer):
    client = api_client_for(marketer)
    bad = {"all": [{"field": "metrics.frequncy", "op": "gte", "value": 1}]}
    response = client.post("/api/v1/segments/", {"name": "Bad", "kind": "rule", "rule": bad})
    assert response.status_code == 400
    assert "all[0]" in response.json()["rule"][0]
    a = client.post("/api/v1/segments/", {"name": "A", "kind": "static"}).json()
    b_rule = {"all": [{"segment": a["slug"], "op": "in"}]}
    b = client.post("/api/v1/segments/", {"name": "B", "kind": "rule", "rule": b_rule}).json()
    assert client.delete(f"/api/v1/segments/{a['id']}/").status_code == 400
    self_ref = {"all": [{"segment": b["slug"], "op": "in"}]}
    response = client.patch(f"/api/v1/segments/{b['id']}/", {"rule": self_ref})
    assert response.status_code == 400 and "cycle" in response.json()["rule"][0]
    response = client.post("/api/v1/segments/", {"name": "X", "slug": "new", "kind": "static"})
    assert response.status_code == 400 and "reserved" in response.json()["slug"][0]


def test_static_membership_by_api(api_client_for, marketer, integrator, people):
    client = api_client_for(marketer)
    vip = client.post("/api/v1/segments/", {"name": "VIP", "kind": "static"}).json()
    added = client.post(
        f"/api/v1/segments/{vip['id']}/members/",
        {"external_ids": ["p1", "ghost"], "emails": ["F1@example.com"]},
    ).json()
    assert added == {"changed": 2, "unknown": ["ghost"], "size": 2}
    removed = client.post(
        f"/api/v1/segments/{vip['id']}/members/remove/", {"external_ids": ["p1"]}
    ).json()
    assert removed["changed"] == 1 and removed["size"] == 1
    members = api_client_for(integrator).get(f"/api/v1/segments/{vip['id']}/members/").json()
    assert [m["external_id"] for m in members["results"]] == ["f1"]
    assert client.post(f"/api/v1/segments/{vip['id']}/members/", {}).status_code == 400
    champions = Segment.objects.get(slug="champions")
    response = client.post(f"/api/v1/segments/{champions.pk}/members/", {"external_ids": ["p1"]})
    assert response.status_code == 400
    assert (
        api_client_for(integrator)
        .post(f"/api/v1/segments/{vip['id']}/members/", {"external_ids": ["p2"]})
        .status_code
        == 403
    )


def test_preview_counts_and_samples_without_saving(api_client_for, marketer, people):
    client = api_client_for(marketer)
    response = client.post("/api/v1/segments/preview/", {"rule": RULE, "sample_size": 1})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2 and len(body["sample"]) == 1
    assert set(body["sample"][0]) == {"external_id", "email", "name"}
    bad = client.post("/api/v1/segments/preview/", {"rule": {"all": [{"op": "eq"}]}})
    assert bad.status_code == 400 and "rule" in bad.json()
    assert Segment.objects.filter(kind="rule").count() == 0


def test_a_preview_too_slow_to_count_is_a_400_naming_the_rule(
    api_client_for, marketer, people, monkeypatch
):
    from segmentation.api import segments as api
    from segmentation.selectors import SegmentPreviewTooSlow

    def too_slow(**kwargs):
        raise SegmentPreviewTooSlow()

    monkeypatch.setattr(api, "segment_preview", too_slow)
    response = api_client_for(marketer).post("/api/v1/segments/preview/", {"rule": RULE})
    assert response.status_code == 400
    assert "took longer than 15 seconds" in response.json()["rule"][0]


def test_refresh_runs_can_be_started_and_followed(api_client_for, marketer, integrator, people):
    client = api_client_for(marketer)
    response = client.post("/api/v1/refreshes/")
    assert response.status_code == 202
    run = RefreshRun.objects.get(pk=response.json()["id"])
    assert run.trigger == "api"
    listed = api_client_for(integrator).get("/api/v1/refreshes/").json()["results"]
    assert listed[0]["id"] == run.pk
    assert api_client_for(integrator).post("/api/v1/refreshes/").status_code == 403
    assert run.status in {JobStatus.PENDING, JobStatus.SUCCEEDED}


def test_a_rule_cannot_be_cleared_and_slugs_are_checked(api_client_for, marketer):
    client = api_client_for(marketer)
    rule = client.post("/api/v1/segments/", {"name": "R", "kind": "rule", "rule": RULE}).json()
    response = client.patch(f"/api/v1/segments/{rule['id']}/", {"rule": None})
    assert response.status_code == 400
    assert response.json() == {"rule": ["A rule segment needs a rule."]}
    assert Segment.objects.get(pk=rule["id"]).rule == RULE
    static = client.post("/api/v1/segments/", {"name": "S", "kind": "static"}).json()
    assert client.patch(f"/api/v1/segments/{static['id']}/", {"rule": None}).status_code == 200
    for slug in ("Upper", "trailing-", "_lead", "sp ace"):
        response = client.patch(f"/api/v1/segments/{static['id']}/", {"slug": slug})
        assert response.status_code == 400, slug
        assert "slug" in response.json()
    response = client.patch(f"/api/v1/segments/{static['id']}/", {"slug": "good_one-2"})
    assert response.status_code == 200 and response.json()["slug"] == "good_one-2"


def test_an_out_of_range_date_rule_is_a_400_not_a_broken_refresh(api_client_for, marketer):
    client = api_client_for(marketer)
    rule = {"all": [{"field": "created_at", "op": "after", "value": "9999-12-31"}]}
    response = client.post("/api/v1/segments/", {"name": "X", "kind": "rule", "rule": rule})
    assert response.status_code == 400 and "out of range" in response.json()["rule"][0]
    response = client.post("/api/v1/segments/preview/", {"rule": rule})
    assert response.status_code == 400 and "all[0]" in response.json()["rule"][0]
