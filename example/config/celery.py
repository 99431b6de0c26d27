"""The project's Celery app: ``celery -A config worker -Q backups`` and ``celery -A config beat``.

Configured from Django settings (``CELERY_*``), as the seed's ``config/celery.py`` is.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")

# strongroom beat schedule merged here
# (the integrator wires strongroom.schedule.configure_app(app, settings) and merges
#  strongroom.schedule.beat_schedule() into CELERY_BEAT_SCHEDULE; see docs/celery.md)

app.autodiscover_tasks()
