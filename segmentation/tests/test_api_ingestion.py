"""The customers and events API: permissions, CRUD, bulk upsert and batch ingestion."""

from __future__ import annotations

import json

import pytest

from segmentation.models import Customer, Event
from segmentation.tests.factories import CustomerFactory, SegmentFactory

pytestmark = pytest.mark.django_db


def post_json(client, url, payload, **extra):
    return client.post(url, data=json.dumps(payload), content_type="application/json", **extra)


@pytest.mark.parametrize(
    ("role", "read", "write"),
    [
        ("staff", 200, 200),
        ("integrator", 200, 200),
        ("marketer", 200, 403),
        ("outsider", 403, 403),
    ],
)
def test_roles_on_customers_and_events(api_client_for, users, role, read, write):
    client = api_client_for(users[role])
    assert client.get("/api/v1/customers/").status_code == read
    assert client.get("/api/v1/events/").status_code == read
    assert post_json(client, "/api/v1/customers/bulk/", [{"external_id": "a"}]).status_code == write
    event = {"customer": "a", "type": "session", "occurred_at": "2024-01-01T00:00:00Z"}
    assert post_json(client, "/api/v1/events/", event).status_code == write


def test_anonymous_requests_get_401(api_client_for):
    assert api_client_for(None).get("/api/v1/customers/").status_code == 401
    assert post_json(api_client_for(None), "/api/v1/events/", {}).status_code == 401


def test_customer_crud_by_external_id(api_client_for, integrator):
    client = api_client_for(integrator)
    created = post_json(
        client,
        "/api/v1/customers/",
        {"external_id": "u-1", "email": "u1@example.com", "attributes": {"plan": "pro"}},
    )
    assert created.status_code == 201, created.json()
    assert created.json()["subscription_status"] == "subscribed"
    assert created.json()["metrics"] is None

    patched = client.patch(
        "/api/v1/customers/u-1/", {"first_name": "Uma", "attributes": {"city": "Oslo"}}
    )
    assert patched.status_code == 200
    assert patched.json()["attributes"] == {"plan": "pro", "city": "Oslo"}

    replaced = client.put(
        "/api/v1/customers/u-1/", {"external_id": "u-1", "attributes": {"tier": "b"}}
    )
    assert replaced.status_code == 200
    assert replaced.json()["attributes"] == {"tier": "b"}

    assert client.get("/api/v1/customers/u-1/").json()["first_name"] == "Uma"
    assert client.delete("/api/v1/customers/u-1/").status_code == 204
    assert client.get("/api/v1/customers/u-1/").status_code == 404


def test_customer_validation_errors_are_field_level(api_client_for, integrator):
    client = api_client_for(integrator)
    CustomerFactory(external_id="taken", email="taken@example.com")
    response = post_json(
        client, "/api/v1/customers/", {"external_id": "x", "email": "no", "time_zone": "Nope"}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"email", "time_zone"}
    response = post_json(
        client, "/api/v1/customers/", {"external_id": "y", "email": "TAKEN@example.com"}
    )
    assert response.status_code == 400
    assert response.json() == {"email": ["Another customer has this email."]}
    response = post_json(client, "/api/v1/customers/", {"external_id": "taken"})
    assert response.status_code == 400 and "external_id" in response.json()


def test_customer_list_filters(api_client_for, marketer):
    pro = CustomerFactory(email="ann@shop.example", first_name="Ann", attributes={"plan": "pro"})
    bob = CustomerFactory(email="bob@shop.example", first_name="Bob", attributes={"plan": "free"})
    # Fixed names: a generated one could start with "Ann" or "Bob" and match the searches.
    gone = CustomerFactory(
        first_name="Zed",
        last_name="Quill",
        subscription_status="unsubscribed",
        attributes={"seats": 3},
    )
    segment = SegmentFactory(slug="vip", kind="static")
    segment.memberships.create(customer=pro, joined_at="2024-01-01T00:00:00Z")
    client = api_client_for(marketer)

    def ids(query):
        response = client.get(f"/api/v1/customers/?{query}")
        assert response.status_code == 200, response.json()
        return [c["external_id"] for c in response.json()["results"]]

    assert ids("search=ANN") == [pro.external_id]
    assert ids("search=bob@shop") == ids("search=Bob") == [bob.external_id]
    assert ids("attributes.plan=pro") == [pro.external_id]
    assert ids("attributes.seats=3") == [gone.external_id]
    assert ids("subscription_status=unsubscribed") == [gone.external_id]
    assert ids("segment=vip") == [pro.external_id]
    assert client.get("/api/v1/customers/?segment=nope").status_code == 400
    assert client.get("/api/v1/customers/?subscription_status=nope").status_code == 400


def test_customer_list_is_cursor_paginated(api_client_for, marketer):
    CustomerFactory.create_batch(5)
    client = api_client_for(marketer)
    first = client.get("/api/v1/customers/?page_size=2").json()
    second = client.get(first["next"]).json()
    assert len(first["results"]) == 2 and len(second["results"]) == 2
    assert {c["external_id"] for c in first["results"]}.isdisjoint(
        c["external_id"] for c in second["results"]
    )


