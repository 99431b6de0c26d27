"""Configuration inside a Django project: settings first, then the environment, then the file.

Outside Django (standalone CLI, ``celery -A strongroom``) use ``config.config_from_env``.
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any

from strongroom.config import Config, environment, load_config, setting_names


def __getattr__(name: str) -> Any:
    """``SETTING_NAMES``: computed from :func:`strongroom.config.setting_names` on each access,
    so a backend registered after import is read from Django settings too."""
    if name == "SETTING_NAMES":
        return setting_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_database_url() -> str:
    """The project's own database, as the seed backs up: DATABASES['default'] as a URL."""
    from django.conf import settings
    from psycopg.conninfo import make_conninfo

    db = settings.DATABASES.get("default", {})
    if "postgresql" not in str(db.get("ENGINE", "")):
        return ""
    params = {
        "dbname": db.get("NAME") or None,
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": str(db.get("PORT")) if db.get("PORT") else None,
    }
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def config_from_django(config_file: str | None = None) -> Config:
    """Settings override the environment, which overrides the config file (``config_file``, else
    ``$STRONGROOM_CONFIG``); the database defaults to the project's own."""
    from django.conf import settings

    layered: dict[str, Any] = {
        name: getattr(settings, name) for name in setting_names() if hasattr(settings, name)
    }
    source: ChainMap[str, Any] = ChainMap(layered, environment(config_file))
    url = source.get("STRONGROOM_DATABASE_URL") or source.get("DATABASE_URL")
    if not url:
        layered["DATABASE_URL"] = _default_database_url()
    elif source.get("STRONGROOM_DATABASE_URL"):
        layered["DATABASE_URL"] = source["STRONGROOM_DATABASE_URL"]
    return load_config(source)


def current_config() -> Config:
    """Django settings when running inside a configured project, else the environment.

    Outside a project this also prepares the standalone catalog (SQLite by default).
    """
    from django.conf import settings

    if settings.configured:
        return config_from_django()
    from strongroom.catalog.bootstrap import ensure_django
    from strongroom.config import config_from_env

    config = config_from_env()
    ensure_django(config.catalog_url)
    return config
