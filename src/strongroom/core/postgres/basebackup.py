"""The physical side: ``pg_basebackup -Ft -D - -X none`` as a stream, and what it tells us.

Why pg_basebackup and not ``pg_backup_start``/``pg_backup_stop`` with our own tar of PGDATA:
it works over the replication protocol from wherever strongroom runs (the Celery worker need
not share a machine, or an OS user, with the server); the server itself decides which files
belong in the backup and which do not (``pg_wal`` contents, temp files, ``postmaster.pid``),
inserts ``backup_label`` and its own ``backup_manifest`` into the tar; and with ``-X none`` it
waits, as the replication command's default WAIT does, until every WAL segment from the start
to the stop of the backup has been archived, so a backup that finished is one whose WAL our
``archive_command`` confirmed durable. The price: a role with REPLICATION and a ``pg_hba.conf``
``replication`` line, and one tablespace (``-Ft -D -`` cannot stream several).

Start and stop LSN and the timeline are read from the ``backup_manifest`` inside the stream
(its ``WAL-Ranges``), the label from ``backup_label``; both are captured in passing.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Any, ClassVar

from psycopg import sql

from strongroom.core import wal
from strongroom.core.postgres.binaries import StderrDrain, find_binary
from strongroom.core.postgres.children import StreamingChild, spawn
from strongroom.core.postgres.conninfo import ConnInfo
from strongroom.core.tarstream import Capture, TarStream
from strongroom.errors import IntegrityError

LABEL, BACKUP_MANIFEST = "backup_label", "backup_manifest"


@dataclass(frozen=True)
class ClusterFacts:
    """What the base backup's manifest says about the cluster, read before it starts."""

    system_identifier: str
    server_version: str
    server_version_num: int
    wal_segment_size: int
    archive_mode: str


def cluster_facts(target: ConnInfo) -> ClusterFacts:
    """System identifier, version, WAL segment size and archive mode, in one connection."""
    with target.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text,"
            " current_setting('server_version'), current_setting('server_version_num')::int,"
            " (SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024"
            "  WHEN 'MB' THEN 1048576 ELSE 1 END FROM pg_settings"
            "  WHERE name = 'wal_segment_size'),"
            " current_setting('archive_mode')"
        ).fetchone()
    assert row is not None
    return ClusterFacts(str(row[0]), str(row[1]), int(row[2]), int(row[3]), str(row[4]))


@dataclass(frozen=True)
class BackupFacts:
    """Where a finished base backup starts and stops in the WAL, from its own files."""

    start_lsn: str
    stop_lsn: str
    timeline: int
    label: str
    start_time: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_backup_facts(label: bytes, manifest: bytes) -> BackupFacts:
    """Parse ``backup_label`` and the ``WAL-Ranges`` of ``backup_manifest``."""
    fields = {}
    for line in label.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    try:
        ranges = json.loads(manifest.decode("utf-8"))["WAL-Ranges"]
        last = ranges[-1]
        first = ranges[0]
        return BackupFacts(
            start_lsn=str(first["Start-LSN"]),
            stop_lsn=str(last["End-LSN"]),
            timeline=int(last["Timeline"]),
            label=fields.get("LABEL", ""),
            start_time=fields.get("START TIME", ""),
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise IntegrityError(f"the base backup's backup_manifest is unreadable: {exc}") from None


def segments_between(facts: BackupFacts, segment_size: int) -> list[str]:
    """Every WAL file from the one holding the start LSN to the one the stop LSN ends."""
    first = wal.parse_lsn(facts.start_lsn) // segment_size
    last = max(first, (wal.parse_lsn(facts.stop_lsn) - 1) // segment_size)
    return [wal.segment_name(facts.timeline, n, segment_size) for n in range(first, last + 1)]


@dataclass
class BaseBackupProcess(StreamingChild):
    """A running ``pg_basebackup -Ft -D - -X none``: a ``storing.Source`` of the tar."""

    program: ClassVar[str] = "pg_basebackup"

    capture: Capture = field(default_factory=lambda: Capture((LABEL, BACKUP_MANIFEST)))
    _tar: TarStream | None = None

    def __post_init__(self) -> None:
        self._tar = TarStream(self.capture)
        super().__post_init__()

    def read(self, size: int = -1, /) -> bytes:
        assert self._tar is not None
        data = super().read(size)
        self._tar.feed(data)
        return data

    def finish(self) -> BackupFacts:
        """Wait for exit (PostgreSQL has then seen the backup's WAL archived); its facts."""
        self.wait_ok(
            "is archive_command failing (pg_stat_archiver)? Else raise BACKUP_BASE_BACKUP_TIMEOUT"
        )
        assert self._tar is not None
        self._tar.close()
        found = self.capture.found
        if LABEL not in found or BACKUP_MANIFEST not in found:
            raise IntegrityError("pg_basebackup's stream has no backup_label or backup_manifest")
        return read_backup_facts(found[LABEL], found[BACKUP_MANIFEST])

    @property
    def log(self) -> str:
        return self.drain.text()


def start_base_backup(
    target: ConnInfo, *, label: str, timeout: float, bindir: str | None = None
) -> BaseBackupProcess:
    """Start pg_basebackup: tar to stdout, no WAL in it, fast checkpoint, waits for archiving."""
    argv = [
        find_binary("pg_basebackup", bindir),
        "--format=tar",
        "--pgdata=-",
        "--wal-method=none",
        "--checkpoint=fast",
        f"--label={label}",
        "--no-password",
        "--verbose",
    ]
    proc = spawn(argv, env=target.env(), stdout=subprocess.PIPE, bufsize=0)
    drain = StderrDrain(proc.stderr)
    drain.start()
    return BaseBackupProcess(proc, drain, timeout)


def create_restore_point(target: ConnInfo, name: str, *, switch: bool) -> tuple[str, str]:
    """``pg_create_restore_point(name)``, then (``switch``) ``pg_switch_wal()``: LSN and file.

    The switch closes the segment holding the point, so it is archived now rather than after
    ``archive_timeout``: a restore to the name can start at once.
    """
    with target.connect(autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT pg_create_restore_point({})::text").format(sql.Literal(name))
        ).fetchone()
        assert row is not None
        lsn = str(row[0])
        segment = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,)).fetchone()
        if switch:
            conn.execute("SELECT pg_switch_wal()")
    return lsn, str(segment[0]) if segment else ""