def test_bulk_upsert_reports_created_updated_unchanged_and_rejected(api_client_for, integrator):
    client = api_client_for(integrator)
    batch = [
        {"external_id": "a", "email": "a@example.com"},
        {"external_id": "b", "email": "nope"},
        {"external_id": 7, "attributes": {"plan": "pro"}},
        {"external_id": "c", "colour": "red"},
        {"email": "d@example.com"},
        "not an object",
    ]
    response = post_json(client, "/api/v1/customers/bulk/", batch)
    assert response.status_code == 200
    body = response.json()
    assert (body["created"], body["updated"], body["unchanged"]) == (2, 0, 0)
    assert [(r["index"], r["column"]) for r in body["rejected"]] == [
        (1, "email"),
        (3, "colour"),
        (4, "external_id"),
        (5, None),
    ]
    assert body["rejected"][3]["reason"] == "Must be an object, not a string."
    again = post_json(client, "/api/v1/customers/bulk/", batch[:1] + batch[2:3]).json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 2)
    assert Customer.objects.get(external_id="7").attributes == {"plan": "pro"}


def test_bulk_limits_and_malformed_bodies(api_client_for, integrator):
    client = api_client_for(integrator)
    too_many = [{"external_id": str(i)} for i in range(10_001)]
    response = post_json(client, "/api/v1/customers/bulk/", too_many)
    assert response.status_code == 400
    assert "At most 10,000" in response.json()["non_field_errors"][0]
    response = client.post("/api/v1/events/", data=b"{not json", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]
    assert post_json(client, "/api/v1/events/", 42).status_code == 400
    assert Customer.objects.count() == 0


def test_events_batch_with_duplicates_and_rejections(api_client_for, integrator):
    CustomerFactory(external_id="a")
    client = api_client_for(integrator)
    events = [
        {
            "customer": "a",
            "type": "purchase",
            "occurred_at": "2024-01-01T00:00:00Z",
            "value": 12.5,
            "event_id": "o-1",
        },
        {
            "customer": "a",
            "type": "purchase",
            "occurred_at": "2024-01-01T00:00:00Z",
            "event_id": "o-1",
        },
        {"customer": "ghost", "type": "session", "occurred_at": "2024-01-01T00:00:00Z"},
        {"customer": "a", "type": 5, "occurred_at": "2024-01-01T00:00:00Z"},
        {"customer": "a", "occurred_at": "2024-01-01T00:00:00Z"},
    ]
    body = post_json(client, "/api/v1/events/", events).json()
    assert (body["accepted"], body["duplicates"], body["customers_created"]) == (1, 1, 0)
    assert [(r["index"], r["column"]) for r in body["rejected"]] == [
        (2, "customer"),
        (3, "type"),
        (4, "type"),
    ]
    assert body["rejected"][1]["reason"] == "Must be a string, not an integer."
    body = post_json(client, "/api/v1/events/", events[:1]).json()
    assert (body["accepted"], body["duplicates"]) == (0, 1)
    assert Event.objects.get().value == 12.5


def test_events_can_create_unknown_customers(api_client_for, integrator):
    client = api_client_for(integrator)
    event = {"customer": "new", "type": "session", "occurred_at": "2024-01-01T00:00:00Z"}
    body = post_json(client, "/api/v1/events/?create_customers=true", event).json()
    assert (body["accepted"], body["customers_created"]) == (1, 1)
    listed = client.get("/api/v1/events/?customer=new").json()["results"]
    assert [(e["customer"], e["type"]) for e in listed] == [("new", "session")]


def test_schema_documents_the_bulk_endpoints(api_client_for, integrator):
    schema = api_client_for(integrator).get("/api/schema/?format=json").json()
    assert "/api/v1/customers/bulk/" in schema["paths"]
    assert "/api/v1/events/" in schema["paths"]
    assert "/api/v1/customers/{external_id}/" in schema["paths"]


def _params(operation: dict) -> set[str]:
    return {p["name"] for p in operation.get("parameters", [])}


