"""Heal: re-create missing or corrupt copies from a verified copy elsewhere, without re-dumping.

For each backup, a copy *needs healing* in a configured location when the catalog says it is
``MISSING``, ``CORRUPT`` or ``FAILED`` (a partial run), when a catalog row is absent, or when its
object or manifest is gone from storage (a cheap ``stat``; ``deep`` re-reads every copy instead).
Copies are left alone when they are ``DELETED`` (pruned on purpose), when a prune of them is
pending, when the backup is still running, or when the copy would be past its location's
retention (prune would only delete it again).

A source is the first other copy, in configured order, that passes a full ``check_copy``
(manifest authenticated, SHA-256 and decrypted size match). Its stored bytes stream from
``open_reader`` to the target's atomic ``open_writer`` through SHA-256; the upload is committed
only if the digest matches the manifest, then the source's manifest is written last (as a backup
does), and the new copy is verified by a full read-back before the catalog marks it
``VERIFIED`` and records a ``healed`` event naming the source.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.retention import Clock, system_clock
from strongroom.core.status import (
    BROKEN_COPY,
    DATA_COPY,
    RUNNING,
    SETTLED_AWAY,
    USABLE_COPY,
    BackupStatus,
    CopyStatus,
)
from strongroom.core.storage.base import Location
from strongroom.errors import IntegrityError, ObjectNotFound, StorageError, StrongroomError
from strongroom.services.prune import pending_deletions
from strongroom.services.runtime import Runtime
from strongroom.services.verify import UNREACHABLE, CopyCheck, absent_copies, check_copy
from strongroom.services.wal_heal import WalHealReport, heal_wal

log = logging.getLogger("strongroom.heal")

CHUNK_SIZE = 1 << 20
HEALED_EVENT = "healed"


@dataclass
class Repair:
    """One copy that needed healing, and what became of it."""

    backup_id: str
    location: str
    problem: str
    source: str = ""
    ok: bool = False
    detail: str = ""


@dataclass
class HealReport:
    checked: int = 0
    repairs: list[Repair] = field(default_factory=list)
    #: WAL files back-filled (``None`` when one backup was asked for).
    wal: WalHealReport | None = None

    @property
    def healed(self) -> list[Repair]:
        return [r for r in self.repairs if r.ok]

    @property
    def failures(self) -> list[Repair]:
        return [r for r in self.repairs if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures and (self.wal is None or self.wal.ok)

    def problems(self) -> str:
        copies = [f"{r.backup_id} in {r.location}: {r.detail}" for r in self.failures]
        wal = [self.wal.problems()] if self.wal is not None and not self.wal.ok else []
        return "; ".join([*copies, *wal])


def heal_backups(
    config: Config,
    backup_id: str | None = None,
    *,
    deep: bool = False,
    clock: Clock = system_clock,
) -> HealReport:
    """Heal one backup, or every backup in the catalog that has data when ``backup_id`` is None.

    The body of the scheduled ``heal_backups`` task and of ``strongroom heal [ID|--all]``.
    """
    runtime = Runtime.build(config)
    if backup_id:
        store.get_backup(backup_id)  # an unknown id is the operator's error: BackupNotFound
    ids = [backup_id] if backup_id else store.healable_backup_ids()
    pending = {(b, loc) for b, loc, _ in pending_deletions()}
    report = HealReport()
    for bid in ids:
        report.checked += 1
        try:
            report.repairs.extend(_BackupHeal(runtime, bid, deep, clock(), pending).run())
        except StrongroomError as exc:  # the backup vanished from the catalog mid-run
            report.repairs.append(Repair(bid, "", "unreadable", detail=str(exc)))
    if backup_id is None:
        report.wal = _heal_wal(config)
    return report


def _heal_wal(config: Config) -> WalHealReport:
    """WAL files an optional location missed while it was down (no catalog row to go by)."""
    try:
        return heal_wal(config)
    except StrongroomError as exc:
        failed = WalHealReport()
        failed.unreadable["wal"] = str(exc)
        return failed


class _BackupHeal:
    """Healing one backup (state kept here so the steps stay small)."""

    def __init__(
        self,
        runtime: Runtime,
        backup_id: str,
        deep: bool,
        now: datetime,
        pending: set[tuple[str, str]],
    ) -> None:
        self.rt = runtime
        self.backup = store.get_backup(backup_id)
        self.id = backup_id
        self.deep = deep
        self.now = now
        self.pending = pending
        self.rows = {c.location: c for c in store.copies_of(backup_id)}
        keyed = [c for c in self.rows.values() if c.key]
        self.key = keyed[0].key if keyed else ""
        self.manifest_key = keyed[0].manifest_key if keyed else ""

    def run(self) -> list[Repair]:
        if self.backup.status in RUNNING or not self.key:
            return []
        if not any(c.status in DATA_COPY for c in self.rows.values()):
            return []  # a failed run that never stored anything: nothing to heal from or to
        report: list[Repair] = []
        todo: list[tuple[Repair, Location]] = []
        for loc in self.rt.locations:
            try:
                problem = self._problem(loc)
            except StorageError as exc:
                report.append(Repair(self.id, loc.name, "unreachable", detail=str(exc)))
                continue
            if problem:
                todo.append((Repair(self.id, loc.name, problem), loc))
        report.extend(r for r, _ in todo)
        if not todo:
            return report
        source = self._source(exclude={loc.name for _, loc in todo})
        for repair, loc in todo:
            if source is None:
                repair.detail = "no other location holds a copy that verifies"
                store.record_event(self.id, "heal-failed", location=loc.name, message=repair.detail)
            else:
                self._repair(repair, loc, *source)
        self._settle_status()
        return report

    # -- finding what is broken -------------------------------------------------------------

    def _problem(self, loc: Location) -> str:
        """Why the copy in ``loc`` needs healing, or "" when it does not (or must not)."""
        row = self.rows.get(loc.name)
        if (self.id, loc.name) in self.pending or (row is not None and row.status in SETTLED_AWAY):
            return ""
        days = self.rt.retention_days(loc.name, self.backup.backup_type)
        if self.backup.created_at < self.now - timedelta(days=days):
            return ""  # past retention here: prune would only delete it again
        if row is None:
            return "no copy recorded"
        if row.status in BROKEN_COPY:
            return row.status.lower()
        if self.deep:
            check, _ = check_copy(self.rt, loc, row.key, row.manifest_key, self.backup.checksum)
            if check.status == UNREACHABLE:
                raise StorageError(check.detail, location=loc.name)
            self._record_check(loc.name, check)
            return "" if check.ok else check.detail
        for what, key in (("object", row.key), ("manifest", row.manifest_key)):
            try:
                loc.stat(key)
            except ObjectNotFound:
                problem = f"{what} missing from storage"
                store.record_copy_check(self.id, loc.name, status="MISSING", error=problem)
                return problem
        return ""

    def _source(self, exclude: set[str]) -> tuple[Location, bytes] | None:
        """The first other copy that passes a full read-back, with its manifest document."""
        for loc in self.rt.locations:
            row = self.rows.get(loc.name)
            if loc.name in exclude or row is None or row.status not in USABLE_COPY:
                continue
            check, manifest = check_copy(
                self.rt, loc, row.key, row.manifest_key, self.backup.checksum
            )
            self._record_check(loc.name, check)
            if manifest is not None:
                try:
                    return loc, loc.get_bytes(row.manifest_key)
                except StrongroomError as exc:
                    log.warning("manifest of %s in %s unreadable: %s", self.id, loc.name, exc)
        return None

    def _record_check(self, location: str, check: CopyCheck) -> None:
        if check.status != UNREACHABLE:
            store.record_copy_check(
                self.id, location, status=check.status, error="" if check.ok else check.detail
            )

    # -- repairing ----------------------------------------------------------------------------

    def _repair(self, repair: Repair, target: Location, source: Location, document: bytes) -> None:
        repair.source = source.name
        started = time.monotonic()
        try:
            target.delete(self.manifest_key)  # never list a copy while its object is replaced
            size = _transfer(source, target, self.key, self.backup.checksum)
            target.put_bytes(self.manifest_key, document)  # manifest last, as a backup does
        except StrongroomError as exc:
            repair.detail = f"copy from {source.name} failed: {exc}"
            store.record_event(self.id, "heal-failed", location=target.name, message=repair.detail)
            return
        check, _ = check_copy(self.rt, target, self.key, self.manifest_key, self.backup.checksum)
        if not check.ok:
            _quiet_delete(target, self.manifest_key)
            repair.detail = f"the new copy failed verification: {check.detail}"
            self._record_check(target.name, check)
            store.record_event(self.id, "heal-failed", location=target.name, message=repair.detail)
            return
        store.record_copy(
            self.id,
            target.name,
            key=self.key,
            manifest_key=self.manifest_key,
            status=CopyStatus.VERIFIED,
            size_bytes=size,
            checksum=self.backup.checksum,
            error="",
            duration_seconds=time.monotonic() - started,
        )
        repair.ok = True
        repair.detail = f"re-created from {source.name} ({repair.problem}) and verified"
        store.record_event(self.id, HEALED_EVENT, location=target.name, message=repair.detail)

    def _settle_status(self) -> None:
        """A backup whose every live copy now verifies, and that lacks none, is VERIFIED again."""
        rows = store.copies_of(self.id)
        if absent_copies(self.rt.config, rows):
            return  # a configured location still holds no copy: the backup stays PARTIAL
        live = [c for c in rows if c.status not in (CopyStatus.DELETED, CopyStatus.FAILED)]
        if (
            live
            and all(c.status == CopyStatus.VERIFIED for c in live)
            and (self.backup.status != BackupStatus.VERIFIED)
        ):
            store.finish_verify(
                self.id, status=BackupStatus.VERIFIED, error="", verified_at=self.now
            )


def _transfer(source: Location, target: Location, key: str, expected_sha256: str) -> int:
    """Stream the stored bytes across; commit only if their SHA-256 is the expected one."""
    reader = source.open_reader(key)
    writer = target.open_writer(key)
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := reader.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise IntegrityError(
                f"{source.name} returned bytes whose SHA-256 differs from the catalog's"
            )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        reader.close()
    return size


def _quiet_delete(loc: Location, key: str) -> None:
    try:
        loc.delete(key)
    except StorageError as exc:
        log.warning("could not delete %s from %s: %s", key, loc.name, exc)
