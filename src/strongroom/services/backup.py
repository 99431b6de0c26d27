"""The full backup: preflight, one pg_dump streamed into every location, manifest last.

Orchestration is a template: start a catalog record, do the work, and record a final status in
every case (COMPLETED, PARTIAL with each location's reason, or FAILED with the reason).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import postgres
from strongroom.core.locking import database_lock, is_locked
from strongroom.core.manifest import Manifest, database_prefix, object_key_for
from strongroom.core.pipeline import StreamResult
from strongroom.core.status import BackupStatus
from strongroom.errors import Interrupted, LocationUnavailable, LockBusy, StrongroomError
from strongroom.services.notify import notify_problem
from strongroom.services.runtime import Runtime
from strongroom.services.storing import ObjectUpload, Stored, finish_record, stream_fields

log = logging.getLogger("strongroom.backup")

Progress = Callable[[int, int], None]
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

    def run() -> BackupReport:
        _fail_dead_runs(target.dbname, record.id)
        return _BackupRun(runtime, target, record.id, progress).run()

    return run_locked(config, target, record.id, run)


def run_locked(
    config: Config,
    target: postgres.ConnInfo,
    record_id: str,
    run: Callable[[], BackupReport],
    *,
    purpose: str = "backup",
) -> BackupReport:
    """How every kind of backup run ends, once its record exists: never without a final status.

    ``run`` goes under the database's lock for ``purpose``: another run holding it makes this
    one SKIPPED; any exception makes it FAILED (recorded and notified) and goes on up; a run
    that ends other than COMPLETED is notified.
    """
    try:
        with database_lock(target, purpose):
            store.mark_running(record_id)
            report = run()
    except LockBusy as exc:
        store.finish_backup(record_id, status=BackupStatus.SKIPPED, error=str(exc))
        return BackupReport(record_id, BackupStatus.SKIPPED, str(exc))
    except BaseException as exc:
        reason = failure_reason(exc)
        store.finish_backup(record_id, status=BackupStatus.FAILED, error=reason)
        notify_problem(config, record_id, BackupStatus.FAILED, reason)
        raise
    if report.status != BackupStatus.COMPLETED:
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


def finish_run(stored: Stored, metadata: dict[str, Any]) -> BackupReport:
    """Record the run's final status; a required location failing raises with the reason."""
    finish_record(stored, metadata)
    if stored.status == BackupStatus.FAILED:
        raise LocationUnavailable(f"required location failed: {stored.error}")
    return BackupReport(
        stored.backup_id,
        stored.status,
        stored.error,
        stored.locations,
        stored.result.raw_size,
        stored.result.stored_size,
    )


def failure_reason(exc: BaseException) -> str:
    """What the catalog and the notification say about the exception that ended a run."""
    if isinstance(exc, StrongroomError | Interrupted):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    return f"{type(exc).__name__}: {exc}"


_DEAD_REASON = "the run died before finishing (worker killed, out of memory or machine lost)"
_STALE_REASON = "the run stopped reporting progress for over an hour and was given up"


def _fail_dead_runs(database: str, current_id: str) -> None:
    """We hold the database's lock, so any other run that had taken it is dead."""
    for dead in store.running_backups(database, exclude=current_id):
        store.mark_failed(dead, _DEAD_REASON + "; found by the next run")


class _BackupRun:
    """One full backup's state while it runs (kept off the module so functions stay small)."""

    def __init__(
        self, runtime: Runtime, target: postgres.ConnInfo, backup_id: str, progress: Progress | None
    ) -> None:
        self.rt = runtime
        self.target = target
        self.id = backup_id
        self.progress = progress
        self.started = datetime.now(UTC)
        self.key = object_key_for(
            target.dbname, "full", backup_id, self.started, runtime.codec.extension
        )
        self.counter: _Counter | None = None
        self.pre: postgres.Preflight | None = None

    def run(self) -> BackupReport:
        upload = ObjectUpload(self.rt, self.id, self.key, self.progress)
        upload.check_required()  # before preflight: a dead required disk is the first thing said
        pre = self.pre = postgres.preflight(self.target)
        upload.cleanup(database_prefix(self.target.dbname), self.started)
        with postgres.exported_snapshot(self.target) as (snapshot, conn):

            def start_dump() -> postgres.DumpProcess:
                self.counter = _Counter(conn, pre.tables)
                self.counter.start()
                return postgres.start_dump(
                    self.target,
                    snapshot=snapshot,
                    timeout=self.rt.config.pg_dump_timeout,
                    bindir=self.rt.config.pg_bindir,
                )

            stored = upload.stream(start_dump, self._manifest)
        return finish_run(stored, self._metadata(stored))

    def _manifest(self, result: StreamResult, dump_log: str) -> Manifest:
        assert self.counter is not None and self.pre is not None
        counts = self.counter.result()
        return Manifest(
            id=self.id,
            kind="full",
            database=self.target.dbname,
            server_version=self.pre.server_version,
            pg_dump_version=postgres.binary_version(
                postgres.find_binary("pg_dump", self.rt.config.pg_bindir)
            ),
            started_at=self.started,
            finished_at=datetime.now(UTC),
            table_rows=counts,
            tenant_id=None,
            extra={"role": self.pre.role},
            **stream_fields(self.rt, self.key, result),
        )

    def _metadata(self, stored: Stored) -> dict[str, Any]:
        manifest = stored.manifest
        if manifest is None:
            return {"codec": self.rt.codec.name, "codec_level": self.rt.codec.level}
        lines = str(stored.source_result or "").splitlines()
        return {
            "manifest": manifest.to_dict(),
            "pg_dump_log": "\n".join(lines[-_LOG_TAIL:]),
            "codec": manifest.codec,
            "codec_level": manifest.codec_level,
            "codec_levels": manifest.codec_levels,
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
