"""Restore: find an intact copy, verify it whole, then hand it to ``pg_restore -j N``.

No unauthenticated or checksum-failing byte ever reaches pg_restore: the archive is decrypted
into a private scratch file (0700 directory) and pg_restore starts only once the whole object
authenticated and its SHA-256 matched. That file also gives pg_restore the seekable archive that
parallel restore needs. The target is checked for emptiness before anything is downloaded and
cleared (with ``replace``) only after a good copy is in hand, so a bad backup never costs the
target its data.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from strongroom.config import Config
from strongroom.core import postgres
from strongroom.core.manifest import Manifest
from strongroom.core.readback import read_copy
from strongroom.errors import RestoreError, StrongroomError, WrongBackupKind, WrongKeyError
from strongroom.services.discovery import CopyRef, find_copies
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.restore")


@dataclass
class RestoreReport:
    id: str
    source: str
    target: str
    jobs: int
    seconds: float = 0.0
    table_rows: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: Seconds per stage (fetch and verify, pg_restore, row counts): where a slow restore went.
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def mismatches(self) -> dict[str, tuple[int, int | None]]:
        return {t: (e, a) for t, (e, a) in self.table_rows.items() if e != a}

    @property
    def ok(self) -> bool:
        return not self.mismatches


def restore_backup(
    config: Config,
    backup_id: str | None,
    target_url: str,
    *,
    from_location: str | None = None,
    jobs: int | None = None,
    replace: bool = False,
    scratch_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoreReport:
    """Restore ``backup_id`` (or the latest restorable backup) into ``target_url``."""
    runtime = Runtime.build(config)
    target = postgres.ConnInfo.parse(target_url)
    if not replace:
        # refuse a non-empty target up front; create a missing one only once a copy verified
        postgres.prepare_target(target, replace=False, create=False)
    passed_over: list[str] = []
    copies = find_copies(runtime, backup_id, from_location, passed_over)
    jobs = jobs or config.restore_jobs
    started = time.monotonic()
    stages: dict[str, float] = {}
    scratch = _scratch(scratch_dir or config.restore_scratch_dir)
    try:
        archive = scratch / "archive.dump"
        try:
            copy, manifest, skipped = _fetch_first_intact(runtime, copies, archive, progress)
            stages["fetch"] = time.monotonic() - started
        except OSError as exc:
            raise RestoreError(
                f"cannot write the verified archive to {scratch}: {exc.strerror or exc}; point "
                "BACKUP_RESTORE_SCRATCH_DIR at a disk with room for the uncompressed dump"
            ) from None
        postgres.prepare_target(target, replace=replace)
        mark = time.monotonic()
        postgres.run_restore(archive, target, jobs=jobs, bindir=config.pg_bindir)
        stages["pg_restore"] = time.monotonic() - mark
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    mark = time.monotonic()
    actual = postgres.target_row_counts(target)
    stages["row counts"] = time.monotonic() - mark
    report = RestoreReport(
        manifest.id,
        copy.location.name,
        str(target),
        jobs,
        time.monotonic() - started,
        skipped=passed_over + skipped,
        stages=stages,
    )
    for table, expected in sorted(manifest.table_rows.items()):
        report.table_rows[table] = (expected, actual.get(table))
    return report


def _scratch(parent: str | None) -> Path:
    """A private (0700) directory for the archive; a bad parent is one clear line."""
    try:
        return Path(tempfile.mkdtemp(prefix="strongroom-restore-", dir=parent))
    except OSError as exc:
        raise RestoreError(
            f"cannot create a scratch directory in {parent or tempfile.gettempdir()}: "
            f"{exc.strerror or exc}; set BACKUP_RESTORE_SCRATCH_DIR to a writable directory"
        ) from None


def _fetch_first_intact(
    runtime: Runtime,
    copies: list[CopyRef],
    archive: Path,
    progress: Callable[[int], None] | None,
) -> tuple[CopyRef, Manifest, list[str]]:
    """Try each copy in order; the first that verifies whole wins. Falls back on any failure."""
    skipped: list[str] = []
    for copy in copies:
        try:
            with archive.open("wb") as out:
                manifest, _ = read_copy(
                    copy.location,
                    copy.key,
                    copy.manifest_key,
                    runtime.keyring,
                    expected_sha256=copy.expected_sha256,
                    sink=out.write,
                    progress=progress,
                    kinds=("full",),
                )
            return copy, manifest, skipped
        except (WrongKeyError, WrongBackupKind):
            raise  # every copy needs the same key (and is the same kind): not a fallback case
        except StrongroomError as exc:
            skipped.append(f"{copy.location.name}: {exc}")
            log.warning("copy in %s unusable, trying the next: %s", copy.location.name, exc)
    detail = "; ".join(skipped) or "no copies recorded"
    raise RestoreError(f"no intact copy to restore from ({detail})")
