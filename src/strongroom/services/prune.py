"""Prune: apply the retention policy to every location, crash-safely.

The policy (:mod:`strongroom.core.retention`) decides; this module only carries the decisions out.
Deleting one copy touches three things that cannot share a transaction: the manifest, the object
and the catalog row. They go together or not at all by *rolling forward*:

1. an intent is recorded in the catalog first (event ``prune-started`` on the copy);
2. the manifest is deleted (from then on the copy is never listed as restorable from storage);
3. the object is deleted;
4. the copy is marked ``DELETED`` and event ``pruned`` recorded.

Deletes are idempotent, so a run that dies anywhere between 1 and 4 is finished by the next prune
(``resume``) before anything new is decided: the copy ends ``DELETED`` with both objects gone,
exactly as if the first run had not died. Roll-forward (never roll-back) is right because the
decision was safe when it was made, and the manifest may already be gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.retention import (
    Clock,
    CopyFacts,
    Decision,
    RetentionPlan,
    RetentionPolicy,
    system_clock,
)
from strongroom.core.storage.base import Location
from strongroom.errors import BackupNotFound, ConfigError, StrongroomError
from strongroom.services.runtime import build_locations
from strongroom.services.wal_prune import WalPruneLocation, WalPruneReport, prune_wal

log = logging.getLogger("strongroom.prune")

INTENT_EVENT = "prune-started"
DONE_EVENT = "pruned"


@dataclass
class PrunedCopy:
    backup_id: str
    location: str
    reason: str
    detail: str
    ok: bool = True
    error: str = ""


@dataclass
class PruneReport:
    """What a prune decided and did; ``dry_run`` reports without touching anything."""

    now: datetime
    dry_run: bool
    plan: RetentionPlan
    deleted: list[PrunedCopy] = field(default_factory=list)
    resumed: list[PrunedCopy] = field(default_factory=list)
    #: WAL retention (``None`` when not run: one database asked for, or no key to read with).
    wal: WalPruneReport | None = None

    @property
    def failures(self) -> list[PrunedCopy]:
        return [c for c in (*self.resumed, *self.deleted) if not c.ok]

    def counts(self) -> dict[str, int]:
        """Each a count of real copies: deleted (or to delete), failed, finished, kept.

        Deletions this run and interrupted ones finished first are counted apart, so no count
        is ever derived by subtracting one list from another.
        """
        return {
            "deleted": sum(c.ok for c in self.deleted),
            "failed": sum(not c.ok for c in self.deleted),
            "finished": sum(c.ok for c in self.resumed),
            "unfinished": sum(not c.ok for c in self.resumed),
            "kept": len(self.plan.to_keep),
        }

    @property
    def ok(self) -> bool:
        return not self.failures and (self.wal is None or self.wal.ok)

    def problems(self) -> str:
        copies = [f"{c.backup_id} in {c.location}: {c.error}" for c in self.failures]
        wal = [self.wal.problems()] if self.wal is not None and not self.wal.ok else []
        return "; ".join([*copies, *wal])


def retention_policy(config: Config, clock: Clock = system_clock) -> RetentionPolicy:
    """The configured retention (``BACKUP_LOCAL_RETENTION_DAYS``, ``R2_/B2_RETENTION_DAYS``),
    and tenant backups' own (``BACKUP_LOCAL_TENANT_RETENTION_DAYS``, ``R2_/B2_TENANT_...``)."""
    tenant = {
        s.name: s.tenant_retention_days
        for s in config.locations
        if s.tenant_retention_days is not None
    }
    return RetentionPolicy(
        {s.name: s.retention_days for s in config.locations}, clock, {"tenant": tenant}
    )


def catalog_facts(database: str | None = None) -> list[CopyFacts]:
    """Every copy in the catalog as the policy sees it."""
    return [
        CopyFacts(
            backup_id=row.backup_id,
            database=row.database,
            location=row.location,
            created_at=row.created_at,
            backup_status=row.backup_status,
            copy_status=row.copy_status,
            series=row.series,
        )
        for row in store.copy_facts(database)
    ]


