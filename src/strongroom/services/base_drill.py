"""The restore drill of a physical base backup: PITR into a throwaway server, read it, remove it.

A base backup's manifest holds no per-table row counts, so "proved" means what a reader of
the recovered cluster sees, recorded in the drill's ``data``:

1. ``pitr-restore --latest`` (the service, :func:`~strongroom.services.pitr.pitr_restore`)
   extracts the backup into ``<BACKUP_DRILL_SCRATCH_DIR>/strongroom_drill_<suffix>/data``;
2. a throwaway server starts on it (``core/postgres/scratch.py``: socket only, no archiving,
   as the directory's owner), replays the archive through ``wal-fetch`` and is promoted within
   ``BACKUP_DRILL_SERVER_TIMEOUT``; a missing or corrupt WAL file ends it, and the drill fails
   with the server's own last error;
3. every database that accepts connections connects, and every user table is read whole
   (``count(*)``, the rows per ``database.schema.table`` recorded): the RTO is the time from
   the drill's start to this point, a promoted server whose every table read;
4. ``bt_index_check`` (amcheck, created in the throwaway server when available) on the
   ``BACKUP_DRILL_AMCHECK_INDEXES`` largest B-tree indexes of each database;
5. the server is stopped (fast, immediate, SIGKILL) and the directory removed, also on
   failure, Ctrl-C and SIGTERM.

The directory is recorded as the drill's ``target`` before it exists and the postmaster's pid
as soon as it is known, so a killed drill's server and directory are found by the next one
(:func:`sweep_base_leftovers`, with the same rule as for drill databases).
"""

from __future__ import annotations

import logging
import pwd
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.postgres import drill_database_name, scratch
from strongroom.core.postgres.binaries import find_binary
from strongroom.core.postgres.drill import DRILL_PREFIX
from strongroom.core.postgres.recovery import RecoveryTarget
from strongroom.errors import ConfigError, StrongroomError
from strongroom.services import notify
from strongroom.services.pitr import pitr_restore

if TYPE_CHECKING:
    from strongroom.models import Backup, Drill
    from strongroom.services.drill import DrillReport

log = logging.getLogger("strongroom.drill")


@dataclass
class _Target:
    """The drill's directory and, once extracted, its server (what cleanup must undo)."""

    root: Path
    os_user: str
    server: scratch.ScratchServer | None = None


def scratch_root(config: Config) -> Path:
    return Path(config.drill_scratch_dir or tempfile.gettempdir()).expanduser().absolute()


def run_base_drill(config: Config, backup: Backup, tool: list[str]) -> DrillReport:
    """Drill one base backup (module docstring); the verdict is recorded and returned."""
    from strongroom.services.drill import _stopped

    if "--config" not in tool:
        raise ConfigError(
            "a base backup drill needs a config file the server's OS user can read "
            "(--config FILE or STRONGROOM_CONFIG): its restore_command runs wal-fetch with it"
        )
    parent = scratch_root(config)
    if not parent.is_dir():
        raise ConfigError(f"BACKUP_DRILL_SCRATCH_DIR {parent} is not a directory: create it")
    swept = sweep_base_leftovers(config, parent)
    name = drill_database_name(f"{backup.id.rsplit('-', 1)[-1]}_{secrets.token_hex(3)}")
    target = _Target(parent / name, config.drill_os_user)
    record = store.start_drill(
        backup_id=backup.id,
        kind="base",
        database=backup.database,
        target=str(target.root),
        data={"directory": str(target.root)},
    )
    started = time.monotonic()
    try:
        report = _prove(config, backup, record, target, tool, started)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug: removed, recorded, raised on
        _remove(target, record.pk)
        why = _stopped(exc)
        store.finish_drill(record.pk, ok=False, error=why)
        if isinstance(exc, Exception):
            notify.notify_problem(config, backup.id, "DRILL_FAILED", f"restore drill: {why}")
        raise
    report.swept = swept
    removed = _remove(target, record.pk)
    store.finish_drill(
        record.pk,
        ok=report.ok,
        rto_seconds=report.rto_seconds,
        error=report.error,
        data={**report.data, "seconds": round(report.seconds, 3), "swept": swept, **removed},
    )
    if not report.ok:
        notify.notify_problem(config, backup.id, "DRILL_FAILED", f"restore drill: {report.error}")
    return report


