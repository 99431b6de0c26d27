"""The dump side: a snapshot that pg_dump and the row counts share, and the pg_dump process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg

from strongroom.core.postgres.binaries import StderrDrain, find_binary
from strongroom.core.postgres.children import StreamingChild, spawn
from strongroom.core.postgres.conninfo import ConnInfo


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
class DumpProcess(StreamingChild):
    """A running ``pg_dump -Fc -Z0`` whose stdout is the archive stream."""

    program: ClassVar[str] = "pg_dump"

    started: float = field(default_factory=time.monotonic)

    def finish(self) -> str:
        """Wait for exit; return pg_dump's stderr log, or raise ``DumpFailed`` naming why."""
        self.wait_ok("raise BACKUP_PG_DUMP_TIMEOUT for a database this size")
        return self.drain.text()


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
