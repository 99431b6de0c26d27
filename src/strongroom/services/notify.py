"""Being told: a FAILED or PARTIAL backup notifies the operators (filled in by the Celery work)."""

from __future__ import annotations

from strongroom.config import Config


def notify_problem(config: Config, backup_id: str, status: str, reason: str) -> None:
    """Tell the operators that backup ``backup_id`` ended ``status`` because of ``reason``."""
