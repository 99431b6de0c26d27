"""What integration tests share to run the ``strongroom`` command as an operator would.

The command runs as a child process with only the settings a test gives it: the developer's
shell may hold ``PG*``, ``BACKUP_*`` or ``DATABASE_URL`` values that would point it elsewhere.
Also here: :class:`SilentServer`, the cloud that accepts connections and never answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

#: The console script of the package installed in the tests' virtualenv.
CLI = Path(sys.executable).with_name("strongroom")
#: Variables of the developer's shell that would change what the command does.
FOREIGN = ("PG", "BACKUP_", "STRONGROOM_", "R2_", "B2_", "CELERY_", "DJANGO_", "DATABASE_URL")

Cli = Callable[..., subprocess.CompletedProcess[str]]


def clean_environ() -> dict[str, str]:
    """This environment without any setting of strongroom's, PostgreSQL's or the clouds'."""
    return {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}


def require_cli() -> None:
    """Fail (never skip) when the console script is not installed."""
    if not CLI.is_file():
        pytest.fail(f"{CLI} is missing: install the package (pip install -e .)", pytrace=False)


def command(*layers: Mapping[str, str], timeout: float = 180) -> Cli:
    """``run(*args, timeout=..., **overrides)``: the command with ``layers`` plus ``overrides``.

    The layers are merged at each run, not now: a test may still change a settings dict it
    passed (a smaller part size, another endpoint) and the next run sees it.

    A run that outlives ``timeout`` raises ``TimeoutExpired`` and so fails the test: a hang is
    a defect, never something to wait out.
    """
    require_cli()

    def run(
        *args: str, timeout: float = timeout, **overrides: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), *args],
            env={k: v for layer in (*layers, overrides) for k, v in layer.items()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def ok_json(done: subprocess.CompletedProcess[str]) -> Any:
    """The ``--json`` output of a run that must have succeeded (its stderr shown if not)."""
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


class SilentServer:
    """A TCP server that accepts every connection and never says a word (a dead cloud)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        for conn in self.held:
            conn.close()
        self.sock.close()
