"""Project package: settings, URLs, the Celery app and the shared web shell."""

from abtest.celery import app as celery_app

__all__ = ("celery_app",)
