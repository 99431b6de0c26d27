"""Verify: re-read every copy of a backup, recompute SHA-256, authenticate, record per copy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.manifest import Manifest
from strongroom.core.readback import read_copy
from strongroom.core.status import LIVE_COPY_EXCLUDES, BackupStatus, CopyStatus
from strongroom.core.storage.base import Location
from strongroom.errors import IntegrityError, ObjectNotFound, StrongroomError
from strongroom.services.discovery import latest_of_configured_database
from strongroom.services.runtime import Runtime

if TYPE_CHECKING:
    from strongroom.models import BackupCopy

log = logging.getLogger("strongroom.verify")

#: A check that could not read the copy (location down, wrong key): says nothing of its bytes.
UNREACHABLE = "UNREACHABLE"


@dataclass
class CopyCheck:
    location: str
    ok: bool
    detail: str
    #: A copy status (VERIFIED, CORRUPT, MISSING) or UNREACHABLE: no evidence either way.
    status: str


@dataclass
class VerifyReport:
    id: str
    status: str
    copies: list[CopyCheck] = field(default_factory=list)
    #: Configured locations the backup never reached (its run failed there), with the reason.
    absent: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.copies) and all(c.ok for c in self.copies)

    def problems(self) -> str:
        return "; ".join(f"{c.location}: {c.detail}" for c in self.copies if not c.ok)


def check_copy(
    runtime: Runtime,
    loc: Location,
    key: str,
    manifest_key: str,
    expected_sha256: str,
    progress: Callable[[int], None] | None = None,
) -> tuple[CopyCheck, Manifest | None]:
    """Full read-back of one copy against the catalog's checksum and the copy's manifest."""
    try:
        manifest, back = read_copy(
            loc,
            key,
            manifest_key,
            runtime.keyring,
            expected_sha256=expected_sha256,
            progress=progress,
        )
    except ObjectNotFound as exc:
        return CopyCheck(loc.name, False, f"missing: {exc}", CopyStatus.MISSING), None
    except IntegrityError as exc:
        return CopyCheck(loc.name, False, f"corrupt: {exc}", CopyStatus.CORRUPT), None
    except StrongroomError as exc:
        return CopyCheck(loc.name, False, f"unreadable: {exc}", UNREACHABLE), None
    ok = f"sha256 {back.sha256[:16]}... ok"
    return CopyCheck(loc.name, True, ok, CopyStatus.VERIFIED), manifest


#: ``progress(location, stored bytes read, stored size)`` while a copy is read back.
CopyProgress = Callable[[str, int, int | None], None]


def verify_backup(
    config: Config, backup_id: str | None, progress: CopyProgress | None = None
) -> VerifyReport:
    """Verify the given (or latest restorable) backup in every location that holds a copy."""
    runtime = Runtime.build(config)
    backup = store.get_backup(backup_id or latest_of_configured_database(runtime))
    report = VerifyReport(backup.id, backup.status)
    order = {spec.name: i for i, spec in enumerate(config.locations)}
    copies = sorted(store.copies_of(backup.id), key=lambda c: order.get(c.location, len(order)))
    report.absent = absent_copies(config, copies)
    for copy in copies:  # in the configured order, as restore tries them
        if copy.status in LIVE_COPY_EXCLUDES:
            continue
        try:
            loc = runtime.location(copy.location)
        except StrongroomError as exc:
            report.copies.append(CopyCheck(copy.location, False, str(exc), UNREACHABLE))
            continue
        check, _ = check_copy(
            runtime,
            loc,
            copy.key,
            copy.manifest_key,
            backup.checksum,
            _progress_of(progress, copy.location, copy.size_bytes),
        )
        report.copies.append(check)
        if check.status == UNREACHABLE:
            continue  # no evidence about the stored bytes (a wrong key, a location down)
        store.record_copy_check(
            backup.id, copy.location, status=check.status, error="" if check.ok else check.detail
        )
    report.status = _new_status(report, backup.status)
    store.finish_verify(
        backup.id,
        status=report.status,
        error=report.problems() or _absent_reasons(report),
        verified_at=datetime.now(UTC) if report.ok else None,
    )
    return report


def absent_copies(config: Config, copies: Iterable[BackupCopy]) -> dict[str, str]:
    """Configured locations where the backup's run failed to store a copy, with the reason.

    Such a backup is PARTIAL however well its other copies verify, until ``heal`` fills them.
    """
    configured = {spec.name for spec in config.locations}
    return {
        c.location: c.error.removeprefix(f"{c.location}: ") or "the backup could not store it"
        for c in copies
        if c.status == CopyStatus.FAILED and c.location in configured
    }


def _progress_of(
    progress: CopyProgress | None, location: str, size: int | None
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda done: progress(f"verify {location}", done, size or None)


def _absent_reasons(report: VerifyReport) -> str:
    return "; ".join(f"{name}: {why}" for name, why in report.absent.items())


def _new_status(report: VerifyReport, previous: str) -> str:
    """VERIFIED only when every configured location holds a copy and every copy read back."""
    if not report.copies:
        return BackupStatus.FAILED
    if report.ok:
        return BackupStatus.PARTIAL if report.absent else BackupStatus.VERIFIED
    if any(c.ok for c in report.copies):
        return BackupStatus.PARTIAL
    if any(c.status in (CopyStatus.CORRUPT, CopyStatus.MISSING) for c in report.copies):
        return BackupStatus.FAILED
    return previous  # only unreachable: no evidence either way
