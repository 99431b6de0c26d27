"""Configuration inside a Django project: settings first, then the environment.

Outside Django (standalone CLI, ``celery -A strongroom``) use ``config.config_from_env``.
"""

from __future__ import annotations

import os
from collections import ChainMap
from typing import Any

from strongroom.config import Config, load_config

#: Names read from Django settings when present (the environment fills the rest).
SETTING_NAMES = (
    "DATABASE_URL",
    "STRONGROOM_DATABASE_URL",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_ENCRYPTION_OLD_KEYS",
    "BACKUP_LOCAL_PATH",
    "BACKUP_LOCAL_RETENTION_DAYS",
    "BACKUP_COMPRESSION",
    "BACKUP_COMPRESSION_LEVEL",
    "BACKUP_COMPRESSION_THREADS",
    "BACKUP_PG_DUMP_TIMEOUT",
    "BACKUP_PG_BINDIR",
    "BACKUP_RESTORE_JOBS",
    "BACKUP_RESTORE_SCRATCH_DIR",
    "BACKUP_MAX_AGE_HOURS",
    "BACKUP_NOTIFY_WEBHOOK_URL",
    # Celery: schedule, queue, priority, retries, time limits (strongroom.schedule)
    "BACKUP_SCHEDULE_HOUR",
    "BACKUP_SCHEDULE_MINUTE",
    "BACKUP_QUEUE",
    "BACKUP_TASK_PRIORITY",
    "BACKUP_QUEUE_MAX_PRIORITY",
    "BACKUP_TASK_MAX_RETRIES",
    "BACKUP_TASK_RETRY_BACKOFF",
    "BACKUP_TASK_RETRY_BACKOFF_MAX",
    "BACKUP_TASK_SOFT_TIME_LIMIT",
    "BACKUP_TASK_TIME_LIMIT",
    "BACKUP_VERIFY_AFTER_BACKUP",
    "BACKUP_PRUNE_HOUR",
    "BACKUP_HEAL_HOUR",
    "CELERY_BROKER_URL",
    "STRONGROOM_LOCATIONS",
    "STRONGROOM_REQUIRED_LOCATIONS",
    *(
        f"{p}_{n}"
        for p in ("R2", "B2")
        for n in (
            "ACCOUNT_ID",
            "BUCKET_NAME",
            "REGION",
            "ACCESS_KEY_ID",
            "SECRET_ACCESS_KEY",
            "ENDPOINT_URL",
            "PREFIX",
            "RETENTION_DAYS",
            "MAX_ATTEMPTS",
            "CONNECT_TIMEOUT",
            "READ_TIMEOUT",
            "PART_SIZE",
        )
    ),
)


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


def config_from_django() -> Config:
    """Settings override the environment; the database defaults to the project's own."""
    from django.conf import settings

    layered: dict[str, Any] = {
        name: getattr(settings, name) for name in SETTING_NAMES if hasattr(settings, name)
    }
    source: ChainMap[str, Any] = ChainMap(layered, dict(os.environ))
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
