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

Compression happens on the server by default (``--compress=server-zstd``, PostgreSQL 15 and
later): the 1.1 GB tar of a 1 GB cluster crosses the network, and pg_basebackup's pipe to us, as
the 50 MB it compresses to, which on two CPUs is faster than ``pg_basebackup > /dev/null`` itself
(docs/benchmarks.md). pg_basebackup cannot add ``backup_manifest`` to a server-compressed
``-D -`` stream, so that mode runs with ``--no-manifest`` and the stop LSN comes from the backup
history file PostgreSQL archives (``START``/``STOP WAL LOCATION``, ``STOP TIMELINE``); the stream
is decompressed as it passes, to capture ``backup_label`` and prove the tar whole. Client-side
compression (``BACKUP_BASE_BACKUP_COMPRESS_ON=client``, or a codec other than zstd) reads start
and stop LSN and the timeline from the ``backup_manifest`` inside the stream (its
``WAL-Ranges``), the label from ``backup_label``; both are captured in passing.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, cast

import zstandard
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
    fields = _label_fields(label)
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


def read_history_facts(label: bytes, history: bytes) -> BackupFacts:
    """Parse ``backup_label`` and the backup history file (``<segment>.<offset>.backup``)."""
    fields = _label_fields(history)
    try:
        return BackupFacts(
            start_lsn=fields["START WAL LOCATION"].split()[0],
            stop_lsn=fields["STOP WAL LOCATION"].split()[0],
            timeline=int(fields["STOP TIMELINE"]),
            label=_label_fields(label).get("LABEL", fields.get("LABEL", "")),
            start_time=fields.get("START TIME", ""),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise IntegrityError(f"the base backup's history file is unreadable: {exc}") from None


def history_file_name(start_lsn: str, timeline: int, segment_size: int) -> str:
    """The backup history file PostgreSQL archives for a backup that starts at ``start_lsn``."""
    lsn = wal.parse_lsn(start_lsn)
    segment = wal.segment_name(timeline, lsn // segment_size, segment_size)
    return f"{segment}.{lsn % segment_size:08X}.backup"


def label_start(label: bytes) -> tuple[str, int]:
    """Start LSN and timeline from ``backup_label``."""
    fields = _label_fields(label)
    try:
        return fields["START WAL LOCATION"].split()[0], int(fields["START TIMELINE"])
    except (KeyError, IndexError, ValueError) as exc:
        raise IntegrityError(f"the base backup's backup_label is unreadable: {exc}") from None


def _label_fields(text: bytes) -> dict[str, str]:
    fields = {}
    for line in text.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def segments_between(facts: BackupFacts, segment_size: int) -> list[str]:
    """Every WAL file from the one holding the start LSN to the one the stop LSN ends."""
    first = wal.parse_lsn(facts.start_lsn) // segment_size
    last = max(first, (wal.parse_lsn(facts.stop_lsn) - 1) // segment_size)
    return [wal.segment_name(facts.timeline, n, segment_size) for n in range(first, last + 1)]


class _TarFeed:
    """The tar parser fed the server's zstd stream: ``write`` takes decompressed bytes."""

    def __init__(self, tar: TarStream) -> None:
        self.tar = tar
        self.raw = 0

    def write(self, data: bytes) -> int:
        self.tar.feed(data)
        self.raw += len(data)
        return len(data)


@dataclass
class BaseBackupProcess(StreamingChild):
    """A running ``pg_basebackup -Ft -D - -X none``: a ``storing.Source`` of the tar.

    With ``server_compressed`` the bytes read are the server's zstd stream; they are
    decompressed in passing (about 0.3 CPU s per GB of tar) so the tar is still parsed.
    """

    program: ClassVar[str] = "pg_basebackup"

    capture: Capture = field(default_factory=lambda: Capture((LABEL, BACKUP_MANIFEST)))
    server_compressed: bool = False
    _tar: TarStream | None = None
    _feed: _TarFeed | None = None
    _inflate: Any = None

    def __post_init__(self) -> None:
        self._tar = TarStream(self.capture)
        if self.server_compressed:
            self._feed = _TarFeed(self._tar)
            self._inflate = zstandard.ZstdDecompressor().stream_writer(
                cast("IO[bytes]", self._feed), write_size=1 << 17, write_return_read=True
            )
        super().__post_init__()

    def read(self, size: int = -1, /) -> bytes:
        assert self._tar is not None
        data = super().read(size)
        if self._inflate is None:
            self._tar.feed(data)
            return data
        try:
            self._inflate.write(data)
        except zstandard.ZstdError as exc:
            why = f"pg_basebackup's server-compressed stream is damaged: {exc}"
            raise IntegrityError(why) from exc
        return data

    @property
    def raw_size(self) -> int | None:
        """Bytes of tar the server compressed (``None`` when the stream is the tar itself)."""
        return self._feed.raw if self._feed is not None else None

    def finish(self) -> BackupFacts | bytes:
        """Wait for exit (PostgreSQL has then seen the backup's WAL archived); its facts.

        Server-compressed, there is no ``backup_manifest``: ``backup_label`` is returned, and
        the caller reads the stop LSN from the history file (:func:`read_history_facts`).
        """
        self.wait_ok(
            "is archive_command failing (pg_stat_archiver)? Else raise BACKUP_BASE_BACKUP_TIMEOUT"
        )
        assert self._tar is not None
        if self._inflate is not None:
            self._inflate.flush()
        self._tar.close()
        found = self.capture.found
        if LABEL not in found:
            raise IntegrityError("pg_basebackup's stream has no backup_label")
        if self.server_compressed:
            return found[LABEL]
        if BACKUP_MANIFEST not in found:
            raise IntegrityError("pg_basebackup's stream has no backup_manifest")
        return read_backup_facts(found[LABEL], found[BACKUP_MANIFEST])

    @property
    def log(self) -> str:
        return self.drain.text()


@dataclass(frozen=True)
class ServerZstd:
    """``--compress=server-zstd``: the level and the server's worker threads (0: none)."""

    level: int
    workers: int

    def argv(self) -> list[str]:
        spec = f"level={self.level}" + (f",workers={self.workers}" if self.workers else "")
        return [f"--compress=server-zstd:{spec}", "--no-manifest"]


#: The first PostgreSQL (server and pg_basebackup) that compresses a base backup server-side.
SERVER_COMPRESSION_SINCE = 150000


def client_major(version: str) -> int:
    """``pg_basebackup --version`` ("pg_basebackup (PostgreSQL) 15.20 ...") as 150000; 0 if
    unreadable (then the client compresses, as before 15)."""
    match = re.search(r"\)\s*(\d+)(?:\.(\d+))?", version)
    if match is None:
        return 0
    major = int(match.group(1))
    return major * 10000 if major >= 10 else major * 10000 + int(match.group(2) or 0) * 100


def start_base_backup(
    target: ConnInfo,
    *,
    label: str,
    timeout: float,
    bindir: str | None = None,
    server_zstd: ServerZstd | None = None,
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
        *(server_zstd.argv() if server_zstd is not None else []),
    ]
    proc = spawn(argv, env=target.env(), stdout=subprocess.PIPE, bufsize=0)
    drain = StderrDrain(proc.stderr)
    drain.start()
    return BaseBackupProcess(proc, drain, timeout, server_compressed=server_zstd is not None)


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
