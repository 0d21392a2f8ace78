"""JSON errors for the API: DRF's field-level format, extended to domain and Django errors."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from abtest.errors import ServiceError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map errors to JSON.

    - DRF validation errors keep DRF's shape: ``{"field": ["message", ...]}``.
    - ``ServiceError`` (raised by services) becomes a 400 in the same shape.
    - Django's ``ValidationError`` (from model validation) becomes a 400 too.
    Anything else falls through to DRF (403, 404, 405, 429 ...) or, if unknown, a 500.
    """
    if isinstance(exc, ServiceError):
        return Response(exc.as_dict(), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            body = {
                ("non_field_errors" if key == "__all__" else key): value
                for key, value in exc.message_dict.items()
            }
        else:
            body = {"non_field_errors": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)
