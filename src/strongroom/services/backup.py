"""The full backup: preflight, one pg_dump streamed into every location, manifest last.

Orchestration is a template: start a catalog record, do the work, and record a final status in
every case (COMPLETED, PARTIAL with each location's reason, or FAILED with the reason).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from strongroom import __version__
from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import postgres
from strongroom.core.crypto import CIPHER_NAME
from strongroom.core.locking import database_lock, is_locked
from strongroom.core.manifest import Manifest, database_prefix, manifest_key_for, object_key_for
from strongroom.core.pipeline import LocationOutcome, StreamResult, settle, stream_to_locations
from strongroom.core.storage.base import Location, ObjectWriter
from strongroom.errors import (
    ConfigError,
    LocationUnavailable,
    LockBusy,
    StorageError,
    StrongroomError,
)
from strongroom.services.notify import notify_problem
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.backup")

Progress = Callable[[int, int], None]
_HEARTBEAT_EVERY = 15.0
_LOG_TAIL = 400


@dataclass
class BackupReport:
    """What a backup run produced, for the CLI and the Celery task."""

    id: str
    status: str
    error: str = ""
    locations: dict[str, str] = field(default_factory=dict)
    raw_size: int = 0
    stored_size: int = 0


def run_full_backup(
    config: Config,
    *,
    job_id: str = "",
    created_by_id: int | None = None,
    progress: Progress | None = None,
) -> BackupReport:
    """Back up the whole database of ``config.database_url``; always leaves a final status."""
    runtime = Runtime.build(config)  # key and codec problems stop us before any record exists
    target = postgres.ConnInfo.parse(config.database_url)
    record = store.start_backup(
        backup_type="FULL_DATABASE",
        database=target.dbname,
        job_id=job_id,
        created_by_id=created_by_id,
    )
    try:
        with database_lock(target):
            _fail_dead_runs(target.dbname, record.id)
            store.mark_running(record.id)
            report = _BackupRun(runtime, target, record.id, progress).run()
    except LockBusy as exc:
        store.finish_backup(record.id, status="SKIPPED", error=str(exc))
        return BackupReport(record.id, "SKIPPED", str(exc))
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, StrongroomError) else f"{type(exc).__name__}: {exc}"
        store.finish_backup(record.id, status="FAILED", error=reason)
        notify_problem(config, record.id, "FAILED", reason)
        raise
    if report.status != "COMPLETED":
        notify_problem(config, report.id, report.status, report.error)
    return report


def reap_dead_runs(config: Config) -> list[str]:
    """Mark runs FAILED whose worker died: IN_PROGRESS while nobody holds the database's lock.

    Runs that never reached the lock are judged by their heartbeat (older than an hour).
    """
    target = postgres.ConnInfo.parse(config.database_url)
    reaped = store.fail_stale(older_than=timedelta(hours=1), reason=_STALE_REASON)
    if store.running_backups(target.dbname) and not is_locked(target):
        for backup_id in store.running_backups(target.dbname):
            store.mark_failed(backup_id, _DEAD_REASON + "; found by strongroom check")
            reaped.append(backup_id)
    return reaped


_WITHDRAWN = "stored, then deleted again because a required location failed"
_DEAD_REASON = "the run died before finishing (worker killed, out of memory or machine lost)"
_STALE_REASON = "the run stopped reporting progress for over an hour and was given up"


def _fail_dead_runs(database: str, current_id: str) -> None:
    """We hold the database's lock, so any other run that had taken it is dead."""
    for dead in store.running_backups(database, exclude=current_id):
        store.mark_failed(dead, _DEAD_REASON + "; found by the next run")


