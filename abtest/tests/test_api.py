"""API plumbing: authentication, schema, Swagger UI offline, JSON errors, throttling."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.test import RequestFactory
from rest_framework.views import APIView

from abtest.api.exceptions import exception_handler
from abtest.errors import ServiceError


def test_schema_needs_authentication_and_is_openapi_3(api_client_for, integrator):
    assert api_client_for(None).get("/api/schema/").status_code == 401
    response = api_client_for(integrator).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")


def test_token_authentication_works_and_a_bad_token_is_401(api_client_for, integrator):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/api/schema/").status_code == 401
    assert api_client_for(integrator).get("/api/schema/").status_code == 200


def test_swagger_ui_is_served_offline_to_logged_in_users(client_for, integrator):
    anonymous = client_for(None).get("/api/docs/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    html = client_for(integrator).get("/api/docs/").text
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html


def test_service_errors_become_field_level_400s():
    request = RequestFactory().get("/")
    response = exception_handler(
        ServiceError("Unknown customer.", field="external_id"), {"request": request}
    )
    assert response.status_code == 400
    assert response.data == {"external_id": ["Unknown customer."]}


def test_django_validation_errors_become_400s():
    response = exception_handler(
        DjangoValidationError({"email": ["Enter a valid email address."]}), {}
    )
    assert response.status_code == 400
    assert response.data == {"email": ["Enter a valid email address."]}
    response = exception_handler(DjangoValidationError("Broken."), {})
    assert response.data == {"non_field_errors": ["Broken."]}


def test_throttling_is_configured_for_users_and_anonymous_clients(settings):
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    assert set(rates) == {"anon", "user"}
    assert APIView.throttle_classes, "every API view is throttled by default"


def test_the_openapi_schema_is_valid_and_warning_free(tmp_path):
    from django.core.management import call_command

    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    assert "/api/v1/segments/preview/" in target.read_text()
