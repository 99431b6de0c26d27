"""Restore: find an intact copy, verify it whole, then hand it to ``pg_restore -j N``.

No unauthenticated or checksum-failing byte ever reaches pg_restore: the archive is decrypted
into a private scratch file (0700 directory) and pg_restore starts only once the whole object
authenticated and its SHA-256 matched. That file also gives pg_restore the seekable archive that
parallel restore needs, and, as it is written, the data offsets pg_dump could not record while
writing to a pipe are found and put into its table of contents
(:mod:`strongroom.core.postgres.archive_offsets`), so pg_restore's workers seek to a table's
data instead of walking every row before it.

A restore either happens whole or leaves the target as it found it:

* Into a missing or empty target (checked before anything is downloaded): if pg_restore fails or
  is interrupted, a database this run created is dropped, and an existing one is emptied again
  (``postgres.undo_restore`` says exactly what that removes).
* With ``replace``, an existing target is never written to. The archive goes into a new database
  beside it; only when pg_restore and every row count succeeded are the names swapped, in a short
  step that needs the target free of other sessions (``core/postgres/replace.py``). Anything else,
  a mismatch, an error, Ctrl-C or SIGTERM (``finally``, so any ``BaseException``), drops the new
  database. The price is room for a second copy of the database while the restore runs. Waiting
  for other sessions is bounded by ``BACKUP_RESTORE_LOCK_TIMEOUT``, once before the download (so
  a busy target is known at once) and again at the swap; ``terminate_sessions`` ends them then.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from strongroom.config import Config
from strongroom.core import postgres, scratchdir
from strongroom.core.manifest import Manifest
from strongroom.core.readback import read_copy
from strongroom.errors import (
    ConfigError,
    RestoreError,
    StrongroomError,
    WrongBackupKind,
    WrongKeyError,
)
from strongroom.services.discovery import CopyRef, find_copies
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.restore")


class RowsCompared:
    """A report of rows per table, the backup's count against the one found after restoring."""

    table_rows: dict[str, tuple[int, int | None]]

    @property
    def mismatches(self) -> dict[str, tuple[int, int | None]]:
        return {t: (e, a) for t, (e, a) in self.table_rows.items() if e != a}

    @property
    def ok(self) -> bool:
        return not self.mismatches


@dataclass
class RestoreReport(RowsCompared):
    id: str
    source: str
    target: str
    jobs: int
    seconds: float = 0.0
    table_rows: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: Seconds per stage (fetch and verify, pg_restore, row counts, swap): where the time went.
    stages: dict[str, float] = field(default_factory=dict)
    #: ``--replace`` found a mismatch, dropped what it restored and left the target as it was.
    target_kept: bool = False


def restore_backup(
    config: Config,
    backup_id: str | None,
    target_url: str,
    *,
    from_location: str | None = None,
    jobs: int | None = None,
    replace: bool = False,
    terminate_sessions: bool = False,
    scratch_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoreReport:
    """Restore ``backup_id`` (or the latest restorable backup) into ``target_url``."""
    runtime = Runtime.build(config)
    target = postgres.ConnInfo.parse(target_url)
    wait = lock_timeout(config)
    if replace:
        # refuse a busy target (or a role that cannot make the new database) before downloading
        swap = postgres.wait_for_target(target, timeout=wait, terminate=terminate_sessions)
    else:
        # refuse a non-empty target up front; create a missing one only once a copy verified
        swap = False
        postgres.prepare_target(target, create=False)
    passed_over: list[str] = []
    copies = find_copies(runtime, backup_id, from_location, passed_over)
    run = _Run(config, target, jobs or config.restore_jobs, time.monotonic())
    scratch = make_scratch(scratch_dir or config.restore_scratch_dir)
    try:
        archive = scratch / "archive.dump"
        copy, manifest, skipped = fetch_verified(runtime, copies, archive, progress, scratch)
        run.stage("fetch", run.started)
        if swap:
            actual, replaced = _replace(run, archive, manifest, wait, terminate_sessions)
        else:
            actual, replaced = _into_empty(run, archive), True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = RestoreReport(
        manifest.id,
        copy.location.name,
        str(target),
        run.jobs,
        time.monotonic() - run.started,
        skipped=passed_over + skipped,
        stages=run.stages,
        target_kept=not replaced,
    )
    for table, expected in sorted(manifest.table_rows.items()):
        report.table_rows[table] = (expected, actual.get(table))
    return report


@dataclass
class _Run:
    """What the steps of one restore share: where to, how, and the seconds of each stage."""

    config: Config
    target: postgres.ConnInfo
    jobs: int
    started: float
    stages: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str, since: float) -> float:
        """Record a stage that began at ``since``; return now, the start of the next."""
        now = time.monotonic()
        self.stages[name] = now - since
        return now


def lock_timeout(config: Config) -> float:
    """``BACKUP_RESTORE_LOCK_TIMEOUT``, checked: how long a restore waits for others."""
    value = config.restore_lock_timeout
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"BACKUP_RESTORE_LOCK_TIMEOUT must be a finite number of seconds >= 0, got {value!r}"
        )
    return value


