"""Shared fixtures: one set of users per role, logged-in clients, and service guards."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

# Django imports stay inside fixtures so that pure-Python tests (experiments/stats) also run
# with ``-p no:django``.

PASSWORD = "correct-horse-battery-staple"


def _make_user(username: str, *, group: str | None = None, staff: bool = False) -> User:
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(
        username=username,
        email=f"{username}@example.com",
        password=PASSWORD,
        is_staff=staff,
        is_superuser=staff,  # staff accounts are superusers: they may fix any record
    )
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def staff_user(db) -> User:
    return _make_user("staff", staff=True)


@pytest.fixture
def marketer(db) -> User:
    return _make_user("marketer", group="Marketers")


@pytest.fixture
def integrator(db) -> User:
    return _make_user("integrator", group="Integrators")


@pytest.fixture
def outsider(db) -> User:
    """Logged in, but in no group: every feature answers 403."""
    return _make_user("outsider")


@pytest.fixture
def users(staff_user, marketer, integrator, outsider) -> dict[str, User]:
    return {
        "staff": staff_user,
        "marketer": marketer,
        "integrator": integrator,
        "outsider": outsider,
    }


@pytest.fixture
def client_for(client):
    """``client_for(user)``: a Django test client logged in as ``user`` (None: anonymous)."""

    def make(user: User | None):
        client.logout()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def api_client_for(db):
    """``api_client_for(user)``: a DRF client authenticating with ``user``'s API token."""

    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def make(user: User | None) -> APIClient:
        api = APIClient()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return api

    return make


def _missing_service(name: str) -> None:
    from django.conf import settings

    message = f"{name} is not configured"
    if settings.REQUIRE_SERVICES:
        pytest.fail(f"{message}, and REQUIRE_SERVICES=1 demands it", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def require_postgres(db) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        _missing_service("PostgreSQL (DATABASE_URL)")


@pytest.fixture
def require_redis() -> str:
    from django.conf import settings

    if not settings.REDIS_URL:
        _missing_service("Redis (REDIS_URL)")
    return settings.REDIS_URL


_DB_FIXTURES = {"db", "transactional_db", "live_server", "_django_db_helper"}


@pytest.fixture(autouse=True)
def _default_rows(request) -> None:
    """Bring back the rows data migrations create (role groups, default RFM segments, the
    engagement model) when a transactional test before this one flushed them away."""
    if not (
        request.node.get_closest_marker("django_db") or _DB_FIXTURES & set(request.fixturenames)
    ):
        return
    request.getfixturevalue("_django_db_helper")
    from django.contrib.auth.models import Group

    if Group.objects.filter(name="Marketers").exists():
        return
    from importlib import import_module

    from django.apps import apps

    import_module("abtest.migrations.0001_initial").create_groups(apps, None)
    import_module("segmentation.migrations.0002_postgres_indexes_and_defaults").load_defaults(
        apps, None
    )


@pytest.fixture(autouse=True)
def _test_settings(request) -> None:
    """Templates render without collectstatic; passwords hash fast (tests only)."""
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
