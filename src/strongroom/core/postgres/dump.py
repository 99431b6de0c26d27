"""The dump side: a snapshot that pg_dump and the row counts share, and the pg_dump process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from strongroom.core.postgres.binaries import StderrDrain, find_binary
from strongroom.core.postgres.children import spawn, terminate
from strongroom.core.postgres.conninfo import ConnInfo
from strongroom.errors import DumpFailed


@contextmanager
def exported_snapshot(target: ConnInfo) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """Hold a REPEATABLE READ transaction whose snapshot pg_dump imports (``--snapshot``).

    Row counts taken in the same transaction then describe exactly the data in the dump.
    """
    conn = target.connect(autocommit=False)
    try:
        conn.execute("SET row_security = off")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        yield str(row[0]), conn
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


@dataclass
class DumpProcess:
    """A running ``pg_dump -Fc -Z0`` whose stdout is the archive stream."""

    proc: subprocess.Popen[bytes]
    drain: StderrDrain
    timeout: float
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False
    _timer: threading.Timer | None = None

    def __post_init__(self) -> None:
        self._timer = threading.Timer(self.timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def read(self, size: int = -1, /) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(size) if size >= 0 else self.proc.stdout.read()

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def finish(self) -> str:
        """Wait for exit; return pg_dump's stderr log, or raise ``DumpFailed`` naming why."""
        code = self.proc.wait()
        if self._timer:
            self._timer.cancel()
        self.drain.join(timeout=10)
        if self.timed_out:
            raise DumpFailed(
                f"pg_dump did not finish within {self.timeout:g} s and was stopped: "
                "raise BACKUP_PG_DUMP_TIMEOUT for a database this size"
            )
        if code != 0:
            raise DumpFailed(f"pg_dump failed (exit {code}): {self.drain.last_error()}")
        return self.drain.text()

    def kill(self) -> None:
        """Stop pg_dump now (the run failed elsewhere or was interrupted); never raises."""
        if self._timer:
            self._timer.cancel()
        self.close()  # a pg_dump blocked on a full pipe sees EPIPE at once
        terminate(self.proc, grace=2.0)


def start_dump(
    target: ConnInfo,
    *,
    snapshot: str | None,
    timeout: float,
    bindir: str | None = None,
    extra_args: Sequence[str] = (),
) -> DumpProcess:
    """Start pg_dump with the seed's flags, minus its compression (we compress once, later)."""
    argv = [find_binary("pg_dump", bindir), "-Fc", "-Z0", "--no-owner", "--no-acl", "-v"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    argv.extend(extra_args)
    proc = spawn(argv, env=target.env(), stdout=subprocess.PIPE, bufsize=0)
    drain = StderrDrain(proc.stderr)
    drain.start()
    return DumpProcess(proc, drain, timeout)
