"""Store one object in every location: the path every kind of backup takes.

A full backup, a tenant export, a base backup and a WAL segment differ only in where their bytes
come from and what their manifest says. Everything else is here, once: required locations are
probed before the source starts, leftovers of dead runs are cleaned, the source streams through
compress -> encrypt -> SHA-256 into every location at once, a required location that fails (or
every location failing) stops the source at once, healthy uploads are committed, the
authenticated manifest is written last, copies are withdrawn everywhere when a required
location failed, and every copy is recorded in the catalog.

The caller owns the catalog record (``store.start_backup``) and its final status:
:func:`finish_record` writes the fields every kind shares.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from strongroom import __version__
from strongroom.catalog import store
from strongroom.core import deadline
from strongroom.core.codecs import Codec
from strongroom.core.crypto import CIPHER_NAME
from strongroom.core.deadline import Pending
from strongroom.core.manifest import Manifest, manifest_key_for
from strongroom.core.pipeline import LocationOutcome, StreamResult, settle, stream_to_locations
from strongroom.core.status import BackupStatus, CopyStatus
from strongroom.core.storage.base import Location, ObjectWriter
from strongroom.errors import (
    ConfigError,
    Interrupted,
    LocationUnavailable,
    StorageError,
    StrongroomError,
)
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.storing")
T = TypeVar("T")

Progress = Callable[[int, int], None]
_HEARTBEAT_EVERY = 15.0
WITHDRAWN = "stored, then deleted again because a required location failed"
STOPPED = "upload stopped and aborted because a required location failed"


class Source(Protocol):
    """A running producer of one object's plaintext (pg_dump, an export, a file)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...

    def finish(self) -> Any:
        """Wait for a clean end and return what the manifest builder needs; raise on failure."""

    def kill(self) -> None:
        """Stop at once: the run failed elsewhere, or was interrupted."""


#: Builds the manifest once the stream ended cleanly: (stream result, ``Source.finish()``).
ManifestBuilder = Callable[[StreamResult, Any], Manifest]


@dataclass
class Stored:
    """What storing one object produced."""

    backup_id: str
    key: str
    status: BackupStatus
    error: str
    result: StreamResult
    outcomes: dict[str, LocationOutcome]
    manifest: Manifest | None = None
    source_result: Any = None
    #: Per location: ``ok`` or the reason it holds no copy.
    locations: dict[str, str] = field(default_factory=dict)

    @property
    def manifest_key(self) -> str:
        return manifest_key_for(self.key)


def store_everywhere(
    runtime: Runtime,
    backup_id: str,
    key: str,
    start_source: Callable[[], Source],
    build_manifest: ManifestBuilder,
    *,
    cleanup_prefix: str | None = None,
    cleanup_before: Any = None,
    progress: Progress | None = None,
) -> Stored:
    """Stream ``start_source()`` into every configured location as ``key``, manifest last.

    Raises before the source starts when a required location is unusable, and re-raises the
    source's own failure (every upload aborted). Otherwise returns with the status the copies
    earned: COMPLETED, PARTIAL (an optional location failed) or FAILED (a required one did;
    nothing is left that looks complete anywhere).
    """
    run = ObjectUpload(runtime, backup_id, key, progress)
    run.check_required()
    if cleanup_prefix is not None:
        run.cleanup(cleanup_prefix, cleanup_before)
    return run.stream(start_source, build_manifest)


def stream_fields(runtime: Runtime, key: str, result: StreamResult) -> dict[str, Any]:
    """The manifest fields every kind shares: sizes, checksum, codec, cipher, key, object."""
    return {
        "raw_size": result.raw_size,
        "compressed_size": result.compressed_size,
        "stored_size": result.stored_size,
        "sha256": result.sha256,
        "codec": runtime.codec.name,
        "codec_level": runtime.codec.level,
        "codec_levels": {
            str(level): {"raw_bytes": raw, "compressed_bytes": out}
            for level, (raw, out) in sorted(result.levels.items())
        },
        "cipher": CIPHER_NAME,
        "key_id": runtime.keyring.primary_id,
        "object_key": key,
        "tool_version": __version__,
    }


