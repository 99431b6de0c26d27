"""The physical base backup: pg_basebackup's tar through the one store path, WAL confirmed.

``pg_basebackup -Ft -D - -X none`` (why this and not ``pg_backup_start``/``pg_backup_stop``:
:mod:`strongroom.core.postgres.basebackup`) streams through ``storing.ObjectUpload`` as
``<system identifier>/base/YYYY/MM/DD/<id>.tar[.zst].enc``: compressed, encrypted, hashed,
every location, manifest last, catalogued ``BASE_BACKUP`` under the same scope as the cluster's
WAL (``<system identifier>/wal/...``), so prune and ``wal-verify`` pair a base backup with the
segments it needs by one name.

A base backup is usable only with every WAL segment from its start to its stop LSN. pg_basebackup
returns only once PostgreSQL saw them archived, and ``strongroom wal-push`` returns success
only once a segment is durable in every required location; on top of that, before the base
backup's manifest is written, each of those segments' manifests (and the ``.backup`` history
file's) is looked for in every required location, for at most ``BACKUP_WAL_CONFIRM_TIMEOUT``
seconds. A segment missing past that fails the run: nothing that looks restorable is left.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import postgres
from strongroom.core.codecs import get_codec
from strongroom.core.manifest import (
    Manifest,
    key_segment,
    manifest_key_for,
    object_key_for,
    wal_key_for,
)
from strongroom.core.pipeline import StreamResult
from strongroom.core.postgres import basebackup
from strongroom.core.postgres.basebackup import BackupFacts, ClusterFacts
from strongroom.core.storage.base import Location
from strongroom.errors import (
    ConfigError,
    IntegrityError,
    StorageError,
    StrongroomError,
    WalNotArchived,
)
from strongroom.services.backup import BackupReport, finish_run, run_locked
from strongroom.services.runtime import Runtime
from strongroom.services.storing import ObjectUpload, Stored, stream_fields
from strongroom.services.wal_fetch import read_archived

log = logging.getLogger("strongroom.base_backup")

Progress = Callable[[int, int], None]
LOCK_PURPOSE = "base backup"
#: Seconds between looks for the WAL manifests, doubling from the first to the last: a file
#: archived just after pg_basebackup returned no longer costs a whole fixed 0.2 s pause.
_POLL_FIRST, _POLL_MOST = 0.02, 0.5


def run_base_backup(
    config: Config, *, job_id: str = "", progress: Progress | None = None
) -> BackupReport:
    """Take one base backup of the cluster behind ``DATABASE_URL``; always a final status."""
    runtime = Runtime.build(config)
    target = postgres.ConnInfo.parse(config.database_url)
    cluster = basebackup.cluster_facts(target)
    if cluster.archive_mode == "off":
        raise ConfigError(
            "archive_mode is off on this server: a base backup is useless without its WAL; "
            "turn WAL archiving on first (docs/pitr.md)"
        )
    record = store.start_backup(
        backup_type="BASE_BACKUP", database=cluster.system_identifier, job_id=job_id
    )
    return run_locked(
        config,
        target,
        record.id,
        lambda: _BaseRun(runtime, target, cluster, record.id, progress).run(),
        purpose=LOCK_PURPOSE,
    )


@dataclass
class _BaseRun:
    """One base backup's state while it runs."""

    rt: Runtime
    target: postgres.ConnInfo
    cluster: ClusterFacts
    id: str
    progress: Progress | None

    def __post_init__(self) -> None:
        self.started = datetime.now(UTC)
        self.scope = self.cluster.system_identifier
        self.key = object_key_for(
            self.scope, "base", self.id, self.started, self.rt.codec.extension
        )
        self.process: basebackup.BaseBackupProcess | None = None
        self.confirmed: list[str] = []
        self.client_version = postgres.binary_version(
            postgres.find_binary("pg_basebackup", self.rt.config.pg_bindir)
        )
        self.server_zstd = server_zstd(self.rt, self.cluster, self.client_version)

    def run(self) -> BackupReport:
        upload = ObjectUpload(self.rt, self.id, self.key, self.progress)
        upload.check_required()
        upload.cleanup(key_segment(self.scope) + "/base/", self.started)
        plain = get_codec("none") if self.server_zstd is not None else None
        stored = upload.stream(self._start, self._manifest, codec=plain)
        stored.result = self._sizes(stored.result)
        return finish_run(stored, self._metadata(stored))

    def _start(self) -> basebackup.BaseBackupProcess:
        self.process = basebackup.start_base_backup(
            self.target,
            label=f"strongroom {self.id}",
            timeout=self.rt.config.base_backup_timeout,
            bindir=self.rt.config.pg_bindir,
            server_zstd=self.server_zstd,
        )
        return self.process

    def _facts(self, finished: BackupFacts | bytes) -> BackupFacts:
        """Server-compressed (no ``backup_manifest``): the stop LSN from the history file,
        once it is archived everywhere required."""
        if isinstance(finished, BackupFacts):
            return finished
        start, timeline = basebackup.label_start(finished)
        size = self.cluster.wal_segment_size
        history = basebackup.history_file_name(start, timeline, size)
        confirm_archived(self.rt, self.scope, [history])
        try:
            text = read_archived(self.rt, self.scope, history)
        except StrongroomError as exc:  # archived, yet no good copy: the backup is unusable
            raise IntegrityError(f"cannot read back the history file {history}: {exc}") from exc
        return basebackup.read_history_facts(finished, text)

    def _manifest(self, result: StreamResult, finished: BackupFacts | bytes) -> Manifest:
        """Built once pg_basebackup ended cleanly; first the backup's WAL must be confirmed."""
        facts = self._facts(finished)
        size = self.cluster.wal_segment_size
        segments = basebackup.segments_between(facts, size)
        history = basebackup.history_file_name(facts.start_lsn, facts.timeline, size)
        self.confirmed = confirm_archived(self.rt, self.scope, [*segments, history])
        c = self.cluster
        return Manifest(
            id=self.id,
            kind="base",
            database=self.scope,
            server_version=c.server_version,
            pg_dump_version=self.client_version,
            started_at=self.started,
            finished_at=datetime.now(UTC),
            tenant_id=None,
            extra={
                **facts.to_dict(),
                "system_identifier": c.system_identifier,
                "server_version_num": c.server_version_num,
                "wal_segment_size": c.wal_segment_size,
                "start_wal": segments[0],
                "stop_wal": segments[-1],
                "backup_history_file": history,
                "wal_confirmed_in": self.confirmed,
                "backup_label": self._label_text(),
                "source_database": self.target.dbname,
                "compressed_on": "client" if self.server_zstd is None else "server",
            },
            **self._stream_fields(result),
        )

    def _stream_fields(self, result: StreamResult) -> dict[str, Any]:
        fields = stream_fields(self.rt, self.key, self._sizes(result))
        if self.server_zstd is not None:
            fields["codec_level"] = self.server_zstd.level
        return fields

    def _sizes(self, result: StreamResult) -> StreamResult:
        """Server-compressed, the stream read was already zstd at one level: the tar's size
        is what the decompressing parser counted, the stream's is the compressed one."""
        zstd, process = self.server_zstd, self.process
        if zstd is None or process is None or process.raw_size is None:
            return result
        raw, compressed = process.raw_size, result.raw_size
        return replace(
            result, raw_size=raw, compressed_size=compressed, levels={zstd.level: (raw, compressed)}
        )

    def _label_text(self) -> str:
        assert self.process is not None
        return self.process.capture.found.get(basebackup.LABEL, b"").decode("utf-8", "replace")

    def _metadata(self, stored: Stored) -> dict[str, Any]:
        manifest = stored.manifest
        if manifest is None:
            return {"codec": self.rt.codec.name, "codec_level": self.rt.codec.level}
        log_text = self.process.log if self.process is not None else ""
        return {
            "manifest": manifest.to_dict(),
            "pg_dump_log": log_text,
            "codec": manifest.codec,
            "codec_level": manifest.codec_level,
            "codec_levels": manifest.codec_levels,
            "key_id": manifest.key_id,
            "server_version": manifest.server_version,
            **{k: manifest.extra[k] for k in _SHOWN},
        }


