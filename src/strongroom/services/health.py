"""``strongroom check``: is everything in place for tonight's backup, and was last night's good?

Each probe yields one line; none prints a secret. The overall result is non-zero when anything
required is broken or the newest good backup is older than ``BACKUP_MAX_AGE_HOURS``.

Restore drills (``services/drill.py``, :func:`~strongroom.services.drill.drill_state`): the
check fails when the newest finished drill failed, or when restorable full backups older than
``BACKUP_DRILL_MAX_AGE_DAYS`` exist and no drill passed within that age; a fresh install, whose
backups are all younger, passes.

The catalog is checked, not trusted: ``PRAGMA quick_check`` (SQLite) or a query (PostgreSQL)
must pass, and an empty catalog beside a location that holds manifests is a warning naming
``catalog rebuild --from`` that location (a lost catalog looks exactly like a new one).

Locations are probed all at once, in the background, under one deadline
(``BACKUP_CHECK_TIMEOUT``) while the key, the database and the catalog are checked: a location
that accepts connections and never answers is reported as "no answer in N s" and holds up
nothing else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from strongroom.catalog import bootstrap, store
from strongroom.config import Config
from strongroom.core import deadline, postgres, wal
from strongroom.core.crypto import Keyring
from strongroom.core.deadline import Pending
from strongroom.core.manifest import MANIFEST_SUFFIX
from strongroom.core.storage.base import CheckResult, Location
from strongroom.core.wal_spool import Spool
from strongroom.errors import BackupNotFound, StrongroomError
from strongroom.services.backup import reap_dead_runs
from strongroom.services.drill import drill_state
from strongroom.services.runtime import build_locations


@dataclass
class Probe:
    name: str
    ok: bool
    detail: str
    required: bool = True


@dataclass
class HealthReport:
    probes: list[Probe] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.probes if p.required)


def run_checks(config: Config, *, now: datetime | None = None) -> HealthReport:
    report = HealthReport()
    locations = _LocationProbes(config)  # running while the rest is checked
    report.probes.append(_key_probe(config))
    report.probes.append(_database_probe(config))
    wal = _wal_probe(config, now or datetime.now(UTC))
    if wal is not None:
        report.probes.append(wal)
    catalog = _catalog_probes(config, now or datetime.now(UTC), locations)
    report.probes.extend(locations.probes())
    report.probes.extend(catalog)
    return report


def probe_locations(config: Config) -> Callable[[], dict[str, Probe]]:
    """Start every location's probe now; the call returned collects them by location name.

    For metrics and the admin dashboard: the probes run while the caller reads the catalog,
    and collecting waits no longer than ``BACKUP_CHECK_TIMEOUT`` in all, as ``check`` does.
    """
    probes = _LocationProbes(config)
    return lambda: {p.name.removeprefix("location "): p for p in probes.probes()}


def _key_probe(config: Config) -> Probe:
    try:
        ring = Keyring.from_strings(config.encryption_key, config.old_encryption_keys)
    except StrongroomError as exc:
        return Probe("key", False, str(exc))
    olds = len(ring.key_ids) - 1
    return Probe("key", True, f"primary key id {ring.primary_id}, {olds} older key(s)")


def _database_probe(config: Config) -> Probe:
    try:
        target = postgres.ConnInfo.parse(config.database_url)
        pre = postgres.preflight(target)
    except StrongroomError as exc:
        return Probe("database", False, str(exc))
    how = "bypasses RLS" if pre.bypasses_rls else "no RLS tables"
    return Probe(
        "database",
        True,
        f"{target}: PostgreSQL {pre.server_version}, {len(pre.tables)} tables, "
        f"role {pre.role} {how}",
    )


def _wal_probe(config: Config, now: datetime) -> Probe | None:
    """WAL archiving's health as the server sees it, when archiving is on (else one note)."""
    try:
        target = postgres.ConnInfo.parse(config.database_url)
        server = postgres.server_archiving(target, timeout=config.check_timeout)
        if server.archive_mode == "off":
            return Probe("wal archive", True, "archive_mode is off (docs/wal.md)", required=False)
        status = postgres.archiver_status(target, timeout=config.check_timeout)
    except StrongroomError:
        return None  # the database probe already says why
    ready = _ready_segments(config, server)
    probe = wal_archive_probe(status, server, ready, now, config.wal.max_age_seconds)
    behind = _missed(config)
    if behind:
        probe.detail += f"; behind: {behind} (strongroom heal --all back-fills them)"
    failed = uploader_failures(config)
    if failed:
        probe.detail += f"; {failed}"
    return probe


