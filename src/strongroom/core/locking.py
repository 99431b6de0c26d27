"""One backup per database at a time, across every worker and machine.

The lock is a PostgreSQL session-level advisory lock taken in the database being backed up, on
its own connection: every worker that can back the database up can reach it, and the server
releases it the moment the holder's connection drops, so a SIGKILLed or OOM-killed worker never
leaves it held. Holding the lock also proves that no other run of that database is alive, which
is how dead runs left IN_PROGRESS are recognised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from strongroom.core.postgres import ConnInfo
from strongroom.errors import LockBusy


def lock_key(database: str, purpose: str = "backup") -> int:
    """A stable signed 64-bit advisory lock key for (purpose, database)."""
    digest = hashlib.sha256(f"strongroom:{purpose}:{database}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def database_lock(target: ConnInfo, purpose: str = "backup") -> Iterator[psycopg.Connection[Any]]:
    """Hold the lock for the block; raise ``LockBusy`` at once if another run holds it."""
    conn = target.connect(autocommit=True)
    try:
        key = lock_key(target.dbname, purpose)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            raise LockBusy(
                f"another {purpose} of database {target.dbname!r} is running "
                "(held by a live session); this run was skipped"
            )
        try:
            yield conn
        finally:
            with suppress(psycopg.Error):  # closing the connection releases it anyway
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


def is_locked(target: ConnInfo, purpose: str = "backup") -> bool:
    """Whether a live run holds the lock right now (takes and drops it when free)."""
    try:
        with database_lock(target, purpose):
            return False
    except LockBusy:
        return True