class _BackupRun:
    """One backup's state while it runs (kept off the module so functions stay small)."""

    def __init__(
        self, runtime: Runtime, target: postgres.ConnInfo, backup_id: str, progress: Progress | None
    ) -> None:
        self.rt = runtime
        self.target = target
        self.id = backup_id
        self.progress = progress
        self.started = datetime.now(UTC)
        self._last_beat = time.monotonic()
        self.key = object_key_for(
            target.dbname, "full", backup_id, self.started, runtime.codec.extension
        )

    def run(self) -> BackupReport:
        self._check_required_locations()
        pre = postgres.preflight(self.target)
        self._cleanup_leftovers()
        writers, failed = self._open_writers()
        counts: dict[str, int] = {}
        with postgres.exported_snapshot(self.target) as (snapshot, conn):
            counter = _Counter(conn, pre.tables)
            counter.start()
            dump = postgres.start_dump(
                self.target,
                snapshot=snapshot,
                timeout=self.rt.config.pg_dump_timeout,
                bindir=self.rt.config.pg_bindir,
            )
            try:
                result = stream_to_locations(
                    dump, self.rt.codec, self.rt.keyring, writers, progress=self._progress
                )
                dump_log = dump.finish()
                counts = counter.result()
            except BaseException:
                dump.kill()
                settle(writers, {n: LocationOutcome(n) for n in writers}, commit=False)
                raise
        outcomes = {**result.outcomes, **failed}
        settle(writers, result.outcomes, commit=True)
        manifest = self._manifest(pre, result, counts, dump_log)
        return self._finish(result, outcomes, manifest, dump_log)

    # -- steps -----------------------------------------------------------------------------

    def _check_required_locations(self) -> None:
        """A required location that cannot take writes fails the run before pg_dump starts."""
        for name, problem in self.rt.unconfigured.items():
            if self.rt.config.location(name).required:
                raise ConfigError(problem)
        for loc in self.rt.locations:
            if loc.required:
                probe = loc.check()
                if not probe.writable:
                    raise LocationUnavailable(probe.detail, location=loc.name)

    def _cleanup_leftovers(self) -> None:
        """Abort uploads that a dead earlier run left behind (we hold the only live one)."""
        for loc in self.rt.locations:
            try:
                removed = loc.cleanup_incomplete(database_prefix(self.target.dbname), self.started)
            except StrongroomError as exc:
                log.warning("cleanup of %s skipped: %s", loc.name, exc)
                continue
            if removed:
                store.record_event(
                    self.id,
                    "cleaned",
                    location=loc.name,
                    message=f"aborted {removed} incomplete upload(s)",
                )

    def _open_writers(self) -> tuple[dict[str, ObjectWriter], dict[str, LocationOutcome]]:
        writers: dict[str, ObjectWriter] = {}
        failed: dict[str, LocationOutcome] = {}
        for name, problem in self.rt.unconfigured.items():
            failed[name] = LocationOutcome(name, error=ConfigError(problem))
        for loc in self.rt.locations:
            try:
                writers[loc.name] = loc.open_writer(self.key)
            except StrongroomError as exc:
                failed[loc.name] = LocationOutcome(loc.name, error=exc)
        return writers, failed

    def _progress(self, raw: int, stored: int) -> None:
        if self.progress is not None:
            self.progress(raw, stored)
        now = time.monotonic()
        if now - self._last_beat >= _HEARTBEAT_EVERY:
            self._last_beat = now
            store.heartbeat(self.id)

    def _manifest(
        self, pre: postgres.Preflight, result: StreamResult, counts: dict[str, int], dump_log: str
    ) -> Manifest:
        return Manifest(
            id=self.id,
            kind="full",
            database=self.target.dbname,
            server_version=pre.server_version,
            pg_dump_version=postgres.binary_version(
                postgres.find_binary("pg_dump", self.rt.config.pg_bindir)
            ),
            started_at=self.started,
            finished_at=datetime.now(UTC),
            raw_size=result.raw_size,
            compressed_size=result.compressed_size,
            stored_size=result.stored_size,
            sha256=result.sha256,
            codec=self.rt.codec.name,
            codec_level=self.rt.codec.level,
            cipher=CIPHER_NAME,
            key_id=self.rt.keyring.primary_id,
            object_key=self.key,
            table_rows=counts,
            tenant_id=None,
            tool_version=__version__,
            extra={"role": pre.role},
        )

    def _finish(
        self,
        result: StreamResult,
        outcomes: dict[str, LocationOutcome],
        manifest: Manifest,
        dump_log: str,
    ) -> BackupReport:
        required_failed = [
            n for n, o in outcomes.items() if not o.ok and self.rt.config.location(n).required
        ]
        if required_failed:
            self._withdraw(outcomes)
        else:
            self._publish_manifests(outcomes, manifest)
            required_failed = [
                n for n, o in outcomes.items() if not o.ok and self.rt.config.location(n).required
            ]
            if required_failed:
                self._withdraw(outcomes)
        self._record_copies(outcomes, result)
        reasons = {n: _reason(o.error) for n, o in outcomes.items() if not o.ok}
        if required_failed:
            status = "FAILED"
        elif reasons:
            status = "PARTIAL"
        else:
            status = "COMPLETED"
        error = "; ".join(_labelled(n, r) for n, r in reasons.items())
        store.finish_backup(
            self.id,
            status=status,
            error=error,
            filename=self.key.rsplit("/", 1)[-1],
            size_bytes=result.stored_size,
            raw_size_bytes=result.raw_size,
            compressed_size_bytes=result.compressed_size,
            checksum=result.sha256,
            compression_ratio=_saved(result),
            metadata=self._metadata(manifest, dump_log),
        )
        if status == "FAILED":
            raise LocationUnavailable(f"required location failed: {error}")
        return BackupReport(
            self.id,
            status,
            error,
            {n: ("ok" if o.ok else reasons[n]) for n, o in outcomes.items()},
            result.raw_size,
            result.stored_size,
        )

    def _publish_manifests(self, outcomes: dict[str, LocationOutcome], manifest: Manifest) -> None:
        """The manifest goes last: its presence is what makes a copy complete and restorable."""
        document = manifest.to_document(self.rt.keyring)
        for loc in self._committed(outcomes):
            try:
                loc.put_bytes(manifest_key_for(self.key), document)
            except StrongroomError as exc:
                outcomes[loc.name].error = exc
                _quiet_delete(loc, self.key)

    def _withdraw(self, outcomes: dict[str, LocationOutcome]) -> None:
        """A FAILED backup must leave nothing that looks complete anywhere."""
        for loc in self._committed(outcomes):
            _quiet_delete(loc, manifest_key_for(self.key))
            _quiet_delete(loc, self.key)
            outcomes[loc.name].committed = False

    def _committed(self, outcomes: dict[str, LocationOutcome]) -> list[Location]:
        return [
            loc
            for loc in self.rt.locations
            if loc.name in outcomes and outcomes[loc.name].committed and outcomes[loc.name].ok
        ]

    def _record_copies(self, outcomes: dict[str, LocationOutcome], result: StreamResult) -> None:
        for name, o in outcomes.items():
            store.record_copy(
                self.id,
                name,
                key=self.key,
                manifest_key=manifest_key_for(self.key),
                status="STORED" if o.ok and o.committed else "FAILED",
                size_bytes=result.stored_size if o.ok else o.bytes_written,
                checksum=result.sha256 if o.ok else "",
                error="" if o.ok and o.committed else _reason(o.error) or _WITHDRAWN,
                duration_seconds=o.duration,
            )

    def _metadata(self, manifest: Manifest, dump_log: str) -> dict[str, Any]:
        lines = dump_log.splitlines()
        return {
            "manifest": manifest.to_dict(),
            "pg_dump_log": "\n".join(lines[-_LOG_TAIL:]),
            "codec": manifest.codec,
            "codec_level": manifest.codec_level,
            "key_id": manifest.key_id,
            "table_rows": manifest.table_rows,
            "server_version": manifest.server_version,
            "pg_dump_version": manifest.pg_dump_version,
        }


class _Counter(threading.Thread):
    """Counts rows in the exported snapshot while pg_dump streams, so counts cost no wall time."""

    def __init__(self, conn: Any, tables: tuple[postgres.TableRef, ...]) -> None:
        super().__init__(name="strongroom-rowcount", daemon=True)
        self.conn = conn
        self.tables = tables
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.counts = postgres.count_rows(self.conn, self.tables)
        except BaseException as exc:
            self.error = exc

    def result(self) -> dict[str, int]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.counts


def _reason(error: BaseException | None) -> str:
    if error is None:
        return ""
    return str(error) or type(error).__name__


def _labelled(name: str, reason: str) -> str:
    """``name: reason``, once: storage errors already start with their location's name."""
    return reason if reason.startswith(f"{name}:") else f"{name}: {reason}"


def _saved(result: StreamResult) -> float:
    if result.raw_size <= 0:
        return 0.0
    return max(0.0, 1.0 - result.compressed_size / result.raw_size)


def _quiet_delete(loc: Location, key: str) -> None:
    try:
        loc.delete(key)
    except StorageError as exc:
        log.warning("could not delete %s from %s: %s", key, loc.name, exc)
