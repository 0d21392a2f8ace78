"""The web shell: login, navigation, roles, htmx wiring, health and API documentation."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from conftest import PASSWORD

FEATURE_PAGES = {
    "segmentation:customer-list": {"marketer", "integrator", "staff"},
    "segmentation:segment-list": {"marketer", "staff"},
    "campaigns:campaign-list": {"marketer", "staff"},
    "experiments:experiment-list": {"marketer", "staff"},
}


def test_login_page_is_public_and_every_other_page_redirects_to_it(client, db):
    assert client.get(reverse("login")).status_code == 200
    for name in ["home", *FEATURE_PAGES]:
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login") + "?next=")


def test_user_logs_in_with_password_and_out_with_post(client, marketer):
    response = client.post(
        reverse("login"), {"username": "marketer", "password": PASSWORD}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("home")
    assert "Welcome" in response.text
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 302


def test_wrong_password_shows_an_error(client, marketer):
    response = client.post(reverse("login"), {"username": "marketer", "password": "nope"})
    assert response.status_code == 200
    assert "didn't match" in response.text


@pytest.mark.parametrize("page", sorted(FEATURE_PAGES))
@pytest.mark.parametrize("role", ["staff", "marketer", "integrator", "outsider"])
def test_feature_pages_check_the_role_on_the_server(client_for, users, page, role):
    response = client_for(users[role]).get(reverse(page))
    expected = 200 if role in FEATURE_PAGES[page] else 403
    assert response.status_code == expected


def test_fragment_requests_are_checked_too(client_for, users):
    response = client_for(users["outsider"]).get(
        reverse("segmentation:segment-list"), headers={"HX-Request": "true"}
    )
    assert response.status_code == 403


def test_base_template_serves_htmx_locally_and_sends_csrf_on_htmx_requests(client_for, marketer):
    html = client_for(marketer).get(reverse("home")).text
    assert '<script src="/static/django-htmx/htmx-2.min.js"' in html or "htmx" in html
    assert "https://" not in html.split("<body")[0], "no CDN assets in <head>"
    assert 'hx-headers=\'{"X-CSRFToken": "' in html
    assert "/static/css/app.css" in html
    for label in ("Customers", "Segments", "Campaigns", "Experiments"):
        assert f">{label}</a>" in html


def test_outsider_sees_no_feature_navigation_and_is_told_why(client_for, outsider):
    html = client_for(outsider).get(reverse("home")).text
    assert "has no role yet" in html
    assert ">Segments</a>" not in html


def test_migration_created_the_role_groups(db):
    assert set(Group.objects.values_list("name", flat=True)) >= {"Marketers", "Integrators"}


def test_staff_reach_the_admin_and_others_do_not(client_for, users):
    assert client_for(users["staff"]).get("/admin/").status_code == 200
    response = client_for(users["marketer"]).get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_custom_404_page(client_for, marketer):
    response = client_for(marketer).get("/no-such-page/")
    assert response.status_code == 404
