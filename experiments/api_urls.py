from django.urls import path  # noqa: F401

# Routes under /api/v1/ for the experiments app.
urlpatterns: list = []
