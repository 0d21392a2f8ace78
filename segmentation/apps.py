from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _sqlite_functions(sender, connection, **kwargs) -> None:
    """Unicode-aware ``abtest_lower`` for rules on SQLite (see ``rules._CaseFold``)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("abtest_lower", 1, _lower, deterministic=True)


class SegmentationConfig(AppConfig):
    name = "segmentation"
    verbose_name = "Segmentation"

    def ready(self) -> None:
        connection_created.connect(_sqlite_functions, dispatch_uid="segmentation-sqlite-lower")
