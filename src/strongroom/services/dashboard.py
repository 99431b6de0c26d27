"""The admin's dashboard: per database, where its backups stand and what ``check`` says.

The catalog's facts come from :mod:`strongroom.services.overview`; the location health and
the verdict from :func:`strongroom.services.health.run_checks`, run in the background under a
deadline of its own, so a page view never waits longer than ``BACKUP_CHECK_TIMEOUT`` plus a
margin, even when the database server does not answer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.deadline import Pending
from strongroom.errors import StrongroomError
from strongroom.services import health
from strongroom.services.overview import Archiver, Overview, gather, missing_wal

if TYPE_CHECKING:
    from strongroom.models import Backup, BackupEvent, Drill

#: The kinds a database's section always shows, "none yet" included.
KINDS = ("full", "tenant", "base")
#: Seconds ``check`` may take beyond ``BACKUP_CHECK_TIMEOUT`` (its database and catalog probes).
CHECK_MARGIN = 10.0


@dataclass
class KindState:
    """The newest run of one kind of backup, and the newest good one when that differs."""

    kind: str
    newest: Backup | None = None
    newest_good: Backup | None = None


@dataclass
class LocationRow:
    """One location in one database's section: its copies by status, and its probe."""

    name: str
    copies: dict[str, int]
    probe: health.Probe | None = None


@dataclass
class DatabaseBoard:
    name: str
    kinds: list[KindState]
    #: location -> copy status -> copies (pruned ones left out)
    copies: dict[str, dict[str, int]]
    locations: list[LocationRow] = field(default_factory=list)
    drill: Drill | None = None
    passed_drill: Drill | None = None
    archiver: Archiver | None = None


@dataclass
class Board:
    databases: list[DatabaseBoard]
    check: health.HealthReport | None
    check_problem: str = ""
    wal_verify: BackupEvent | None = None
    missing_wal: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def locations(self) -> list[health.Probe]:
        probes = self.check.probes if self.check is not None else []
        return [p for p in probes if p.name.startswith("location ")]


def build(config: Config, *, database: str | None = None) -> Board:
    """Everything the page shows, each outside look bounded."""
    started = time.monotonic()
    seconds = config.check_timeout + CHECK_MARGIN
    check = Pending(lambda: _run_checks(config), "strongroom-dashboard-check")
    facts = gather(config, probe=False, database=database)
    board = Board(
        databases=[_section(facts, name) for name in _names(facts, database)],
        check=None,
        wal_verify=facts.wal_verify,
        missing_wal=missing_wal(facts.wal_verify),
    )
    if not check.wait(started + seconds):
        board.check_problem = f"check did not finish in {seconds:g} s"
    else:
        try:
            board.check = check.result(seconds)
        except StrongroomError as exc:
            board.check_problem = f"check could not run: {exc}"
    probes = {p.name.removeprefix("location "): p for p in board.locations}
    configured = [spec.name for spec in config.locations]
    for section in board.databases:
        names = configured + [n for n in section.copies if n not in configured]
        section.locations = [
            LocationRow(n, section.copies.get(n, {}), probes.get(n)) for n in names
        ]
    board.seconds = time.monotonic() - started
    return board


def _run_checks(config: Config) -> health.HealthReport:
    """``check`` in its own thread, closing that thread's catalog connection afterwards."""
    try:
        return health.run_checks(config)
    finally:
        store.release_connections()


def _names(facts: Overview, database: str | None) -> list[str]:
    """The catalog's databases, and the configured one even before its first backup."""
    names = list(facts.databases)
    own = facts.archiver.database if facts.archiver is not None else None
    if own and own not in names and database in (None, own):
        names.append(own)
    return names


def _section(facts: Overview, name: str) -> DatabaseBoard:
    newest = {
        store.TYPE_TO_KIND.get(b.backup_type): b for b in facts.newest_runs if b.database == name
    }
    good = {
        store.TYPE_TO_KIND.get(b.backup_type): b for b in facts.newest_good if b.database == name
    }
    copies: dict[str, dict[str, int]] = defaultdict(dict)
    for db, _kind, location, status, count in facts.copies:
        if db == name:
            copies[location][status] = copies[location].get(status, 0) + count
    drills = [d for d in facts.newest_drills if d.database == name]
    passed = [d for d in facts.passed_drills if d.database == name]
    archiver = facts.archiver
    return DatabaseBoard(
        name=name,
        kinds=[KindState(k, newest.get(k), good.get(k)) for k in KINDS],
        copies=dict(sorted(copies.items())),
        drill=max(drills, key=lambda d: d.started_at, default=None),
        passed_drill=max(passed, key=lambda d: d.started_at, default=None),
        archiver=archiver if archiver is not None and archiver.database == name else None,
    )
