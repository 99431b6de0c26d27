"""Retention per location: a pure policy that says, for every stored copy, keep or delete and why.

Like Barman's ``retention_policies.py`` it returns a status per item and deletes nothing; the
prune service applies the plan. The clock is injected, so a test can move it 400 days forward.

Inputs are plain :class:`CopyFacts` (one row per copy of a backup in a location) and the
retention of each location in days. Rules, applied per database (and per ``series`` within it:
a tenant's backups form their own chain beside the full backups):

1. **Settled copies only.** ``DELETED`` copies are ignored (no decision). A copy of a backup that
   is still running (backup status in :data:`strongroom.core.status.RUNNING`) is kept:
   ``IN_PROGRESS``.
2. **Unknown location.** A copy in a location with no configured retention is kept
   (``UNKNOWN_LOCATION``): we cannot judge it, and it also counts as *not expired* below, so it
   never lets the other copies of its backup expire "everywhere".
3. **Expiry.** A copy is *expired* when its backup's ``created_at`` is strictly older than
   ``now - retention_days`` of its location (for a series kind with its own retention, such as
   ``tenant``, the days that kind has there; a backup exactly N days old is still kept). A copy
   that is not expired is kept: ``WITHIN_RETENTION``. Nothing within retention is ever deleted.
4. **Protected backups.** Every copy of these backups is kept, in every location, whatever its
   age (``NEWEST_VERIFIED``):

   - the newest backup of the database whose status is ``VERIFIED``, and
   - the newest backup of the database holding at least one ``VERIFIED`` copy (the same backup
     in the usual case; a backup is "verified" by either kind of evidence);
   - when the database has neither, the newest backup that still has a ``STORED`` copy
     (``NEWEST_RESTORABLE``), so a database whose backups stopped or were never verified keeps
     its last restorable candidate instead of being emptied by the clock.

   "Newest" orders by ``created_at``, then backup id.
5. **Data copies.** ``STORED``, ``VERIFIED``, ``CORRUPT`` and ``MISSING`` copies *hold* their
   backup (a corrupt or missing copy is repaired by heal, so it still counts
   as a place the backup lives). For an unprotected backup let *E* be its expired data copies and
   *N* the others. An expired data copy is deleted when either

   - (c1) some copy in *N* (kept, since it is within retention) is ``VERIFIED``: reason
     ``EXPIRED_VERIFIED_ELSEWHERE``; or
   - (c2) *N* is empty: the backup is past retention in every location that holds it, so all
     its copies go together (otherwise an expired backup would live forever): reason
     ``EXPIRED_EVERYWHERE``. This deletes copies with no verified copy elsewhere, on purpose:
     retention must also delete, and a backup never verified anywhere would otherwise outlive
     every retention the operator set; the newest good backup is safe by rule 4, which wins.

   Otherwise it is kept: ``NO_VERIFIED_ELSEWHERE`` (retention yields to safety until another
   location's copy is verified or expires too). An expired copy is never kept just to justify
   deleting another expired copy: the evidence in (c1) must be within its own retention.
6. **Failed copies.** ``FAILED`` copies (and ``PENDING`` ones of a backup that is no longer
   running) hold no restorable data. They are not counted as holding the backup in rule 5; once
   expired at their location they are deleted to tidy any leftover object and the catalog row
   (``FAILED_EXPIRED``), unless the backup is protected (rule 4 wins).

Consequences the tests check on generated histories: nothing within retention is deleted; no
copy of a protected backup is deleted; every deleted data copy either leaves a kept ``VERIFIED``
copy of its backup in another location or goes together with all data copies of its backup,
each expired; applying a plan and evaluating again at the same instant deletes nothing more.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from strongroom.core.status import DATA_COPY, RUNNING, BackupStatus, CopyStatus

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The real clock (UTC); tests inject their own."""
    return datetime.now(UTC)


class Action(enum.StrEnum):
    KEEP = "KEEP"
    DELETE = "DELETE"


