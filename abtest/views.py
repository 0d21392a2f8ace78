from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from abtest.selectors import health_check


@require_GET
@never_cache
@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the broker answer, 503 otherwise. No login needed."""
    health = health_check()
    body = {
        "status": "ok" if health.ok else "error",
        "checks": {
            "database": health.database.__dict__,
            "broker": health.broker.__dict__,
        },
        "workers": health.workers,
    }
    return JsonResponse(body, status=200 if health.ok else 503)


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")
