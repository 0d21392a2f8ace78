"""Typed readers for environment variables.

Every setting the project reads from the environment goes through one of these helpers, so
that a bad value stops start-up with an ``ImproperlyConfigured`` error naming the variable,
and so that the full list of variables is known (``READ``), documented and tested against
``docs/configuration.md`` and ``docker-compose.yml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

#: Names of every variable the settings asked for (filled as settings import).
READ: set[str] = set()

#: Prefixes of variable families collected wholesale (e.g. ``ANYMAIL_SENDGRID_API_KEY``).
PREFIXES: set[str] = set()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    READ.add(name)
    value = (os.environ if environ is None else environ).get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off."
    )


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be at least {minimum}.")
    return number


def env_list(
    name: str, default: list[str], *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """A comma-separated list; blanks are dropped."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(
    name: str,
    default: str = "",
    *,
    schemes: tuple[str, ...],
    environ: Mapping[str, str] | None = None,
) -> str:
    """A URL whose scheme is one of ``schemes`` and which names a host."""
    value = env_str(name, default, environ=environ)
    if not value:
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a valid URL: {exc}.") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a valid URL; expected {' or '.join(schemes)}://host..."
        )
    return value.rstrip("/")


def env_database(
    name: str, *, default: dict[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A Django ``DATABASES`` entry from a database URL (Postgres only), or ``default``."""
    value = env_str(name, environ=environ)
    if not value:
        return default
    scheme = urlsplit(value).scheme
    if scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a PostgreSQL URL (postgres://user:password@host:port/name)."
        )
    try:
        config = dj_database_url.parse(value, conn_max_age=600, conn_health_checks=True)
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"{name} is not a valid database URL: {exc}.") from None
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"{name}={value!r} does not name a database.")
    return config


def env_prefixed(prefix: str, *, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every variable starting with ``prefix``, keyed by the rest of its name."""
    PREFIXES.add(prefix)
    source = os.environ if environ is None else environ
    return {
        key[len(prefix) :]: value
        for key, value in source.items()
        if key.startswith(prefix) and len(key) > len(prefix)
    }


def is_known(name: str) -> bool:
    """Whether the settings read ``name`` (directly or as part of a prefixed family)."""
    return name in READ or any(name.startswith(prefix) for prefix in PREFIXES)