class Reason(enum.StrEnum):
    """Why a copy is kept or deleted; the name is stable (catalog events, JSON output)."""

    IN_PROGRESS = "IN_PROGRESS"
    UNKNOWN_LOCATION = "UNKNOWN_LOCATION"
    WITHIN_RETENTION = "WITHIN_RETENTION"
    NEWEST_VERIFIED = "NEWEST_VERIFIED"
    NEWEST_RESTORABLE = "NEWEST_RESTORABLE"
    NO_VERIFIED_ELSEWHERE = "NO_VERIFIED_ELSEWHERE"
    EXPIRED_VERIFIED_ELSEWHERE = "EXPIRED_VERIFIED_ELSEWHERE"
    EXPIRED_EVERYWHERE = "EXPIRED_EVERYWHERE"
    FAILED_EXPIRED = "FAILED_EXPIRED"

    @property
    def action(self) -> Action:
        deleting = {
            Reason.EXPIRED_VERIFIED_ELSEWHERE,
            Reason.EXPIRED_EVERYWHERE,
            Reason.FAILED_EXPIRED,
        }
        return Action.DELETE if self in deleting else Action.KEEP


@dataclass(frozen=True)
class CopyFacts:
    """What the policy needs to know about one copy of a backup in one location."""

    backup_id: str
    database: str
    location: str
    created_at: datetime
    backup_status: str
    copy_status: str
    #: Independent chains of one database (a tenant's backups beside the full ones) are
    #: protected separately by rule 4; empty for the full backups.
    series: str = ""

    @property
    def holds_data(self) -> bool:
        return self.copy_status in DATA_COPY


@dataclass(frozen=True)
class Decision:
    """Keep or delete one copy, with the rule that decided it and a sentence for humans."""

    copy: CopyFacts
    reason: Reason
    detail: str

    @property
    def action(self) -> Action:
        return self.reason.action

    @property
    def delete(self) -> bool:
        return self.action is Action.DELETE


@dataclass(frozen=True)
class RetentionPlan:
    """Every decision of one evaluation, in input order, and the instant it was made for."""

    now: datetime
    decisions: tuple[Decision, ...]
    protected: frozenset[str] = field(default_factory=frozenset)

    @property
    def to_delete(self) -> list[Decision]:
        return [d for d in self.decisions if d.delete]

    @property
    def to_keep(self) -> list[Decision]:
        return [d for d in self.decisions if not d.delete]

    def for_location(self, location: str) -> list[Decision]:
        return [d for d in self.decisions if d.copy.location == location]

    def decision(self, backup_id: str, location: str) -> Decision:
        for d in self.decisions:
            if d.copy.backup_id == backup_id and d.copy.location == location:
                return d
        raise KeyError(f"no decision for backup {backup_id} in {location}")


@dataclass(frozen=True)
class RetentionPolicy:
    """Retention days per location name plus a clock; ``evaluate`` is pure given the clock."""

    retention_days: Mapping[str, int]
    clock: Clock = system_clock
    #: Per series kind (``tenant`` for ``tenant:<id>``): its own days per location.
    series_retention_days: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def evaluate(self, copies: Iterable[CopyFacts]) -> RetentionPlan:
        return evaluate(copies, self.retention_days, self.clock(), self.series_retention_days)


def evaluate(
    copies: Iterable[CopyFacts],
    retention_days: Mapping[str, int],
    now: datetime,
    series_retention_days: Mapping[str, Mapping[str, int]] | None = None,
) -> RetentionPlan:
    """Decide every non-deleted copy (see the module docstring for the rules)."""
    if now.tzinfo is None:
        raise ValueError("the retention clock must return an aware datetime (UTC)")
    live = [c for c in copies if c.copy_status != CopyStatus.DELETED]
    by_backup: dict[str, list[CopyFacts]] = defaultdict(list)
    for c in live:
        by_backup[c.backup_id].append(c)
    protected = _protected(live)
    reasons: dict[int, tuple[Reason, str]] = {}
    for backup_id, group in by_backup.items():
        days = _days_of_series(group[0].series, retention_days, series_retention_days or {})
        judged = _judge_backup(group, protected.get(backup_id), days, now)
        for c, verdict in zip(group, judged, strict=True):
            reasons[id(c)] = verdict
    decisions = tuple(Decision(c, *reasons[id(c)]) for c in live)
    return RetentionPlan(now, decisions, frozenset(protected))


