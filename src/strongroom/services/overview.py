"""Where every database's backups stand, as one set of facts for metrics and the admin.

Catalog queries only (a handful, each answered by an index), plus two bounded looks outside:
every location's probe (``BACKUP_CHECK_TIMEOUT`` in all, skipped with ``probe=False``) and
the server's ``pg_stat_archiver`` (connect and query within the same bound). Both run in the
background while the catalog is read, so a silent location or a server that is down costs
at most that one timeout, never more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import postgres
from strongroom.core.deadline import Pending
from strongroom.errors import StrongroomError
from strongroom.services.health import Probe, probe_locations

if TYPE_CHECKING:
    from strongroom.models import Backup, BackupEvent, Drill

#: The event ``wal-verify`` records: ``data = {"missing": {location: count}, "newest": ...}``.
WAL_VERIFY_EVENT = "wal_verify"


@dataclass(frozen=True)
class Archiver:
    """``pg_stat_archiver`` of the configured database, or why it could not be read."""

    database: str
    status: postgres.ArchiverStatus | None
    problem: str = ""


@dataclass
class Overview:
    """The facts; ``locations`` is ``None`` when not probed, ``archiver`` when no database."""

    at: datetime
    newest_runs: list[Backup]
    newest_good: list[Backup]
    copies: list[tuple[str, str, str, str, int]]
    newest_drills: list[Drill]
    passed_drills: list[Drill]
    wal_verify: BackupEvent | None
    locations: dict[str, Probe] | None = None
    archiver: Archiver | None = None
    seconds: float = 0.0
    databases: list[str] = field(default_factory=list)


def gather(config: Config, *, probe: bool = True, database: str | None = None) -> Overview:
    """Read everything once; ``database`` narrows the catalog's facts to one database."""
    started = time.monotonic()
    collect_locations = probe_locations(config) if probe else None
    archiver = _start_archiver(config)
    facts = Overview(
        at=datetime.now(UTC),
        newest_runs=store.newest_backups(restorable=False, database=database),
        newest_good=store.newest_backups(restorable=True, database=database),
        copies=store.copy_counts(database),
        newest_drills=store.newest_drill_of_each(database=database),
        passed_drills=store.newest_drill_of_each(passed=True, database=database),
        wal_verify=store.newest_event(WAL_VERIFY_EVENT),
        databases=[database] if database else store.catalog_databases(),
    )
    if collect_locations is not None:
        facts.locations = collect_locations()
    facts.archiver = archiver() if archiver is not None else None
    facts.seconds = time.monotonic() - started
    return facts


def _start_archiver(config: Config) -> Callable[[], Archiver] | None:
    """Read ``pg_stat_archiver`` in the background; None when no database is configured."""
    try:
        target = postgres.ConnInfo.parse(config.database_url)
    except StrongroomError:
        return None
    seconds = config.check_timeout
    until = time.monotonic() + seconds
    pending = Pending(
        lambda: postgres.archiver_status(target, timeout=seconds), "strongroom-archiver"
    )

    def result() -> Archiver:
        if not pending.wait(until):
            return Archiver(target.dbname, None, f"no answer in {seconds:g} s")
        try:
            return Archiver(target.dbname, pending.result(seconds))
        except StrongroomError as exc:
            return Archiver(target.dbname, None, str(exc))

    return result


def missing_wal(event: BackupEvent | None) -> dict[str, int]:
    """Segments the newest archive check found missing, per location (empty: none known)."""
    if event is None:
        return {}
    missing = (event.data or {}).get("missing") or {}
    if not isinstance(missing, dict):
        return {}
    return {str(loc): int(n) for loc, n in missing.items() if isinstance(n, int | float)}