def uploader_failures(config: Config) -> str:
    """With ``BACKUP_WAL_ASYNC`` on: the files the background uploader could not push that no
    call of the archiver has pushed since (where the spool is readable)."""
    if not (config.wal.async_push and config.wal.spool_dir):
        return ""
    try:
        names = Spool(config.wal.spool_dir).failed_names()
    except OSError:
        return ""
    if not names:
        return ""
    return (
        f"the background uploader could not push {len(names)} file(s) (oldest {names[0]}); "
        "the archiver's own calls push them and say why, as does uploader.log in the spool"
    )


def _missed(config: Config) -> str:
    """Files optional locations missed, as the spool recorded them (where it is readable)."""
    if not config.wal.spool_dir:
        return ""
    spool = Spool(config.wal.spool_dir)
    try:
        counts = {spec.name: len(spool.missed(spec.name)) for spec in config.locations}
    except OSError:
        return ""
    return ", ".join(f"{name} lacks {n} file(s)" for name, n in counts.items() if n)


def _ready_segments(config: Config, server: postgres.ServerArchiving) -> list[str] | None:
    """Files PostgreSQL has marked ready and not yet archived, oldest first (``None``: the data
    directory cannot be read here; ``STRONGROOM_PGDATA`` names it)."""
    where = config.wal.pgdata or server.data_directory
    folder = Path(where) / "pg_wal" / "archive_status" if where else None
    if folder is None or not os.access(folder, os.R_OK | os.X_OK):
        return None
    try:
        return sorted(p.name[: -len(".ready")] for p in folder.glob("*.ready"))
    except OSError:
        return None


def wal_archive_probe(
    status: postgres.ArchiverStatus,
    server: postgres.ServerArchiving,
    ready: list[str] | None,
    now: datetime,
    max_age: float,
) -> Probe:
    """One line: the last archived segment and its age, failures, what waits; FAIL when the
    last archive is older than ``max_age`` seconds while WAL waits to be archived."""
    parts: list[str] = []
    age: float | None = None
    if status.last_archived_wal and status.last_archived_time:
        age = (now - status.last_archived_time).total_seconds()
        parts.append(f"last archived {status.last_archived_wal} {age:.0f} s ago")
    else:
        parts.append("nothing archived yet")
    failing = status.last_failed_time is not None and (
        status.last_archived_time is None or status.last_failed_time > status.last_archived_time
    )
    failed = f"{status.failed_count} failed"
    parts.append(f"{failed}, failing at {status.last_failed_wal}" if failing else failed)
    if ready is None:
        parts.append("waiting segments unknown (set STRONGROOM_PGDATA where pg_wal is readable)")
        waiting = failing or _behind(status.last_archived_wal, server)
    elif ready:
        parts.append(f"{len(ready)} waiting, oldest {ready[0]}")
        waiting = True
    else:
        parts.append("none waiting")
        waiting = False
    ok = not waiting or (age is not None and age <= max_age)
    if not ok:
        parts.append(f"older than BACKUP_WAL_MAX_AGE_SECONDS ({max_age:g} s)")
    return Probe("wal archive", ok, ", ".join(parts))


def _behind(last: str | None, server: postgres.ServerArchiving) -> bool:
    """Whether a completed segment is not archived yet, as far as the server's counters tell."""
    current, size = server.current_wal, server.wal_segment_size
    if not current:
        return False
    if not last:
        return True
    if last[:8] != current[:8] or size not in wal.SEGMENT_SIZES:
        return False
    try:
        return wal.segment_number(current, size) > wal.segment_number(last[:24], size) + 1
    except ValueError:  # the last archived file was a history file or a backup label
        return False


