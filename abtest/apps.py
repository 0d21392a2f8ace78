from django.apps import AppConfig


class AbtestConfig(AppConfig):
    """The project package doubles as the app holding the shared web shell, roles and health."""

    name = "abtest"
    verbose_name = "Platform"