def prune_backups(
    config: Config,
    *,
    dry_run: bool = False,
    clock: Clock = system_clock,
    database: str | None = None,
) -> PruneReport:
    """Finish interrupted deletions, then delete what the retention policy says may go.

    The body of the daily ``prune_backups`` task and of ``strongroom prune [--dry-run]``.
    """
    locations, unconfigured = build_locations(config.locations)
    by_name = {loc.name: loc for loc in locations}
    resumed = [] if dry_run else resume_interrupted(by_name, unconfigured)
    plan = retention_policy(config, clock).evaluate(catalog_facts(database))
    report = PruneReport(plan.now, dry_run, plan, resumed=resumed)
    if dry_run:
        report.deleted = [_pruned(d) for d in plan.to_delete]
    else:
        for decision in plan.to_delete:
            report.deleted.append(_delete(decision, by_name, unconfigured))
    if database is None and config.encryption_key:
        report.wal = _prune_wal(config, dry_run)
    return report


def _prune_wal(config: Config, dry_run: bool) -> WalPruneReport:
    """WAL goes after the base backups' copies, so it is judged by the ones still kept."""
    try:
        return prune_wal(config, dry_run=dry_run)
    except StrongroomError as exc:
        failed = WalPruneReport(dry_run)
        failed.locations.append(WalPruneLocation("", "", error=str(exc)))
        return failed


def _pruned(d: Decision, error: str = "") -> PrunedCopy:
    return PrunedCopy(d.copy.backup_id, d.copy.location, d.reason.value, d.detail, not error, error)


def _location(name: str, by_name: dict[str, Location], unconfigured: dict[str, str]) -> Location:
    if name in by_name:
        return by_name[name]
    raise ConfigError(unconfigured.get(name) or f"location {name!r} is no longer configured")


def _delete(
    decision: Decision, by_name: dict[str, Location], unconfigured: dict[str, str]
) -> PrunedCopy:
    c = decision.copy
    message = f"{decision.reason.value}: {decision.detail}"
    try:
        loc = _location(c.location, by_name, unconfigured)
        store.record_event(c.backup_id, INTENT_EVENT, location=c.location, message=message)
        _finish(loc, c.backup_id, message)
    except StrongroomError as exc:
        log.warning("could not prune %s from %s: %s", c.backup_id, c.location, exc)
        return _pruned(decision, str(exc) or type(exc).__name__)
    return _pruned(decision)


def _finish(loc: Location, backup_id: str, message: str) -> None:
    """Steps 2-4: manifest, object, catalog. Safe to repeat after a crash at any point."""
    copy = store.get_copy(backup_id, loc.name)
    if copy.manifest_key:
        loc.delete(copy.manifest_key)
    if copy.key:
        loc.delete(copy.key)
    store.mark_copy_deleted(backup_id, loc.name, event=DONE_EVENT, message=message)


def pending_deletions() -> list[tuple[str, str, str]]:
    """(backup id, location, message) of every copy whose prune started but never finished."""
    return store.pending_copy_events(INTENT_EVENT, DONE_EVENT)


def resume_interrupted(
    by_name: dict[str, Location], unconfigured: dict[str, str]
) -> list[PrunedCopy]:
    """Roll forward every deletion a dead prune left half-done."""
    done: list[PrunedCopy] = []
    for backup_id, location, message in pending_deletions():
        entry = PrunedCopy(backup_id, location, "RESUMED", message)
        try:
            _finish(_location(location, by_name, unconfigured), backup_id, f"resumed: {message}")
        except BackupNotFound:  # the row went away (catalog rebuilt or edited): nothing to finish
            store.record_event(
                backup_id, DONE_EVENT, location=location, message="copy not in catalog"
            )
        except StrongroomError as exc:
            entry.ok, entry.error = False, str(exc) or type(exc).__name__
        done.append(entry)
    return done