class _LocationProbes:
    """Every location's ``check()`` started at once; read back under one shared deadline."""

    def __init__(self, config: Config) -> None:
        self.specs = config.locations
        self.seconds = config.check_timeout
        self.until = time.monotonic() + self.seconds
        self.locations, self.unconfigured = build_locations(config.locations)
        self.pending: dict[str, Pending[CheckResult]] = {
            loc.name: Pending(loc.check, f"strongroom-check-{loc.name}") for loc in self.locations
        }

    def answered(self, name: str) -> bool:
        """Whether ``name`` answered its probe in time (waiting up to the deadline)."""
        return self.pending[name].wait(self.until)

    def probes(self) -> list[Probe]:
        probes = [
            Probe(f"location {spec.name}", False, self.unconfigured[spec.name], spec.required)
            for spec in self.specs
            if spec.name in self.unconfigured
        ]
        probes.extend(self._probe(loc) for loc in self.locations)
        return probes

    def _probe(self, loc: Location) -> Probe:
        try:
            result = (
                self.pending[loc.name].result(self.seconds) if self.answered(loc.name) else None
            )
        except StrongroomError as exc:
            return Probe(f"location {loc.name}", False, str(exc), loc.required)
        if result is None:
            detail = f"{loc.describe()}: no answer in {self.seconds:g} s (BACKUP_CHECK_TIMEOUT)"
            return Probe(f"location {loc.name}", False, detail, loc.required)
        ok = result.reachable and result.writable
        return Probe(
            f"location {loc.name}", ok, f"{loc.describe()}: {_state(result)}", loc.required
        )


def _state(result: CheckResult) -> str:
    """Reachable (an authenticated list worked) and writable, as separate facts."""
    if result.reachable and result.writable:
        return "reachable and writable"
    if result.reachable:
        return f"reachable but not writable: {result.detail}"
    return result.detail


def _manifests_in(loc: Location) -> int:
    return sum(1 for info in loc.list("") if info.key.endswith(MANIFEST_SUFFIX))


def _catalog_probe(config: Config, locations: _LocationProbes) -> Probe:
    """Open the catalog (opening may have failed before the command ran) and check its file."""
    try:
        bootstrap.ensure_django(config.catalog_url)
        state = bootstrap.inspect_catalog()
    except StrongroomError as exc:
        return Probe("catalog", False, str(exc))
    if state.backups == 0:
        orphaned = _orphaned_manifests(state.where, locations)
        if orphaned is not None:
            return orphaned
    return Probe("catalog", True, f"{state.where}: {state.checked}, {state.backups} backup(s)")


def _orphaned_manifests(where: str, locations: _LocationProbes) -> Probe | None:
    """An empty catalog while a location holds manifests: the catalog was lost or replaced.

    Only locations that answered their probe are listed, within what is left of the deadline.
    """
    for loc in locations.locations:
        if not locations.answered(loc.name):
            continue  # its location probe says "no answer"
        try:
            count = deadline.within(
                max(0.0, locations.until - time.monotonic()), partial(_manifests_in, loc)
            )
        except (StrongroomError, deadline.NoAnswer):
            continue  # its location probe already says why
        if count:
            return Probe(
                "catalog",
                False,
                f"the catalog {where} is empty while {loc.name} holds {count} backup(s): "
                f"run strongroom catalog rebuild --from {loc.name}",
                required=False,
            )
    return None


def _catalog_probes(config: Config, now: datetime, locations: _LocationProbes) -> list[Probe]:
    catalog = _catalog_probe(config, locations)
    if catalog.required and not catalog.ok:
        return [catalog]  # nothing below can be read, let alone trusted
    probes = [catalog]
    try:
        stale = reap_dead_runs(config)
    except StrongroomError:
        stale = []  # the database probe already says why it cannot be reached
    if stale:
        probes.append(
            Probe(
                "stale runs",
                True,
                f"marked {len(stale)} dead run(s) FAILED: {', '.join(stale)}",
                False,
            )
        )
    probes.append(_drill_probe(config, now))
    try:
        database = postgres.ConnInfo.parse(config.database_url).dbname
    except StrongroomError:
        database = None
    limit = timedelta(hours=config.stale_after_hours)
    try:
        newest = store.latest_backup(database=database)
    except BackupNotFound:
        probes.append(Probe("freshness", False, f"no successful backup of {database} yet"))
        return probes
    age = now - (newest.finished_at or newest.created_at)
    hours = age.total_seconds() / 3600
    ok = age <= limit
    probes.append(
        Probe(
            "freshness",
            ok,
            f"newest good backup {newest.id} ({newest.status}) is {hours:.1f} h old"
            + ("" if ok else f", older than the {config.stale_after_hours:g} h limit"),
        )
    )
    return probes


def _drill_probe(config: Config, now: datetime) -> Probe:
    state = drill_state(config, now)
    return Probe("drill", state.ok, state.detail)
