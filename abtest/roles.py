"""Roles: marketers manage segments, campaigns and experiments; integrators push data.

Staff and superusers hold every role. A logged-in user with no role is an outsider: they see
the shell but every page and endpoint of a feature answers 403.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, Literal

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from rest_framework.permissions import BasePermission

Role = Literal["marketer", "integrator"]

GROUP_FOR_ROLE: dict[str, str] = {"marketer": "Marketers", "integrator": "Integrators"}


def user_roles(user: Any) -> frozenset[str]:
    """The roles of ``user``, computed once per user object."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return frozenset()
    cached = getattr(user, "_abtest_roles", None)
    if cached is not None:
        return cached
    if user.is_staff or user.is_superuser:
        roles = frozenset(GROUP_FOR_ROLE)
    else:
        groups = set(user.groups.values_list("name", flat=True))
        roles = frozenset(role for role, group in GROUP_FOR_ROLE.items() if group in groups)
    user._abtest_roles = roles
    return roles


def has_role(user: Any, *roles: Role) -> bool:
    """Whether ``user`` holds at least one of ``roles``."""
    return bool(user_roles(user) & set(roles))


def role_required(*roles: Role) -> Callable:
    """View decorator: 403 unless the logged-in user holds one of ``roles``.

    Login itself is enforced by ``LoginRequiredMiddleware``; this checks the role on the
    server for every request, including HTMX fragment requests.
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not has_role(request.user, *roles):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class _RolePermission(BasePermission):
    roles: tuple[Role, ...] = ()
    message = "You do not have the role this endpoint requires."

    def has_permission(self, request: Any, view: Any) -> bool:
        return has_role(request.user, *self.roles)


class IsMarketer(_RolePermission):
    roles = ("marketer",)


class IsIntegrator(_RolePermission):
    roles = ("integrator",)


class IsMarketerOrIntegrator(_RolePermission):
    roles = ("marketer", "integrator")
