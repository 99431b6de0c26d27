"""Celery tasks. Thin: resolve configuration, call a service, return ids.

``daily_full_database_backup()`` can also be called directly (as in the seed's manual test), in
which case it runs in-process and ``backup_job_id`` stays empty.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from strongroom.conf import current_config


@shared_task(bind=True, name="strongroom.tasks.daily_full_database_backup")
def daily_full_database_backup(self: Any, created_by_id: int | None = None) -> str:
    """Back up the whole database to every location; return the backup id."""
    from strongroom.services.backup import run_full_backup

    config = current_config()
    job_id = getattr(self.request, "id", None) or ""
    report = run_full_backup(config, job_id=job_id, created_by_id=created_by_id)
    return report.id


@shared_task(name="strongroom.tasks.verify_backup")
def verify_backup(backup_id: str | None = None) -> str:
    """Re-read every copy of a backup (the newest when none is given); return its status."""
    from strongroom.services.verify import verify_backup as run_verify

    return run_verify(current_config(), backup_id).status
