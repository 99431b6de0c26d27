"""Restore drills: restore a backup into a throwaway target, prove it, record it, remove it.

A backup nobody has restored is a hope; a drill makes it a recorded fact. One drill:

1. drops what earlier drills left behind (:func:`sweep_leftovers`);
2. records itself as running (a :class:`~strongroom.models.Drill`, host and pid), *before* its
   target exists, so a drill killed at any point leaves a record naming its target;
3. restores through the same service as ``strongroom restore`` or, for a tenant backup,
   ``strongroom tenant restore`` (one function per kind in :data:`PROOFS`) into
   ``strongroom_drill_<backup suffix>_<random>`` on ``BACKUP_DRILL_TARGET_URL`` (default: the
   backed-up server), then compares every table's rows with the manifest's counts;
4. records the verdict: ``rto_seconds`` is the time from the drill's start to a usable database
   (restored and every count matched; ``None`` when it never became usable), the mismatches
   name each table, and the backup is marked (``last_drill_at``, ``last_drill_ok``);
5. drops the target, also on failure, Ctrl-C and SIGTERM (``except BaseException``).

A failed drill notifies the operators as a failed backup does, and ``strongroom check`` fails
until a later drill passes (:func:`drill_state`).

A leftover drill database, found by name on the drill server, is dropped when the newest drill
record naming it has finished, or ran on this host in a process that is gone (that record is
then finished as failed), or when no record names it and nobody is connected to it. A running
drill on another host is never touched: its own host's next drill cleans up after it.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import postgres
from strongroom.core.status import RESTORABLE
from strongroom.errors import (
    BackupNotFound,
    ConfigError,
    NotSupportedYet,
    StrongroomError,
    WrongBackupKind,
)
from strongroom.services import notify
from strongroom.services.restore import restore_backup

if TYPE_CHECKING:
    from strongroom.models import Backup, Drill

log = logging.getLogger("strongroom.drill")

KINDS = ("full", "tenant", "base")
TYPE_TO_KIND = {t: k for k, t in store.KIND_TO_TYPE.items()}
#: What ``check`` counts as needing drills: the backup types a drill can prove today.
DRILLED_TYPES = ("FULL_DATABASE",)


@dataclass
class Proof:
    """What one kind's restore proved: each table's (manifest count, restored count)."""

    table_rows: dict[str, tuple[int, int | None]]
    data: dict[str, Any] = field(default_factory=dict)

    def mismatches(self) -> list[dict[str, Any]]:
        return [
            {"table": table, "expected": expected, "found": found}
            for table, (expected, found) in sorted(self.table_rows.items())
            if expected != found
        ]


#: ``prove(config, backup, target)``: restore ``backup`` into the empty, not yet existing
#: ``target`` and count its rows. Raises a ``StrongroomError`` when the restore fails.
Prove = Callable[[Config, "Backup", postgres.ConnInfo], Proof]


def _prove_full(config: Config, backup: Backup, target: postgres.ConnInfo) -> Proof:
    """The full restore, exactly as ``strongroom restore ID --target`` runs it."""
    report = restore_backup(config, backup.id, target.conninfo())
    stages = {name: round(sec, 3) for name, sec in report.stages.items()}
    return Proof(
        report.table_rows,
        {"source": report.source, "skipped": report.skipped, "stages": stages},
    )


def _prove_tenant(config: Config, backup: Backup, target: postgres.ConnInfo) -> Proof:
    """The tenant restore into a new database (``strongroom tenant restore ID --target``).

    The rows are then counted in the new database itself, apart from what the loader says it
    wrote: the proof is what a reader of the restored database sees, against the manifest.
    """
    from strongroom.services.tenant_restore import restore_tenant

    report = restore_tenant(config, backup.id, target.conninfo())
    counted = postgres.target_row_counts(target)
    expected = {table: rows for table, (rows, _) in report.table_rows.items()}
    stages = {name: round(sec, 3) for name, sec in report.stages.items()}
    return Proof(
        {table: (rows, counted.get(table)) for table, rows in expected.items()},
        {
            "source": report.source,
            "skipped": report.skipped,
            "stages": stages,
            "tenant_id": report.tenant_id,
        },
    )


PROOFS: dict[str, Prove] = {"full": _prove_full, "tenant": _prove_tenant}
#: A base backup is drilled into a throwaway server, not a database (``services/base_drill.py``).
SERVER_KINDS = ("base",)


@dataclass
class DrillReport:
    drill_id: int
    backup_id: str
    kind: str
    target: str
    ok: bool
    #: Seconds from the drill's start to a usable database; None when it never became one.
    rto_seconds: float | None
    seconds: float
    mismatches: list[dict[str, Any]]
    error: str = ""
    #: Leftover drill databases this drill dropped first.
    swept: list[str] = field(default_factory=list)
    #: Where the copy came from, copies passed over, seconds per restore stage.
    data: dict[str, Any] = field(default_factory=dict)


def run_drill(
    config: Config,
    backup_id: str | None,
    *,
    kind: str | None = None,
    tool: list[str] | None = None,
) -> DrillReport:
    """Drill ``backup_id`` (or the newest restorable backup of ``kind``, default full).

    ``tool`` is the argv that runs this strongroom with the same config file, for a base
    drill's ``restore_command`` (default: :func:`~strongroom.services.pitr.strongroom_command`).
    """
    backup, kind = _choose(config, backup_id, kind)
    if kind in SERVER_KINDS:
        from strongroom.services.base_drill import run_base_drill
        from strongroom.services.pitr import strongroom_command

        return run_base_drill(config, backup, tool or strongroom_command(None))
    server = drill_server(config)
    if not postgres.can_create_databases(server):
        raise ConfigError(
            f"the drill cannot create its throwaway database as {server.user or 'this role'} "
            "(no CREATEDB): set BACKUP_DRILL_TARGET_URL to a server and role that may create "
            "databases and read every row (superuser or CREATEDB with BYPASSRLS)"
        )
    swept = sweep_leftovers(config, server)
    name = postgres.drill_database_name(f"{backup.id.rsplit('-', 1)[-1]}_{secrets.token_hex(3)}")
    record = store.start_drill(
        backup_id=backup.id,
        kind=kind,
        database=backup.database,
        target=name,
        data={"server": str(server.with_db(name))},
    )
    started = time.monotonic()
    try:
        report = _prove(config, backup, record, server.with_db(name), PROOFS[kind], started)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug: dropped, recorded, raised on
        _drop(server, name)
        why = _stopped(exc)
        store.finish_drill(record.pk, ok=False, error=why)
        if isinstance(exc, Exception):  # a bug, not an operator's signal: someone must look
            notify.notify_problem(config, backup.id, "DRILL_FAILED", f"restore drill: {why}")
        raise
    report.swept = swept
    dropped = _drop(server, name)
    store.finish_drill(
        record.pk,
        ok=report.ok,
        rto_seconds=report.rto_seconds,
        mismatches=report.mismatches,
        error=report.error,
        data={
            **report.data,
            "seconds": round(report.seconds, 3),
            "swept": swept,
            "dropped": dropped,
        },
    )
    if not report.ok:
        notify.notify_problem(config, backup.id, "DRILL_FAILED", f"restore drill: {report.error}")
    return report


def _prove(
    config: Config,
    backup: Backup,
    record: Drill,
    target: postgres.ConnInfo,
    prove: Prove,
    started: float,
) -> DrillReport:
    """Run the kind's proof; a restore that fails is a failed drill, not an exception."""
    report = DrillReport(record.pk, backup.id, record.kind, record.target, False, None, 0.0, [])
    try:
        proof = prove(config, backup, target)
    except StrongroomError as exc:
        report.seconds = time.monotonic() - started
        report.error = f"the restore failed: {exc}"
        return report
    report.seconds = time.monotonic() - started
    report.mismatches = proof.mismatches()
    report.data = {**proof.data, "tables": len(proof.table_rows)}
    report.ok = not report.mismatches
    if report.ok:
        report.rto_seconds = report.seconds
    else:
        report.error = "row counts differ from the manifest in " + ", ".join(
            f"{m['table']} (expected {m['expected']}, found {_found(m['found'])})"
            for m in report.mismatches
        )
    return report