def _prove(
    config: Config,
    backup: Backup,
    record: Drill,
    target: _Target,
    tool: list[str],
    started: float,
) -> DrillReport:
    """Restore, start, read, check; a step that fails is a failed drill, not an exception."""
    from strongroom.services.drill import DrillReport

    report = DrillReport(record.pk, backup.id, "base", str(target.root), False, None, 0.0, [])
    data: dict[str, Any] = {}
    report.data = data
    try:
        target.root.mkdir(mode=0o700)
        restored = pitr_restore(
            config,
            str(target.root / "data"),
            RecoveryTarget("latest"),
            tool=tool,
            backup_id=backup.id,
        )
        data.update(source=restored.source, skipped=restored.skipped)
        data["restore_seconds"] = round(time.monotonic() - started, 3)
        bindir = str(Path(restored.start_command[0]).parent)
        server = scratch.ScratchServer(target.root, bindir, scratch.free_port(), target.os_user)
        target.server = server
        store.note_drill(record.pk, {"bindir": bindir, "port": server.port})
        server.configure()
        server.start()
        pid = server.wait_pid(30)
        store.note_drill(record.pk, {"postmaster_pid": pid})
        data.update(postmaster_pid=pid, port=server.port)
        superuser = server.wait_promoted(config.drill_server_timeout)
        data["promoted_seconds"] = round(time.monotonic() - started, 3)
        databases = scratch.user_databases(server.conninfo(user=superuser))
        rows: dict[str, int] = {}
        for db in databases:
            counts = scratch.count_tables(server.conninfo(db, superuser))
            rows.update({f"{db}.{table}": n for table, n in counts.items()})
        report.rto_seconds = time.monotonic() - started
        data.update(databases=databases, rows=rows, tables=len(rows))
        checked = {
            db: scratch.check_largest_indexes(
                server.conninfo(db, superuser), config.drill_amcheck_indexes
            )
            for db in databases
        }
        data["amcheck"] = checked if any(v is not None for v in checked.values()) else None
    except StrongroomError as exc:
        report.rto_seconds = None
        report.error = f"the restore failed: {exc}"
    report.seconds = time.monotonic() - started
    report.ok = not report.error
    return report


def _remove(target: _Target, drill_id: int) -> dict[str, Any]:
    """Stop the server and remove the directory; best effort (the next drill sweeps)."""
    stopped = ""
    try:
        if target.server is not None:
            stopped = target.server.stop()
        else:
            stopped = remove_leftover(target.root, store.get_drill(drill_id).data or {}, "")
            return {"stopped": stopped, "removed": not target.root.exists()}
    except (StrongroomError, OSError) as exc:
        log.error("could not stop the drill server in %s (the next drill will): %s", target, exc)
    shutil.rmtree(target.root, ignore_errors=True)
    if target.root.exists():
        log.error("could not remove %s (the next drill will)", target.root)
    return {"stopped": stopped, "removed": not target.root.exists()}


# -- leftovers ---------------------------------------------------------------------------------


def sweep_base_leftovers(config: Config, parent: Path) -> list[str]:
    """Stop and remove the drill directories no running drill uses; return their paths."""
    from strongroom.services.drill import leftover_reason

    found = sorted(p for p in parent.glob(DRILL_PREFIX + "*") if p.is_dir() and not p.is_symlink())
    records = store.drills_by_target([str(p) for p in found])
    removed = []
    for root in found:
        drill = records.get(str(root))
        live = _live_postmaster(root, (drill.data or {}) if drill else {})
        why = leftover_reason(drill, 1 if live else 0)
        if why is None:
            log.info("drill directory %s is in use by a running drill: kept", root)
            continue
        if drill is not None and drill.ok is None:
            store.finish_drill(drill.pk, ok=False, error=why)
            if drill.backup_id:
                notify.notify_problem(config, drill.backup_id, "DRILL_FAILED", why)
        remove_leftover(root, (drill.data or {}) if drill else {}, config.drill_os_user)
        log.warning("removed the leftover drill directory %s: %s", root, why)
        removed.append(str(root))
    return removed


def _live_postmaster(root: Path, data: dict[str, Any]) -> int | None:
    """The postmaster of ``root/data``: from its pid file, else the recorded pid if it is one."""
    server = scratch.ScratchServer(root, "", 0)
    pid = server.postmaster_pid()
    recorded = data.get("postmaster_pid")
    if (
        pid is None
        and isinstance(recorded, int)
        and scratch.is_postmaster_of(recorded, root / "data")
    ):
        pid = recorded
    return pid


def remove_leftover(root: Path, data: dict[str, Any], os_user: str) -> str:
    """Stop whatever server still runs in ``root`` (fast, immediate, kill), then remove it."""
    stopped = ""
    pid = _live_postmaster(root, data)
    if pid is not None:
        bindir = str(data.get("bindir") or Path(find_binary("pg_ctl")).parent)
        owner = _owner(root / "data") or os_user or "postgres"
        stopped = scratch.ScratchServer(root, bindir, 0, owner).stop()
        if _live_postmaster(root, data) is not None:  # checked again: pid reuse
            scratch.kill(pid)
            stopped = "killed"
    shutil.rmtree(root, ignore_errors=True)
    return stopped


def _owner(path: Path) -> str:
    """The OS user owning ``path`` (pg_ctl runs as it); ``""`` when unknown or root."""
    try:
        name = pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return ""
    return "" if name == "root" else name
