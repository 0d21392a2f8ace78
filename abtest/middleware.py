"""Request guards that apply to every view."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

NUL_MESSAGE = "Null characters are not allowed in the address or its query parameters."


class RejectNullCharactersMiddleware:
    """HTTP 400 for a NUL character (``%00``) in the path or the query string.

    PostgreSQL text cannot hold NUL, so such a value would fail in the database as a server
    error wherever a view passes it on (a search, a filter, a lookup by id); forms already
    refuse it in POSTed fields (Django's ``ProhibitNullCharactersValidator``).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in request.GET.lists()
        ):
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": NUL_MESSAGE}, status=400)
            return HttpResponseBadRequest(NUL_MESSAGE)
        return self.get_response(request)