def _stopped(exc: BaseException) -> str:
    """Why a drill stopped without a verdict: ``interrupted by SIGTERM``, or the failure."""
    if isinstance(exc, Exception):
        return f"the drill failed unexpectedly: {type(exc).__name__}: {exc}"
    return str(exc) or f"interrupted ({type(exc).__name__})"


def _found(value: Any) -> str:
    return "no such table" if value is None else str(value)


def _choose(config: Config, backup_id: str | None, kind: str | None) -> tuple[Backup, str]:
    """The backup to drill and its kind; a kind without a drill yet is refused at once."""
    if kind is not None:
        _supported(kind)
    if backup_id is None:
        wanted = kind or "full"
        # A base backup's database is its cluster's system identifier: the newest of any.
        database = None if wanted in SERVER_KINDS else _configured_database(config)
        try:
            backup = store.latest_backup(database=database, backup_type=store.KIND_TO_TYPE[wanted])
        except BackupNotFound:
            if wanted not in SERVER_KINDS:
                raise
            raise BackupNotFound(
                "no restorable base backup in the catalog: run `strongroom base-backup` first"
            ) from None
        return backup, wanted
    backup = store.get_backup(backup_id)
    found = TYPE_TO_KIND.get(backup.backup_type, "full")
    if kind is not None and kind != found:
        raise WrongBackupKind(
            f"backup {backup.id} is a {found} backup, not {kind}: drop --kind or pass a {kind} "
            "backup's id"
        )
    _supported(found)
    if backup.status not in RESTORABLE:
        raise BackupNotFound(
            f"backup {backup.id} is {backup.status}, not restorable: nothing to drill; "
            "`strongroom drill --latest` drills the newest restorable one"
        )
    return backup, found


