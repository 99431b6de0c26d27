"""How the server archives: its archive mode, the segment it writes now, where its data is.

Beside ``pg_stat_archiver`` (:mod:`strongroom.core.postgres.archiver`) these tell ``check``
whether archiving is on at all and whether a completed segment waits. ``data_directory`` is
readable only by superusers and members of ``pg_read_all_settings``, so it may be ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.errors import PostgresError

_QUERY = """
SELECT current_setting('archive_mode'),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       (SELECT setting FROM pg_settings WHERE name = 'data_directory')
"""


@dataclass(frozen=True)
class ServerArchiving:
    archive_mode: str
    #: The segment being written now (``None`` on a standby, where it cannot be asked).
    current_wal: str | None
    wal_segment_size: int
    data_directory: str | None


def server_archiving(target: ConnInfo, *, timeout: float) -> ServerArchiving:
    """One bounded query (``timeout`` seconds to connect and to run)."""
    seconds = max(1, round(timeout))
    try:
        with target.connect(autocommit=True, connect_timeout=seconds) as conn:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{seconds}s",))
            row = conn.execute(_QUERY).fetchone()
    except psycopg.Error as exc:
        raise PostgresError(
            f"cannot read the archiving settings of {target}: {redact(exc)}"
        ) from None
    if row is None:
        raise PostgresError(f"the archiving settings of {target} returned no row")
    return ServerArchiving(str(row[0]), row[1], int(row[2] or 0), row[3])