def _days_of_series(
    series: str, default: Mapping[str, int], by_kind: Mapping[str, Mapping[str, int]]
) -> Mapping[str, int]:
    """The retention of a series' kind (``tenant:<id>`` -> ``tenant``), over the default."""
    own = by_kind.get(series.split(":", 1)[0])
    return {**default, **own} if own else default


def _newest(copies: Iterable[CopyFacts]) -> CopyFacts | None:
    return max(copies, key=lambda c: (c.created_at, c.backup_id), default=None)


def _protected(live: Sequence[CopyFacts]) -> dict[str, Reason]:
    """Backup ids that rule 4 protects, per database (and series)."""
    by_database: dict[tuple[str, str], list[CopyFacts]] = defaultdict(list)
    for c in live:
        by_database[(c.database, c.series)].append(c)
    protected: dict[str, Reason] = {}
    for group in by_database.values():
        verified = [
            _newest(c for c in group if c.backup_status == BackupStatus.VERIFIED),
            _newest(c for c in group if c.copy_status == CopyStatus.VERIFIED),
        ]
        found = [c for c in verified if c is not None]
        for c in found:
            protected[c.backup_id] = Reason.NEWEST_VERIFIED
        if not found:
            restorable = _newest(c for c in group if c.copy_status == CopyStatus.STORED)
            if restorable is not None:
                protected[restorable.backup_id] = Reason.NEWEST_RESTORABLE
    return protected


def _age(c: CopyFacts, now: datetime) -> str:
    days = (now - c.created_at) / timedelta(days=1)
    return f"{days:.1f} days old"


def _judge_backup(
    group: list[CopyFacts],
    protection: Reason | None,
    retention_days: Mapping[str, int],
    now: datetime,
) -> list[tuple[Reason, str]]:
    """Rules 1-6 for the copies of one backup, in the order given."""

    def expired(c: CopyFacts) -> bool:
        days = retention_days.get(c.location)
        return days is not None and c.created_at < now - timedelta(days=days)

    running = any(c.backup_status in RUNNING for c in group)
    holding = [c for c in group if c.holds_data]
    unexpired = [c for c in holding if not expired(c)]
    verified_kept = [c.location for c in unexpired if c.copy_status == CopyStatus.VERIFIED]
    out: list[tuple[Reason, str]] = []
    for c in group:
        days = retention_days.get(c.location)
        if running:
            out.append((Reason.IN_PROGRESS, "the backup is still running"))
        elif days is None:
            out.append((Reason.UNKNOWN_LOCATION, f"no retention configured for {c.location}"))
        elif not expired(c):
            out.append((Reason.WITHIN_RETENTION, f"{_age(c, now)}, {c.location} keeps {days}"))
        elif protection is not None:
            what = "verified" if protection is Reason.NEWEST_VERIFIED else "restorable"
            out.append((protection, f"newest {what} backup of {c.database}"))
        elif not c.holds_data:
            out.append((Reason.FAILED_EXPIRED, f"{c.copy_status} copy past {days} days"))
        elif verified_kept:
            where = ", ".join(sorted(verified_kept))
            out.append(
                (Reason.EXPIRED_VERIFIED_ELSEWHERE, f"past {days} days, verified in {where}")
            )
        elif not unexpired:
            out.append((Reason.EXPIRED_EVERYWHERE, f"past retention everywhere ({days} days here)"))
        else:
            where = ", ".join(sorted(u.location for u in unexpired))
            detail = f"past {days} days, but {where} holds no verified copy yet"
            out.append((Reason.NO_VERIFIED_ELSEWHERE, detail))
    return out
