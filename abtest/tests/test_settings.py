"""Settings come from the environment; bad values stop start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from abtest import env

ROOT = Path(__file__).resolve().parents[2]
# Variables the test run itself sets (abtest/pytest_plugin.py) or that CI exports.
SCRUBBED = {
    "SECRET_KEY",
    "DEBUG",
    "DATABASE_URL",
    "REDIS_URL",
    "SECURE_SSL_REDIRECT",
    "DJANGO_ALLOW_ASYNC_UNSAFE",  # set by the browser tests
}
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "x" * 20 + "a-long-random-production-key-with-entropy-1234567890",
    "ALLOWED_HOSTS": "abtest.example.com",
}


def run_django(code: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key not in SCRUBBED}
    environ.update({"DJANGO_SETTINGS_MODULE": "abtest.settings", **extra_env})
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "mysql://root@localhost/abtest"),
        ("DATABASE_URL", "postgres://user@localhost:notaport/abtest"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_URL", "redis://localhost:99999999/0"),
        ("EMAIL_PORT", "twenty-five"),
        ("CELERY_TASK_TIME_LIMIT", "1h"),
        ("DEBUG", "maybe"),
        ("SITE_URL", "example.com"),
        ("TIME_ZONE", "Mars/Olympus_Mons"),
        ("API_THROTTLE_USER", "lots"),
        ("LOG_LEVEL", "LOUD"),
        ("CSRF_TRUSTED_ORIGINS", "abtest.example.com"),
        ("SEGMENT_PREVIEW_PARALLEL_WORKERS", "-1"),
        ("SEGMENT_PREVIEW_PARALLEL_WORKERS", "two"),
    ],
)
def test_bad_value_stops_startup_naming_the_variable(name, value):
    result = run_django("", {**PRODUCTION_ENV, name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.splitlines()[-1]


def test_secret_key_is_required_without_debug():
    result = run_django("", {"DEBUG": "0"})
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_debug_alone_is_enough_to_start_on_sqlite_with_eager_tasks():
    result = run_django(
        "from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.CELERY_TASK_ALWAYS_EAGER, "
        "s.CACHES['default']['BACKEND'])",
        {"DEBUG": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "True",
        "django.core.cache.backends.locmem.LocMemCache",
    ]


def test_service_urls_configure_postgres_redis_broker_and_cache():
    result = run_django(
        "from django.conf import settings as s; d = s.DATABASES['default']; "
        "print(d['ENGINE'], d['NAME'], d['CONN_MAX_AGE'], s.CELERY_BROKER_URL, "
        "s.CELERY_TASK_ALWAYS_EAGER, s.CACHES['default']['BACKEND'])",
        {
            **PRODUCTION_ENV,
            "DATABASE_URL": "postgres://u:p@db.example:5432/abtest",
            "REDIS_URL": "redis://cache.example:6379/2",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "abtest",
        "600",
        "redis://cache.example:6379/2",
        "False",
        "django.core.cache.backends.redis.RedisCache",
    ]


def test_production_settings_pass_check_deploy():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k not in SCRUBBED},
            **PRODUCTION_ENV,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_anymail_settings_are_collected_from_prefixed_variables():
    assert env.env_prefixed("ANYMAIL_", environ={"ANYMAIL_SENDGRID_API_KEY": "k", "X": "y"}) == {
        "SENDGRID_API_KEY": "k"
    }
    assert env.is_known("ANYMAIL_MAILGUN_API_KEY")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("off", False)],
)
def test_env_bool_accepts_common_spellings(value, expected):
    assert env.env_bool("FLAG", False, environ={"FLAG": value}) is expected


def test_env_int_names_the_variable_and_checks_the_minimum():
    with pytest.raises(ImproperlyConfigured, match="EMAIL_PORT"):
        env.env_int("EMAIL_PORT", 25, environ={"EMAIL_PORT": "x"})
    with pytest.raises(ImproperlyConfigured, match="WORKERS=0 must be at least 1"):
        env.env_int("WORKERS", 1, minimum=1, environ={"WORKERS": "0"})
    assert env.env_int("EMAIL_PORT", 25, environ={}) == 25


def test_env_list_splits_on_commas_and_drops_blanks():
    assert env.env_list("HOSTS", [], environ={"HOSTS": "a.com, b.com,,"}) == ["a.com", "b.com"]
