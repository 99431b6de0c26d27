"""``wal-push PATH``: PostgreSQL's ``archive_command``, one WAL file into every location.

The contract (PostgreSQL's "continuous archiving" chapter, and contrib ``basic_archive``):
exit 0 only once the file is durable in every required location, since PostgreSQL then
recycles it. Here that means: the object and then its manifest written (local: fsynced and
renamed; S3: the upload completed with its Content-MD5 checked by the server) in every
required location. An optional location that fails or is slow (``BACKUP_WAL_OPTIONAL_TIMEOUT``)
is noted in the spool and left to ``heal``; it never makes PostgreSQL hold WAL, and one that
failed is skipped for ``BACKUP_WAL_SKIP_DOWN_SECONDS`` so each push does not wait for it again.

Re-pushing a file already archived with the same plaintext succeeds without writing; the same
name with other content fails (``WalConflict``, both checksums named) and nothing is written,
anywhere: every location is asked before any is written. A segment whose page header names
another cluster than the data directory's ``pg_control`` is refused (``ForeignWal``).

Keeping up: one invocation also pushes up to ``BACKUP_WAL_PUSH_AHEAD`` other files PostgreSQL
has marked ``.ready`` in ``pg_wal/archive_status``, ``BACKUP_WAL_PUSH_PARALLEL`` at a time (as
pgBackRest's asynchronous archiving and WAL-G's background uploader do), and records each in the
spool (outside ``pg_wal``) with the file's stamp (device, inode, size, modification and change
times). When PostgreSQL later asks for one of them and the stamp is unchanged, the call returns
at once, without reading the file again; otherwise its plaintext SHA-256 is compared with the
record. Nothing is ever dropped to keep up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from strongroom.config import WAL_ZSTD_LEVEL, Config
from strongroom.core import deadline, wal
from strongroom.core.codecs import Codec, get_codec
from strongroom.core.manifest import Manifest
from strongroom.core.pipeline import StreamResult
from strongroom.core.storage.base import Location
from strongroom.core.wal_spool import Spool
from strongroom.errors import (
    ConfigError,
    LocationUnavailable,
    ObjectNotFound,
    StorageError,
    StrongroomError,
    WalConflict,
)
from strongroom.services import wal as walstore
from strongroom.services.runtime import Runtime
from strongroom.services.wal_cluster import check_header, cluster_scope, data_dir_of, read_wal_file

log = logging.getLogger("strongroom.wal_push")

#: How each location ended for one file.
OK, ALREADY, MISSED = "archived", "already archived", "missed"


@dataclass
class Pushed:
    """One file's push: per location ``archived``, ``already archived`` or ``missed: why``."""

    name: str
    locations: dict[str, str] = field(default_factory=dict)
    #: Answered from the spool's record of an earlier push ahead (no network at all).
    from_spool: bool = False
    seconds: float = 0.0


@dataclass
class PushReport:
    pushed: Pushed
    #: Other ``.ready`` files pushed ahead, and those that failed (with the reason).
    ahead: list[Pushed] = field(default_factory=list)
    ahead_failed: dict[str, str] = field(default_factory=dict)


