"""The standalone Celery app for `celery -A strongroom worker -Q backups` and `... beat`.

No Django project needed: configured from the same environment as the ``strongroom`` CLI
(``DATABASE_URL``, ``BACKUP_ENCRYPTION_KEY``, ``STRONGROOM_CATALOG_URL``, ...) plus
``CELERY_BROKER_URL`` (Redis or RabbitMQ) and optionally ``CELERY_RESULT_BACKEND`` and
``CELERY_TIMEZONE`` (the zone 02:00 is read in; default UTC).

Inside a Django project do not import this module (it would make a second app current); wire
the project's own app with :func:`strongroom.schedule.configure_app` and merge
:func:`strongroom.schedule.beat_schedule` into ``CELERY_BEAT_SCHEDULE`` instead.
"""

from __future__ import annotations

import os

from celery import Celery

from strongroom.schedule import beat_schedule, celery_settings, configure_app, task_settings


def make_app() -> Celery:
    """A fresh app from the environment (tests build several with different settings)."""
    ts = task_settings()
    app = Celery("strongroom", include=["strongroom.tasks"])
    app.conf.update(celery_settings(ts))
    configure_app(app)
    backend = os.environ.get("CELERY_RESULT_BACKEND", "").strip()
    if backend:
        app.conf.update(result_backend=backend, result_extended=True)
    app.conf.beat_schedule = beat_schedule()
    return app


app = make_app()
