"""What the server's own archiver says: ``pg_stat_archiver``, read in one bounded query.

PostgreSQL counts a segment as archived only when ``archive_command`` exited 0, so its last
archived time is the freshest proof that WAL is leaving the server, whoever archives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.errors import PostgresError

_QUERY = """
SELECT archived_count, last_archived_wal, last_archived_time,
       failed_count, last_failed_wal, last_failed_time
  FROM pg_stat_archiver
"""


@dataclass(frozen=True)
class ArchiverStatus:
    """One row of ``pg_stat_archiver``; times are ``None`` when nothing was archived yet."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None


def archiver_status(target: ConnInfo, *, timeout: float) -> ArchiverStatus:
    """The archiver's counters, connecting and querying within ``timeout`` seconds.

    The bound matters: metrics run every minute and must not hang on a server that is down.
    """
    seconds = max(1, round(timeout))
    try:
        with target.connect(autocommit=True, connect_timeout=seconds) as conn:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{seconds}s",))
            row = conn.execute(_QUERY).fetchone()
    except psycopg.Error as exc:
        raise PostgresError(f"cannot read pg_stat_archiver of {target}: {redact(exc)}") from None
    if row is None:
        raise PostgresError(f"pg_stat_archiver of {target} returned no row")
    return ArchiverStatus(*row)
