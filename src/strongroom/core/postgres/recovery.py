"""Turning an extracted base backup into a server that replays the archive to a target.

PostgreSQL 12+ reads the recovery settings from the ordinary configuration and enters targeted
recovery when ``recovery.signal`` exists. They are appended to ``postgresql.auto.conf`` (read
after ``postgresql.conf``, so they win, and what ``ALTER SYSTEM`` writes); the last occurrence
of a setting wins, so appending is enough. Nothing secret goes there: ``restore_command`` names
the config file, never a key or a password.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AUTO_CONF = "postgresql.auto.conf"
SIGNAL = "recovery.signal"


@dataclass(frozen=True)
class RecoveryTarget:
    """Where replay stops: a time, an LSN, a restore point's name, or the end of the archive."""

    kind: str  # "time", "lsn", "name" or "latest"
    value: str = ""

    def settings(self) -> dict[str, str]:
        """The ``recovery_target_*`` line; none for ``latest`` (replay everything)."""
        if self.kind == "latest":
            return {}
        return {f"recovery_target_{self.kind}": self.value}

    def describe(self) -> str:
        return "the end of the archive" if self.kind == "latest" else f"{self.kind} {self.value}"


def target_time(value: datetime) -> RecoveryTarget:
    """A timezone-aware time, written as PostgreSQL parses it (ISO 8601 with its offset)."""
    if value.tzinfo is None:
        raise ValueError("a recovery target time needs a timezone")
    return RecoveryTarget("time", value.isoformat(sep=" "))


def restore_command(argv: list[str]) -> str:
    """``argv`` then ``wal-fetch %f %p``, shell-quoted (PostgreSQL runs it with ``sh -c``)."""
    return " ".join([*(shlex.quote(a) for a in argv), "wal-fetch", "%f", "%p"])


def recovery_settings(command: str, target: RecoveryTarget) -> dict[str, str]:
    """Everything a targeted recovery needs besides ``recovery.signal``."""
    return {
        "restore_command": command,
        **target.settings(),
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
    }


def write_recovery(pgdata: Path, settings: Mapping[str, str]) -> None:
    """Append the settings to ``postgresql.auto.conf`` and create ``recovery.signal``.

    Both fsynced: a crash after pitr-restore said "done" must not leave a directory that
    starts as a primary without replaying.
    """
    lines = "".join(f"{k} = {_quote(v)}\n" for k, v in settings.items())
    conf = pgdata / AUTO_CONF
    with conf.open("a", encoding="utf-8") as out:
        out.write("# strongroom pitr-restore\n" + lines)
        out.flush()
        os.fsync(out.fileno())
    fd = os.open(pgdata / SIGNAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(pgdata, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def start_command(bindir: str, pgdata: Path) -> list[str]:
    """The one command that starts the recovered server (it replays, then promotes)."""
    return [str(Path(bindir) / "pg_ctl"), "-D", str(pgdata), "start"]