def fetch_verified(
    runtime: Runtime,
    copies: list[CopyRef],
    archive: Path,
    progress: Callable[[int], None] | None,
    scratch: Path,
    kinds: Collection[str] = ("full",),
) -> tuple[CopyRef, Manifest, list[str]]:
    """The first copy that proves whole, decrypted into ``archive``; the ones passed over."""
    try:
        return _fetch_first_intact(runtime, copies, archive, progress, kinds)
    except OSError as exc:
        raise RestoreError(
            f"cannot write the verified archive to {scratch}: {exc.strerror or exc}; point "
            "BACKUP_RESTORE_SCRATCH_DIR at a disk with room for the uncompressed dump"
        ) from None


def _into_empty(run: _Run, archive: Path) -> dict[str, int]:
    """pg_restore into a missing or empty target; a failed run leaves it as it found it."""
    created = postgres.prepare_target(run.target)
    mark = None if created else postgres.mark_target(run.target)
    since = time.monotonic()
    try:
        postgres.run_restore(archive, run.target, jobs=run.jobs, bindir=run.config.pg_bindir)
    except RestoreError as exc:
        undo_target(run.target, mark)
        undone = "dropped again" if mark is None else "emptied again"
        raise RestoreError(f"{exc}; the target database was {undone}") from None
    except BaseException:
        undo_target(run.target, mark)
        raise
    since = run.stage("pg_restore", since)
    actual = postgres.target_row_counts(run.target)
    run.stage("row counts", since)
    return actual


def undo_target(target: postgres.ConnInfo, mark: postgres.TargetMark | None) -> None:
    """Drop (``mark`` None) or empty again a target a failed restore wrote into; best effort:
    the error that stopped the restore is the one the operator must see."""
    try:
        postgres.undo_restore(target, mark)
    except (StrongroomError, psycopg.Error) as exc:
        what = "drop it" if mark is None else "empty it"
        log.error("could not %s after the failed restore into %s: %s", what, target, exc)


def _replace(
    run: _Run, archive: Path, manifest: Manifest, wait: float, terminate: bool
) -> tuple[dict[str, int], bool]:
    """Restore beside the target and swap names only if everything matched (module docstring).

    Returns the restored row counts and whether the target was replaced: a mismatch keeps it.
    """
    with postgres.replacement(run.target) as names:
        beside = run.target.with_db(names.new)
        since = time.monotonic()
        try:
            postgres.run_restore(archive, beside, jobs=run.jobs, bindir=run.config.pg_bindir)
        except RestoreError as exc:
            raise RestoreError(
                f"{exc}; nothing was replaced: the target was left as it was"
            ) from None  # the new database is dropped on the way out
        since = run.stage("pg_restore", since)
        actual = postgres.target_row_counts(beside)
        since = run.stage("row counts", since)
        if any(actual.get(t) != n for t, n in manifest.table_rows.items()):
            return actual, False  # the new database is dropped on the way out
        postgres.swap_in(run.target, names, timeout=wait, terminate=terminate)
        run.stage("swap", since)
    return actual, True


def make_scratch(parent: str | None) -> Path:
    """A private (0700) directory for the archive; a bad parent is one clear line.

    Directories a killed restore left under the same parent are removed first (only those whose
    owner, on this host, has ended: :mod:`strongroom.core.scratchdir`).
    """
    try:
        return scratchdir.create(parent)
    except OSError as exc:
        raise RestoreError(
            f"cannot create a scratch directory in {parent or tempfile.gettempdir()}: "
            f"{exc.strerror or exc}; set BACKUP_RESTORE_SCRATCH_DIR to a writable directory"
        ) from None


def _fetch_one(
    runtime: Runtime,
    copy: CopyRef,
    archive: Path,
    progress: Callable[[int], None] | None,
    kinds: Collection[str],
) -> Manifest:
    """One copy verified into ``archive``, then the data offsets found put into it (only
    pg_restore's speed hangs on them: an archive without them restores as pg_dump wrote it)."""
    offsets = postgres.OffsetIndexer()
    with archive.open("wb") as out:

        def sink(chunk: bytes) -> None:
            out.write(chunk)
            offsets.feed(chunk)

        manifest, _ = read_copy(
            copy.location,
            copy.key,
            copy.manifest_key,
            runtime.keyring,
            expected_sha256=copy.expected_sha256,
            sink=sink,
            progress=progress,
            kinds=kinds,
        )
    written = offsets.patch(archive)
    if offsets.stopped:
        log.debug("data offsets not recorded (%s)", offsets.stopped)
    else:
        log.debug("data offsets recorded for %d tables", written)
    return manifest


def _fetch_first_intact(
    runtime: Runtime,
    copies: list[CopyRef],
    archive: Path,
    progress: Callable[[int], None] | None,
    kinds: Collection[str],
) -> tuple[CopyRef, Manifest, list[str]]:
    """Try each copy in order; the first that verifies whole wins. Falls back on any failure."""
    skipped: list[str] = []
    for copy in copies:
        try:
            return copy, _fetch_one(runtime, copy, archive, progress, kinds), skipped
        except (WrongKeyError, WrongBackupKind):
            raise  # every copy needs the same key (and is the same kind): not a fallback case
        except StrongroomError as exc:
            skipped.append(f"{copy.location.name}: {exc}")
            log.warning("copy in %s unusable, trying the next: %s", copy.location.name, exc)
    detail = "; ".join(skipped) or "no copies recorded"
    raise RestoreError(f"no intact copy to restore from ({detail})")