def server_zstd(
    runtime: Runtime, cluster: ClusterFacts, client_version: str
) -> basebackup.ServerZstd | None:
    """Server-side zstd when the codec is zstd, the setting allows it and both ends can (15+).

    The level is adaptive zstd's floor (the server's CPU is the database's: the cheapest level,
    which on a base backup's near-empty pages stores about what level 3 does), else the fixed
    level; workers follow ``BACKUP_COMPRESSION_THREADS`` (-1: this host's cores).
    """
    codec, config = runtime.codec, runtime.config
    if codec.name != "zstd" or config.base_backup_compress_on != "server":
        return None
    since = basebackup.SERVER_COMPRESSION_SINCE
    if cluster.server_version_num < since or basebackup.client_major(client_version) < since:
        return None
    level = codec.min_level if codec.min_level is not None else codec.level
    workers = (os.cpu_count() or 1) if codec.threads < 0 else codec.threads
    return basebackup.ServerZstd(level=level, workers=workers)


#: The manifest's physical facts also shown in ``strongroom show`` and ``--json``.
_SHOWN = ("system_identifier", "timeline", "start_lsn", "stop_lsn", "start_wal", "stop_wal")


def wal_manifest_key(scope: str, file_name: str) -> str:
    """Where a WAL file's manifest lives (its codec suffix does not change the manifest key)."""
    return manifest_key_for(wal_key_for(scope, file_name, ""))


def confirm_archived(runtime: Runtime, scope: str, names: list[str]) -> list[str]:
    """Wait (bounded) until every named WAL file's manifest is in every required location.

    Returns the locations checked; raises ``WalNotArchived`` naming what is still missing where.
    """
    required = [loc for loc in runtime.locations if loc.required]
    waiting = {(loc.name, name): loc for loc in required for name in names}
    deadline = time.monotonic() + runtime.config.wal_confirm_timeout
    why: dict[tuple[str, str], str] = {}
    pause = _POLL_FIRST
    while True:
        for (where, name), loc in list(waiting.items()):
            found, why[(where, name)] = _has_manifest(loc, scope, name)
            if found:
                del waiting[(where, name)]
        if not waiting:
            return [loc.name for loc in required]
        if time.monotonic() >= deadline:
            raise WalNotArchived(_missing_message(runtime, waiting, why))
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MOST)


def _has_manifest(loc: Location, scope: str, name: str) -> tuple[bool, str]:
    try:
        loc.stat(wal_manifest_key(scope, name))
        return True, ""
    except StorageError as exc:
        return False, str(exc)


def _missing_message(
    runtime: Runtime, waiting: dict[tuple[str, str], Location], why: dict[tuple[str, str], str]
) -> str:
    by_location: dict[str, list[str]] = {}
    for where, name in waiting:
        by_location.setdefault(where, []).append(name)
    parts = [f"{where}: {', '.join(sorted(names))}" for where, names in by_location.items()]
    first = next(iter(waiting))
    return (
        f"the base backup's WAL is not archived in every required location after "
        f"{runtime.config.wal_confirm_timeout:g} s ({'; '.join(parts)}; {why.get(first, '')}): "
        "is archive_command `strongroom wal-push %p` (pg_stat_archiver)? "
        "Else raise BACKUP_WAL_CONFIRM_TIMEOUT"
    )
