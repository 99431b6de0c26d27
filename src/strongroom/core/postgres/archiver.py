"""The server's own view of WAL archiving: ``pg_stat_archiver`` and its settings.

``pg_stat_archiver`` is readable by every role; ``data_directory`` only by superusers and
members of ``pg_read_all_settings``, so it may be unknown (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.errors import PostgresError


@dataclass(frozen=True)
class ArchiverStatus:
    archive_mode: str
    last_archived_wal: str | None
    last_archived_time: datetime | None
    archived_count: int
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    #: The segment being written now (``None`` on a standby, where it cannot be asked).
    current_wal: str | None
    wal_segment_size: int
    data_directory: str | None


_STATUS = """
SELECT current_setting('archive_mode'),
       a.last_archived_wal, a.last_archived_time, a.archived_count,
       a.failed_count, a.last_failed_wal, a.last_failed_time,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       (SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024
                                          WHEN 'MB' THEN 1048576 ELSE 1 END
          FROM pg_settings WHERE name = 'wal_segment_size'),
       (SELECT setting FROM pg_settings WHERE name = 'data_directory')
  FROM pg_stat_archiver a
"""


def archiver_status(target: ConnInfo) -> ArchiverStatus:
    """One query: archive mode, the archiver's counters, the current segment, where the data is."""
    try:
        with target.connect(autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(_STATUS).fetchone()
    except psycopg.Error as exc:
        raise PostgresError(f"cannot read pg_stat_archiver on {target}: {redact(exc)}") from None
    assert row is not None
    return ArchiverStatus(
        archive_mode=str(row[0]),
        last_archived_wal=row[1],
        last_archived_time=row[2],
        archived_count=int(row[3]),
        failed_count=int(row[4]),
        last_failed_wal=row[5],
        last_failed_time=row[6],
        current_wal=row[7],
        wal_segment_size=int(row[8] or 0),
        data_directory=row[9],
    )
