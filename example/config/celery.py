"""The project's Celery app: ``celery -A config worker -Q backups`` and ``celery -A config beat``.

Configured from Django settings (``CELERY_*``), as the seed's ``config/celery.py`` is.
"""

from __future__ import annotations

import os

from celery import Celery
from django.conf import settings

from strongroom.schedule import configure_app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
# strongroom's `backups` queue (x-max-priority on RabbitMQ), routes, time limits from the
# pg_dump timeout and Redis transport options, merged over the project's own. The beat entry
# itself is merged into CELERY_BEAT_SCHEDULE in settings.py.
configure_app(app, settings)

app.autodiscover_tasks()
