"""The compose stack, the Dockerfile and the configuration docs agree with the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from abtest import env

ROOT = Path(__file__).resolve().parents[2]
OUR_IMAGE_SERVICES = {"web", "worker", "beat", "docs"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _environment(service: dict) -> dict:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return environment


def test_compose_has_every_service_with_health_checks(compose):
    services = compose["services"]
    assert set(services) == {"db", "redis", "web", "worker", "beat", "mailpit", "pgadmin", "docs"}
    assert services["db"]["image"].startswith("postgres:16")
    assert services["pgadmin"]["profiles"] == ["tools"]
    assert services["docs"]["profiles"] == ["docs"]
    for name in ("db", "redis", "web", "worker", "mailpit"):
        assert "test" in services[name]["healthcheck"], name
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["db"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert "migrate" in " ".join(services["web"]["command"])
    assert "gunicorn" in " ".join(services["web"]["command"])
    assert services["worker"]["command"][-4:-2] == ["-Q", "email,compute"] or (
        "email,compute" in services["worker"]["command"]
    )


def test_compose_sets_only_variables_the_settings_read(compose):
    import django.conf

    django.conf.settings.DEBUG  # noqa: B018 - make sure the settings module has run
    for name, service in compose["services"].items():
        if name not in OUR_IMAGE_SERVICES:
            continue
        unknown = [key for key in _environment(service) if not env.is_known(key)]
        assert not unknown, f"{name} sets variables the settings never read: {unknown}"


def test_web_and_worker_share_uploaded_files(compose):
    for name in ("web", "worker"):
        assert "media:/app/var/media" in compose["services"][name]["volumes"], name
    assert "media" in compose["volumes"]


def test_compose_mails_go_to_mailpit(compose):
    environment = _environment(compose["services"]["web"])
    assert environment["EMAIL_HOST"] == "mailpit"
    assert environment["EMAIL_PORT"] == "1025"


def test_compose_keeps_secrets_out_of_the_repository(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    for variable in ("SECRET_KEY", "POSTGRES_PASSWORD", "PGADMIN_PASSWORD"):
        assert re.search(rf"\$\{{{variable}:\?", text), f"{variable} must come from .env"


def test_every_variable_the_settings_read_is_documented():
    import django.conf

    django.conf.settings.DEBUG  # noqa: B018
    documented = set(
        re.findall(r"^\| `([A-Z_]+)\*?`", (ROOT / "docs/configuration.md").read_text(), re.M)
    )
    missing = sorted(env.READ - documented)
    assert not missing, f"docs/configuration.md does not list: {missing}"
    assert documented >= env.PREFIXES, "prefixed families are documented as `PREFIX_*`"


def test_dockerfile_runs_as_non_root_and_collects_static_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER app" in dockerfile
    assert "collectstatic --noinput" in dockerfile
    assert "FROM python:3.11" in dockerfile
