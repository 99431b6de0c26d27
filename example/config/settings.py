"""Settings of the example shop: everything that differs per deployment comes from the environment.

``DATABASE_URL`` (``postgresql://shop_app@host:5432/shop``, password in it or in ``PGPASSWORD``)
selects PostgreSQL; without it a SQLite file is used, enough for ``manage.py check``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent


def database_from_url(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry from ``postgresql://...``, a libpq conninfo or ``sqlite:///path``."""
    if url.startswith("sqlite:///"):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": url.removeprefix("sqlite:///")}
    params: dict[str, Any] = dict(conninfo_to_dict(url))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,  # sslmode, application_name, ...
        "CONN_MAX_AGE": 0,
    }


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "strongroom",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# -- Celery ------------------------------------------------------------------------------------

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TIMEZONE = TIME_ZONE  # the zone the seed's "02:00" is read in
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # priority, not arrival, decides what runs next
CELERY_BEAT_SCHEDULE: dict[str, Any] = {}  # strongroom's entry is merged at the end

# -- Backups (strongroom) ----------------------------------------------------------------------
# Read from the environment only: the encryption key and the R2/B2 credentials never belong in
# code. Names are strongroom's (BACKUP_ENCRYPTION_KEY, BACKUP_LOCAL_PATH, R2_*, B2_*,
# STRONGROOM_LOCATIONS, STRONGROOM_DATABASE_URL for a dedicated BYPASSRLS backup role, ...);
# anything unset keeps strongroom's default.
for _name, _value in os.environ.items():
    if _name.startswith(("BACKUP_", "STRONGROOM_", "R2_", "B2_")):
        globals()[_name] = _value

# The seed's beat entry: daily_full_database_backup at 02:00 on `backups`, priority 10, with
# BACKUP_SCHEDULE_HOUR/_MINUTE, BACKUP_QUEUE and BACKUP_TASK_PRIORITY (above) taken into account.
from strongroom.schedule import beat_schedule  # noqa: E402

CELERY_BEAT_SCHEDULE = {**beat_schedule(globals()), **CELERY_BEAT_SCHEDULE}