def push_wal(config: Config, path: str) -> PushReport:
    """Archive ``path`` (and ``.ready`` files ahead of it); raise unless it is durable."""
    file = Path(path)
    try:
        wal.parse_name(file.name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pusher = make_pusher(config, file)
    # with the background uploader on, it takes the files ahead (one process pushing each once)
    limit = 0 if config.wal.async_push else config.wal.push_ahead
    ahead = _ready_ahead(file, pusher.spool, limit)
    with ThreadPoolExecutor(max_workers=config.wal.push_parallel) as pool:
        asked = pool.submit(pusher.push, file)
        others = {name: pool.submit(pusher.push, file.parent / name, True) for name in ahead}
        report = PushReport(asked.result())
        _collect(report, others)
    return report


def make_pusher(config: Config, file: Path) -> _Pusher:
    """A pusher for the cluster whose WAL ``file`` is (or would be) in ``pg_wal``."""
    runtime = dataclasses.replace(Runtime.build(config), codec=wal_codec(config))
    return _Pusher(runtime, cluster_scope(data_dir_of(config, file)))


def wal_codec(config: Config) -> Codec:
    """The backup's codec at the WAL's level (``BACKUP_WAL_COMPRESSION_LEVEL``; zstd: 1).

    Only the level differs from the backup's: the object's name and every reader stay the same,
    and readers take the level from each file's manifest, so files pushed at other levels are
    fetched, verified and healed as before.
    """
    codec = config.codec.strip().lower()
    level = config.wal.compression_level
    if codec == "none":
        level = config.codec_level
    elif level is None:
        level = WAL_ZSTD_LEVEL if codec == "zstd" else config.codec_level
    return get_codec(config.codec, level, config.codec_threads)


def _collect(report: PushReport, others: dict[str, Future[Pushed]]) -> None:
    for name, future in others.items():
        try:
            report.ahead.append(future.result())
        except Exception as exc:  # PostgreSQL will ask for it; that call reports the problem
            report.ahead_failed[name] = str(exc) or type(exc).__name__
            log.warning("pushing %s ahead failed: %s", name, exc)


def _ready_ahead(file: Path, spool: Spool | None, limit: int) -> list[str]:
    """Files PostgreSQL has marked ready besides ``file``, oldest first, not yet pushed."""
    if spool is None or limit <= 0 or file.parent.name != "pg_wal":
        return []
    recorded = spool.pushed_names()
    return [n for n in ready_names(file.parent) if n != file.name and n not in recorded][:limit]


def ready_names(wal_dir: Path) -> list[str]:
    """The files PostgreSQL has marked ``.ready`` in ``wal_dir``, in the order it archives
    them: history files first, then by name (oldest first)."""
    status = wal_dir / "archive_status"
    if not status.is_dir():
        return []
    return [m.name[: -len(".ready")] for m in sorted(status.glob("*.ready"), key=_archive_order)]


def _archive_order(marker: Path) -> tuple[int, str]:
    """History files first (PostgreSQL archives them first too), then by name."""
    return (0 if marker.name.endswith(".history.ready") else 1, marker.name)


@dataclass(frozen=True)
class _Sealed:
    """One file compressed and encrypted, with what its manifest records."""

    data: bytes
    stream: StreamResult
    sha: str
    segment_size: int | None
    started: datetime


class _Pusher:
    """Pushing files of one cluster; safe to use from several threads at once."""

    def __init__(self, runtime: Runtime, scope: str) -> None:
        self.rt = runtime
        self.scope = scope
        settings = runtime.config.wal
        self.settings = settings
        self.spool = Spool(settings.spool_dir) if settings.spool_dir else None

    def push(self, file: Path, ahead: bool = False) -> Pushed:
        started = time.monotonic()
        name = file.name
        data, stamp = read_wal_file(file)
        sha = hashlib.sha256(data).hexdigest()
        segment_size = check_header(self.scope, name, data)
        if self.spool is not None and self.spool.pushed_sha(name) == sha:
            if not ahead:
                self.spool.forget_pushed(name)
            return Pushed(name, from_spool=True, seconds=time.monotonic() - started)
        keys = walstore.keys_for(self.rt, self.scope, name)
        result = Pushed(name)
        began = datetime.now(UTC)
        # sealing (zstd, encryption) overlaps the look-ups; on a conflict its output is dropped
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="strongroom-wal-seal") as one:
            sealing = one.submit(walstore.seal, self.rt, data)
            todo = self._todo(keys, sha, result)
            if todo:
                self._store(
                    keys, _Sealed(*sealing.result(), sha, segment_size, began), todo, result
                )
        if not any(how in (OK, ALREADY) for how in result.locations.values()):
            raise StorageError(
                f"{name} could not be archived in any location: "
                + "; ".join(f"{loc}: {how}" for loc, how in result.locations.items())
            )
        if self.spool is not None:
            if ahead:
                self.spool.mark_pushed(name, sha, stamp)
            else:
                self.spool.forget_failed(name)  # the uploader's failure is answered
        result.seconds = time.monotonic() - started
        return result

    # -- what each location already holds ------------------------------------------------------

    def _live(self, result: Pushed) -> list[Location]:
        """The locations to try: optional ones that failed just now are skipped (and missed)."""
        for name, problem in self.rt.unconfigured.items():
            if self.rt.config.location(name).required:
                raise ConfigError(problem)
        live: list[Location] = []
        for loc in self.rt.locations:
            seconds = self.settings.skip_down_seconds
            if (
                not loc.required
                and self.spool
                and seconds
                and self.spool.is_down(loc.name, seconds)
            ):
                self._missed(loc, result, f"skipped: failed less than {seconds:g} s ago")
            else:
                live.append(loc)
        return live

    def _todo(self, keys: walstore.WalKeys, sha: str, result: Pushed) -> list[Location]:
        """Locations that lack the file; ``WalConflict`` before anything is written."""
        live = self._live(result)
        found = self._everywhere(
            {loc.name: partial(self._archived, loc, keys, sha) for loc in live}, live
        )
        conflicts: dict[str, Manifest] = {}
        todo: list[Location] = []
        for loc in live:
            outcome = found[loc.name]
            if isinstance(outcome, BaseException):
                self._failed(loc, outcome, result)
            elif not isinstance(outcome, Manifest):
                todo.append(loc)
            elif walstore.plaintext_sha(outcome) == sha:
                result.locations[loc.name] = ALREADY
            else:
                conflicts[loc.name] = outcome
        if conflicts:
            where, manifest = next(iter(conflicts.items()))
            raise WalConflict(
                f"{keys.name} is already archived with different content in "
                f"{', '.join(conflicts)}: archived plaintext SHA-256 "
                f"{walstore.plaintext_sha(manifest)}, this file's {sha}; nothing was written "
                f"(the archived copy in {where} is kept)"
            )
        return todo

    def _archived(self, loc: Location, keys: walstore.WalKeys, sha: str) -> Manifest | None:
        """The manifest archived in ``loc``; ``None`` when absent, or when it is this content
        but its object is gone or cut short (then it is written again: same bytes, no loss)."""
        manifest = walstore.read_manifest(self.rt, loc, keys)
        if manifest is None or walstore.plaintext_sha(manifest) != sha:
            return manifest
        try:
            intact = loc.stat(manifest.object_key).size == manifest.stored_size
        except ObjectNotFound:
            intact = False
        return manifest if intact else None

    # -- writing -----------------------------------------------------------------------------

    def _store(
        self, keys: walstore.WalKeys, sealed: _Sealed, todo: list[Location], result: Pushed
    ) -> None:
        manifest = walstore.wal_manifest(
            self.rt,
            keys,
            sealed.stream,
            scope=self.scope,
            plaintext_sha256=sealed.sha,
            segment_size=sealed.segment_size,
            started_at=sealed.started,
        )
        document = manifest.to_document(self.rt.keyring)
        done = self._everywhere(
            {loc.name: partial(_put, loc, keys, sealed.data, document) for loc in todo}, todo
        )
        for loc in todo:
            outcome = done[loc.name]
            if isinstance(outcome, BaseException):
                self._failed(loc, outcome, result)
            else:
                result.locations[loc.name] = OK
                if self.spool is not None:
                    self.spool.mark_up(loc.name)

    def _everywhere(
        self, calls: dict[str, Callable[[], object]], locations: list[Location]
    ) -> dict[str, object]:
        """Every call at once; optional locations get ``BACKUP_WAL_OPTIONAL_TIMEOUT``, required
        ones ``BACKUP_LOCATION_TIMEOUT``. The value, or the exception that ended the call."""
        start = time.monotonic()
        pending = {
            name: deadline.Pending(call, f"strongroom-wal-{name}") for name, call in calls.items()
        }
        outcome: dict[str, object] = {}
        for loc in locations:
            required = loc.required
            seconds = (
                max(self.rt.config.location_timeout, self.settings.optional_timeout)
                if required
                else self.settings.optional_timeout
            )
            one = pending[loc.name]
            one.wait(start + seconds)
            try:
                outcome[loc.name] = one.result(seconds)
            except deadline.NoAnswer:
                outcome[loc.name] = LocationUnavailable(
                    f"{loc.name}: no answer in {seconds:g} s", loc.name
                )
            except Exception as exc:  # untranslated provider errors too: that location failed
                outcome[loc.name] = exc
        return outcome

    def _failed(self, loc: Location, exc: BaseException, result: Pushed) -> None:
        """A required location failing fails the push; an optional one is missed, not fatal."""
        if loc.required:
            if isinstance(exc, StrongroomError):
                raise exc
            raise StorageError(f"{loc.name}: {exc}", loc.name)
        if self.spool is not None:
            self.spool.mark_down(loc.name, str(exc))
        self._missed(loc, result, str(exc))

    def _missed(self, loc: Location, result: Pushed, reason: str) -> None:
        log.warning("%s not archived in %s (heal back-fills it): %s", result.name, loc.name, reason)
        result.locations[loc.name] = f"{MISSED}: {reason}"
        if self.spool is not None:
            self.spool.mark_missed(loc.name, result.name, reason)


def _put(loc: Location, keys: walstore.WalKeys, sealed: bytes, document: bytes) -> None:
    """Object first, manifest last: the manifest's presence is what says "durable here"."""
    loc.put_bytes(keys.key, sealed)
    loc.put_bytes(keys.manifest_key, document)
