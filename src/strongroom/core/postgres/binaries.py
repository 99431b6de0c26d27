"""PostgreSQL client programs: finding them, their version, and reading their stderr safely.

Subprocesses follow Barman's ``Command`` discipline: argv lists only, credentials through the
environment (``PGPASSWORD``) never argv, stderr drained concurrently so the child never blocks,
exit codes always checked, and a watchdog that enforces the configured timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Any

from strongroom.core.postgres.conninfo import process_env
from strongroom.errors import ConfigError


def find_binary(name: str, bindir: str | None = None) -> str:
    """Locate a PostgreSQL client binary, preferring the newest installed major version.

    pg_dump must be at least as new as the server, so the highest versioned directory wins over
    whatever ``PATH`` offers.
    """
    candidates: list[Path] = []
    if bindir:
        candidates.append(Path(bindir) / name)
    versioned = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versioned)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise ConfigError(
        f"{name} not found: install the PostgreSQL client (apt-get install postgresql-client) "
        "or set BACKUP_PG_BINDIR"
    )


def binary_version(path: str) -> str:
    out = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=False, env=process_env()
    )
    return out.stdout.strip()


class StderrDrain(threading.Thread):
    """Reads a child's stderr to the end so it can never fill the pipe and stall the child."""

    def __init__(self, stream: Any, keep_lines: int = 2000) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=keep_lines)

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip())
        self.stream.close()

    def text(self) -> str:
        return "\n".join(self.lines)

    def last_error(self) -> str:
        for line in reversed(self.lines):
            if "error" in line.lower() or "fatal" in line.lower():
                return line
        return self.lines[-1] if self.lines else "no output"