def finish_record(stored: Stored, metadata: dict[str, Any]) -> None:
    """The final catalog status and the fields every kind of backup shares."""
    result = stored.result
    store.finish_backup(
        stored.backup_id,
        status=stored.status,
        error=stored.error,
        filename=stored.key.rsplit("/", 1)[-1],
        size_bytes=result.stored_size,
        raw_size_bytes=result.raw_size,
        compressed_size_bytes=result.compressed_size,
        checksum=result.sha256,
        compression_ratio=_saved(result),
        metadata=metadata,
    )


class ObjectUpload:
    """One object's way into every location, in steps for callers with work between them.

    ``check_required`` (before anything expensive), ``cleanup`` (holding the lock), then
    ``stream`` once; :func:`store_everywhere` runs all three in a row.
    """

    def __init__(
        self, runtime: Runtime, backup_id: str, key: str, progress: Progress | None
    ) -> None:
        self.rt = runtime
        self.id = backup_id
        self.key = key
        self.user_progress = progress
        self._last_beat = time.monotonic()
        self._withdrawn: set[str] = set()
        #: Optional locations that stayed silent before the stream, with the reason.
        self._dropped: dict[str, LocationUnavailable] = {}
        #: Required locations that stayed silent: the run fails with this reason.
        self._silent: dict[str, LocationUnavailable] = {}

    # -- before the source starts ------------------------------------------------------------

    def check_required(self) -> None:
        """A required location that cannot take writes fails the run before any source runs."""
        for name, problem in self.rt.unconfigured.items():
            if self._required(name):
                raise ConfigError(problem)
        required = [loc for loc in self.rt.locations if loc.required]
        probes = self._each("check", {loc.name: loc.check for loc in required})
        self._raise_if_required_silent()
        for loc in required:
            probe = probes[loc.name].result(self._timeout)
            if not probe.writable:
                raise LocationUnavailable(probe.detail, location=loc.name)

    def cleanup(self, prefix: str, before: Any) -> None:
        """Abort uploads that a dead earlier run left behind (the caller holds the lock)."""
        live = self._live()
        done = self._each(
            "cleanup", {loc.name: partial(loc.cleanup_incomplete, prefix, before) for loc in live}
        )
        self._raise_if_required_silent()
        for loc in live:
            if loc.name in self._dropped:
                continue
            try:
                removed = done[loc.name].result(self._timeout)
            except StrongroomError as exc:
                log.warning("cleanup of %s skipped: %s", loc.name, exc)
                continue
            if removed:
                store.record_event(
                    self.id,
                    "cleaned",
                    location=loc.name,
                    message=f"aborted {removed} incomplete upload(s)",
                )

    # -- the stream ----------------------------------------------------------------------------

    def stream(
        self,
        start_source: Callable[[], Source],
        build: ManifestBuilder,
        *,
        codec: Codec | None = None,
    ) -> Stored:
        """Store one stream; ``codec`` is the compression stage to use instead of the configured
        codec (``none`` for a source that arrives already compressed)."""
        writers, failed = self._open_writers()
        required = frozenset(loc.name for loc in self.rt.locations if loc.required)
        unfinished = {n: LocationOutcome(n) for n in writers}
        try:
            source = start_source()
        except BaseException as exc:  # pg_dump could not start: no upload may stay open
            settle(writers, unfinished, commit=False)
            self._abandon({**unfinished, **failed}, exc)
            raise
        try:
            result = stream_to_locations(
                source,
                codec or self.rt.codec,
                self.rt.keyring,
                writers,
                progress=self._progress,
                stall_timeout=self._timeout,
                stop_on_failure_of=required,
                adapt=True,
            )
            outcomes = {**result.outcomes, **failed}
            if self._lost(outcomes):
                source.kill()  # no point in reading on: a required (or every) location failed
                settle(writers, result.outcomes, commit=False)
                return self._finish(result, outcomes, None, None)
            source_result = source.finish()
        except BaseException as exc:
            source.kill()
            settle(writers, unfinished, commit=False)
            self._abandon({**unfinished, **failed}, exc)
            raise
        try:
            settle(writers, result.outcomes, commit=True)
            manifest = build(result, source_result)
            return self._finish(result, outcomes, manifest, source_result)
        except BaseException as exc:  # interrupted, or the manifest could not be built
            self._abandon(outcomes, exc)
            raise

    def _abandon(self, outcomes: dict[str, LocationOutcome], exc: BaseException) -> None:
        """The run ends in an exception: withdraw what was committed, record every copy FAILED.

        Never raises over ``exc``: a second failure here is logged, the first one reported.
        """
        try:
            self._withdraw(outcomes)
            why = _reason(exc) if isinstance(exc, StrongroomError | Interrupted) else ""
            for name, o in outcomes.items():
                store.record_copy(
                    self.id,
                    name,
                    key=self.key,
                    manifest_key=manifest_key_for(self.key),
                    status=CopyStatus.FAILED,
                    size_bytes=o.bytes_written or None,
                    error=_reason(o.error) or why or f"the run failed: {type(exc).__name__}",
                    duration_seconds=o.duration or None,
                )
        except Exception as cleanup:  # the catalog may be what failed
            log.warning("could not record the copies of %s: %s", self.id, cleanup)

    def _open_writers(self) -> tuple[dict[str, ObjectWriter], dict[str, LocationOutcome]]:
        writers: dict[str, ObjectWriter] = {}
        failed: dict[str, LocationOutcome] = {}
        for name, problem in self.rt.unconfigured.items():
            failed[name] = LocationOutcome(name, error=ConfigError(problem))
        live = self._live()
        opened = self._each("open", {loc.name: partial(loc.open_writer, self.key) for loc in live})
        for name, error in self._dropped.items():
            failed[name] = LocationOutcome(name, error=error)
        for loc in live:
            if loc.name in self._dropped:
                continue
            try:
                writers[loc.name] = opened[loc.name].result(self._timeout)
            except StrongroomError as exc:
                failed[loc.name] = LocationOutcome(loc.name, error=exc)
        if self._silent:
            settle(writers, {n: LocationOutcome(n) for n in writers}, commit=False)
            self._raise_if_required_silent()
        return writers, failed

    # -- every location at once, under one deadline -------------------------------------------

    @property
    def _timeout(self) -> float:
        return self.rt.config.location_timeout

    def _live(self) -> list[Location]:
        """The locations still in this run: not dropped by an earlier step for silence."""
        return [loc for loc in self.rt.locations if loc.name not in self._dropped]

    def _each(self, step: str, calls: dict[str, Callable[[], T]]) -> dict[str, Pending[T]]:
        """Run ``step`` on every location at once under ``BACKUP_LOCATION_TIMEOUT``.

        A silent optional location must not hold up the others: it is dropped from this run
        with "no answer in N s" (the run ends PARTIAL); a silent required one fails the run.
        """
        pending = deadline.all_within(self._timeout, calls)
        for name, one in pending.items():
            if one.done:
                continue
            reason = f"{name}: no answer in {self._timeout:g} s ({step})"
            if self._required(name):
                self._silent[name] = LocationUnavailable(
                    f"{reason}: a required location must answer (BACKUP_LOCATION_TIMEOUT)", name
                )
                continue
            log.warning("%s; dropped from this run", reason)
            self._dropped[name] = LocationUnavailable(f"{reason}, dropped from this run", name)
        return pending

    def _raise_if_required_silent(self) -> None:
        """The run fails with the first required location that stayed silent."""
        for error in self._silent.values():
            raise error

    def _progress(self, raw: int, stored: int) -> None:
        if self.user_progress is not None:
            self.user_progress(raw, stored)
        now = time.monotonic()
        if now - self._last_beat >= _HEARTBEAT_EVERY:
            self._last_beat = now
            store.heartbeat(self.id)

    # -- after the stream ----------------------------------------------------------------------

    def _finish(
        self,
        result: StreamResult,
        outcomes: dict[str, LocationOutcome],
        manifest: Manifest | None,
        source_result: Any,
    ) -> Stored:
        if manifest is None or self._required_failed(outcomes):
            self._withdraw(outcomes)
        else:
            self._publish_manifests(outcomes, manifest)
            if self._required_failed(outcomes):
                self._withdraw(outcomes)
        self._record_copies(outcomes, result)
        reasons = {n: _reason(o.error) for n, o in outcomes.items() if not o.ok}
        if manifest is None or self._required_failed(outcomes):
            status = BackupStatus.FAILED
        elif reasons:
            status = BackupStatus.PARTIAL
        else:
            status = BackupStatus.COMPLETED
        return Stored(
            self.id,
            self.key,
            status,
            "; ".join(_labelled(n, r) for n, r in reasons.items()),
            result,
            outcomes,
            manifest,
            source_result,
            {n: ("ok" if o.ok else reasons[n]) for n, o in outcomes.items()},
        )

    def _publish_manifests(self, outcomes: dict[str, LocationOutcome], manifest: Manifest) -> None:
        """The manifest goes last: its presence is what makes a copy complete and restorable."""
        document = manifest.to_document(self.rt.keyring)
        for loc in self._committed(outcomes):
            try:
                loc.put_bytes(manifest_key_for(self.key), document)
            except StrongroomError as exc:
                outcomes[loc.name].error = exc
                quiet_delete(loc, self.key)

    def _withdraw(self, outcomes: dict[str, LocationOutcome]) -> None:
        """A FAILED object must leave nothing that looks complete anywhere."""
        for loc in self._committed(outcomes):
            quiet_delete(loc, manifest_key_for(self.key))
            quiet_delete(loc, self.key)
            outcomes[loc.name].committed = False
            self._withdrawn.add(loc.name)

    def _committed(self, outcomes: dict[str, LocationOutcome]) -> list[Location]:
        return [
            loc
            for loc in self.rt.locations
            if loc.name in outcomes and outcomes[loc.name].committed and outcomes[loc.name].ok
        ]

    def _record_copies(self, outcomes: dict[str, LocationOutcome], result: StreamResult) -> None:
        for name, o in outcomes.items():
            stored = o.ok and o.committed
            why = WITHDRAWN if name in self._withdrawn else STOPPED
            store.record_copy(
                self.id,
                name,
                key=self.key,
                manifest_key=manifest_key_for(self.key),
                status=CopyStatus.STORED if stored else CopyStatus.FAILED,
                size_bytes=result.stored_size if o.ok else o.bytes_written,
                checksum=result.sha256 if o.ok else "",
                error="" if stored else _reason(o.error) or why,
                duration_seconds=o.duration,
            )

    def _required(self, name: str) -> bool:
        return self.rt.config.location(name).required

    def _required_failed(self, outcomes: dict[str, LocationOutcome]) -> bool:
        return any(not o.ok and self._required(n) for n, o in outcomes.items())

    def _lost(self, outcomes: dict[str, LocationOutcome]) -> bool:
        """A required location failed, or none is left: the object cannot be stored."""
        return self._required_failed(outcomes) or not any(o.ok for o in outcomes.values())


def _reason(error: BaseException | None) -> str:
    if error is None:
        return ""
    return str(error) or type(error).__name__


def _labelled(name: str, reason: str) -> str:
    """``name: reason``, once: storage errors already start with their location's name."""
    return reason if reason.startswith(f"{name}:") else f"{name}: {reason}"


def _saved(result: StreamResult) -> float:
    if result.raw_size <= 0:
        return 0.0
    return max(0.0, 1.0 - result.compressed_size / result.raw_size)


def quiet_delete(loc: Location, key: str) -> None:
    """Delete ``key``, logging (not raising) a failure: used where cleanup must not mask."""
    try:
        loc.delete(key)
    except StorageError as exc:
        log.warning("could not delete %s from %s: %s", key, loc.name, exc)
