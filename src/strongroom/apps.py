"""The reusable Django app: ``INSTALLED_APPS = [..., "strongroom"]``."""

from __future__ import annotations

from django.apps import AppConfig


class StrongroomConfig(AppConfig):
    name = "strongroom"
    label = "strongroom"
    verbose_name = "Strongroom backups"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from strongroom import checks  # noqa: F401  (registers the system checks)
