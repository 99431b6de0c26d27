"""Retention for WAL: what no kept base backup needs goes, per location.

A segment is needed by every base backup that starts at or before it (replay runs from a base
backup's start to the recovery target), so in each location WAL older than the start of the
oldest base backup kept *there* is of no use and is deleted; history files are kept (they are
tiny and needed to follow timelines). With no base backup in a location, every segment is
kept: nothing says which ones a future base backup will not need. A base backup manifest
that does not authenticate stops pruning in that location: what it needs is unknown.

Deleting a file removes its manifest first, then its object (the manifest's absence already
means "not in this location"), so a run that dies half-way leaves an object without manifest
that the next run deletes. Needs no catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from strongroom.config import Config
from strongroom.core import wal
from strongroom.core.storage.base import Location
from strongroom.errors import StrongroomError
from strongroom.services import wal as walstore
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.wal_prune")


@dataclass
class WalPruneLocation:
    """One cluster's WAL in one location: what was (or would be) deleted, and why."""

    scope: str
    location: str
    #: The first segment kept (the oldest kept base backup's start), or ``""``: all kept.
    keep_from: str = ""
    reason: str = ""
    deleted: list[str] = field(default_factory=list)
    kept: int = 0
    error: str = ""


@dataclass
class WalPruneReport:
    dry_run: bool
    locations: list[WalPruneLocation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.error for p in self.locations)

    @property
    def deleted(self) -> int:
        return sum(len(p.deleted) for p in self.locations)

    def problems(self) -> str:
        return "; ".join(f"WAL in {p.location}: {p.error}" for p in self.locations if p.error)


def prune_wal(config: Config, *, dry_run: bool = False) -> WalPruneReport:
    """Delete, in every location, the WAL no base backup kept there needs."""
    runtime = Runtime.build(config)
    report = WalPruneReport(dry_run)
    for scope in walstore.discover_scopes(runtime.locations):
        for loc in runtime.locations:
            report.locations.append(_prune_location(runtime, loc, scope, dry_run))
    return report


def _prune_location(runtime: Runtime, loc: Location, scope: str, dry_run: bool) -> WalPruneLocation:
    result = WalPruneLocation(scope, loc.name)
    try:
        bases = walstore.base_manifests(runtime, loc, scope)
        if not bases:
            result.reason = "no base backup here: every segment is kept"
            result.kept = len(walstore.list_archive(loc, scope))
            return result
        size = walstore.base_segment_size(bases) or wal.DEFAULT_SEGMENT_SIZE
        starts = [walstore.base_start(b, size) for b in bases]
        if any(s is None for s in starts):
            result.error = "a base backup's manifest has no start segment: nothing pruned"
            return result
        floor = min(s for s in starts if s is not None)
        oldest = next(b for b, s in zip(bases, starts, strict=True) if s == floor)
        result.keep_from = wal.segment_name(int(oldest.extra.get("timeline", 1)), floor, size)
        result.reason = f"older than base backup {oldest.id}, the oldest kept here"
        for name, entry in sorted(walstore.list_archive(loc, scope).items()):
            if not _older(name, floor, size):
                result.kept += 1
                continue
            result.deleted.append(name)
            if not dry_run:
                # the manifest first: from then on the file is not "in" this location
                loc.delete(walstore.manifest_key(scope, name))
                if entry.object_key:
                    loc.delete(entry.object_key)
    except StrongroomError as exc:
        result.error = str(exc)
        log.warning("pruning WAL in %s: %s", loc.name, exc)
    return result


def _older(name: str, floor: int, size: int) -> bool:
    """A segment (or its partial or backup label) before ``floor``; history files never."""
    parsed = wal.parse_name(name)
    if parsed.kind == "history":
        return False
    try:
        return wal.segment_number(parsed.segment, size) < floor
    except ValueError:
        return False