def _supported(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown drill kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind not in PROOFS and kind not in SERVER_KINDS:
        raise NotSupportedYet(
            f"not supported yet: {kind} drills; `strongroom drill --latest` "
            "drills the newest full backup"
        )


def _configured_database(config: Config) -> str | None:
    try:
        return postgres.ConnInfo.parse(config.database_url).dbname or None
    except ConfigError:
        return None


def drill_server(config: Config) -> postgres.ConnInfo:
    """Where drill databases go: ``BACKUP_DRILL_TARGET_URL``, else the backed-up server."""
    if config.drill_target_url:
        try:
            return postgres.ConnInfo.parse(config.drill_target_url)
        except ConfigError:
            raise ConfigError(
                "BACKUP_DRILL_TARGET_URL is not a valid PostgreSQL URL: "
                "e.g. postgresql://strongroom_drill@scratch.example:5432/postgres"
            ) from None
    return postgres.ConnInfo.parse(config.database_url)


# -- leftovers ---------------------------------------------------------------------------------


def sweep_leftovers(config: Config, server: postgres.ConnInfo) -> list[str]:
    """Drop the drill databases no running drill uses (module docstring); return their names."""
    found = postgres.drill_databases(server)
    records = store.drills_by_target(list(found))
    dropped = []
    for name, sessions in found.items():
        drill = records.get(name)
        why = leftover_reason(drill, sessions)
        if why is None:
            log.info("drill database %s is in use by a running drill: kept", name)
            continue
        if drill is not None and drill.ok is None:
            store.finish_drill(drill.pk, ok=False, error=why)
            if drill.backup_id:
                notify.notify_problem(config, drill.backup_id, "DRILL_FAILED", why)
        postgres.drop_drill_database(server, name)
        log.warning("dropped the leftover drill database %s: %s", name, why)
        dropped.append(name)
    return dropped


def leftover_reason(drill: Drill | None, sessions: int) -> str | None:
    """Why a drill database may be dropped, or None while a live drill may be using it."""
    if drill is None:
        return None if sessions else "no drill record names it and nobody is connected"
    if drill.ok is not None:
        return f"its drill {drill.pk} finished"
    if drill.host == socket.gethostname() and (drill.pid is None or not store.pid_alive(drill.pid)):
        return f"drill {drill.pk} was killed: its process {drill.pid} on {drill.host} is gone"
    return None


def _drop(server: postgres.ConnInfo, name: str) -> bool:
    """Best effort: the drill's own verdict matters more; a failure here is swept next time."""
    try:
        postgres.drop_drill_database(server, name)
    except StrongroomError as exc:
        log.error("could not drop the drill database %s (the next drill will): %s", name, exc)
        return False
    return True


# -- check -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrillState:
    """What ``check`` says about drills: whether it passes, and one line why."""

    ok: bool
    detail: str


def drill_state(config: Config, now: datetime | None = None) -> DrillState:
    """The drill rule of ``strongroom check``, for the configured database.

    Base backup drills (recorded under their cluster's system identifier) count beside the
    configured database's: the newest finished drill of each family is looked at.

    1. The newest finished drill (of either family) failed: fail (until a later one passes).
    2. A drill passed within ``BACKUP_DRILL_MAX_AGE_DAYS``: pass.
    3. No restorable full backup is older than that age: pass (nothing was due yet; a fresh
       install is not failed for drills it could not have run).
    4. Otherwise: fail, no drill passed recently.
    """
    at = now or datetime.now(UTC)
    database = _configured_database(config)
    days = config.drill_max_age_days
    cutoff = at - timedelta(days=days)
    families = (database, None), (None, "base")
    newest = list(
        {
            d.pk: d
            for db, k in families
            for d in store.newest_drills(db, kind=k, finished=True, limit=1)
        }.values()
    )
    failed = [d for d in newest if not d.ok]
    finished = sorted(newest, key=lambda d: (d.started_at, d.pk), reverse=True)[:1]
    if failed:
        d = failed[0]
        return DrillState(
            False,
            f"the newest drill ({d.pk}, backup {d.backup_id}, {_ago(at, d.finished_at)}) "
            f"FAILED: {d.error}",
        )
    if finished and (finished[0].finished_at or finished[0].started_at) >= cutoff:
        d = finished[0]
        rto = f", RTO {d.rto_seconds:.1f} s" if d.rto_seconds is not None else ""
        return DrillState(
            True, f"drill {d.pk} of backup {d.backup_id} passed {_ago(at, d.finished_at)}{rto}"
        )
    if not store.restorable_backup_before(database, cutoff, DRILLED_TYPES):
        return DrillState(
            True, f"no drill yet; none due (no restorable backup older than {days:g} d)"
        )
    last = f"the last passed {_ago(at, finished[0].finished_at)}" if finished else "none ever"
    return DrillState(
        False,
        f"no restore drill passed in the last {days:g} d ({last}; BACKUP_DRILL_MAX_AGE_DAYS): "
        "run strongroom drill --latest",
    )


def _ago(now: datetime, when: datetime | None) -> str:
    if when is None:
        return "at an unknown time"
    hours = (now - when).total_seconds() / 3600
    return f"{hours / 24:.1f} d ago" if hours >= 48 else f"{hours:.1f} h ago"