def _ok_schema(schema: dict, operation: dict) -> dict:
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_schema_matches_the_requests_and_responses(api_client_for, integrator):
    """Cursor-paged lists say so, POST /events/ takes one event or a list, and the list
    filters are documented on the list only."""
    schema = api_client_for(integrator).get("/api/schema/?format=json").json()
    paths = schema["paths"]
    for path in ("/api/v1/customers/", "/api/v1/events/", "/api/v1/segments/{id}/members/"):
        page = _ok_schema(schema, paths[path]["get"])
        assert set(page["properties"]) == {"next", "previous", "results"}, path
        assert {"cursor", "page_size"} <= _params(paths[path]["get"]), path
    body = paths["/api/v1/events/"]["post"]["requestBody"]["content"]["application/json"]
    one_of = schema["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]["oneOf"]
    assert one_of[0]["$ref"].endswith("/EventItemRequest")
    assert one_of[1]["type"] == "array" and one_of[1]["items"] == one_of[0]
    filters = {"search", "segment", "subscription_status", "attributes.<key>"}
    assert filters <= _params(paths["/api/v1/customers/"]["get"])
    detail = paths["/api/v1/customers/{external_id}/"]
    for method in ("get", "put", "patch", "delete"):
        assert not filters & _params(detail[method]), method
    assert not filters & _params(paths["/api/v1/customers/bulk/"]["post"])


def test_hostile_query_parameters_are_400s_not_500s(api_client_for, integrator):
    client = api_client_for(integrator)
    CustomerFactory(external_id="u-1", attributes={"plan": "pro", "n": 3})
    for url in (
        "/api/v1/customers/?search=%00",
        "/api/v1/customers/?segment=%00",
        "/api/v1/events/?customer=%00",
        "/api/v1/events/?type=a%00",
        "/api/v1/customers/x%00y/",
        "/api/v1/customers/?attributes.plan=%00",
    ):
        response = client.get(url)
        assert response.status_code == 400, url
        assert "Null characters" in response.json()["detail"]
    for key in ("plan__regex", "plan__isnull", "plan__contains", "plan__gt", "a" * 65):
        response = client.get(f"/api/v1/customers/?attributes.{key}=x")
        assert response.status_code == 400, key
        assert f"attributes.{key}" in response.json()
    for value in ("nan", "inf", "-Infinity", "1e400", "9" * 30):
        response = client.get(f"/api/v1/customers/?attributes.n={value}")
        assert response.status_code == 200, value
        assert response.json()["results"] == []
    assert len(client.get("/api/v1/customers/?attributes.n=3").json()["results"]) == 1


@pytest.mark.parametrize(
    "url", ["/api/v1/customers/", "/api/v1/events/", "/api/v1/segments/{id}/members/"]
)
@pytest.mark.parametrize(
    "cursor", ["garbage", "cD1hYmM%3D", "cj0xJnA9eA==", "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5"]
)
def test_bad_cursors_are_400s(api_client_for, users, url, cursor):
    segment = SegmentFactory(kind="static")
    response = api_client_for(users["staff"]).get(url.format(id=segment.pk) + f"?cursor={cursor}")
    assert response.status_code == 400
    assert response.json() == {"cursor": ["Invalid cursor"]}


def test_a_customer_with_a_slash_in_its_external_id_is_reachable(api_client_for, integrator):
    client = api_client_for(integrator)
    assert (
        post_json(client, "/api/v1/customers/bulk/", [{"external_id": "shop/12"}]).status_code
        == 200
    )
    assert client.get("/api/v1/customers/shop%2F12/").json()["external_id"] == "shop/12"
    response = client.patch(
        "/api/v1/customers/shop%2F12/", {"first_name": "Ann"}, content_type="application/json"
    )
    assert response.status_code == 200 and response.json()["first_name"] == "Ann"
    assert client.delete("/api/v1/customers/shop%2F12/").status_code == 204
    assert not Customer.objects.exists()


def test_list_filters_do_not_apply_to_single_customers(api_client_for, integrator):
    CustomerFactory(external_id="u-1")
    client = api_client_for(integrator)
    assert client.get("/api/v1/customers/u-1/?segment=nope").status_code == 200
    assert client.delete("/api/v1/customers/u-1/?segment=nope").status_code == 204


def test_deeply_nested_bodies_are_400s(api_client_for, users):
    deep = "[" * 100_000 + "]" * 100_000
    item = (
        '{"customer": "a", "type": "s", "occurred_at": "2024-01-01", "properties": '
        + ('{"a":' * 5000 + "1" + "}" * 5000)
        + "}"
    )
    client = api_client_for(users["staff"])
    for url in ("/api/v1/events/", "/api/v1/customers/bulk/", "/api/v1/customers/"):
        response = client.post(url, data=deep, content_type="application/json")
        assert response.status_code == 400, url
    response = client.post("/api/v1/events/", data=f"[{item}]", content_type="application/json")
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]
    response = client.post("/api/v1/segments/preview/", data=deep, content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("item", "column", "reason"),
    [
        ({"external_id": 1.5}, "external_id", "Must be an integer or a string, not a number."),
        ({"external_id": True}, "external_id", "Must be an integer or a string, not a boolean."),
        (
            {"external_id": "a", "attributes": [1]},
            "attributes",
            "Must be an object or null, not a list.",
        ),
        ({"external_id": "a", "email": 5}, "email", "Must be a string or null, not an integer."),
    ],
)
def test_bulk_type_errors_are_worded_for_people(api_client_for, integrator, item, column, reason):
    body = post_json(api_client_for(integrator), "/api/v1/customers/bulk/", [item]).json()
    assert body["rejected"] == [{"index": 0, "column": column, "reason": reason}]
