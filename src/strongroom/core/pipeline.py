"""The streaming backup pipeline: source -> compress -> encrypt -> hash -> every location at once.

No temporary files and bounded memory whatever the database size: the producer reads the source
in fixed chunks, and each location drains a small bounded queue in its own thread, so one dump
feeds all locations. A location that fails is dropped (its thread keeps draining so it never
blocks the producer) and the others go on; a location that accepts nothing for ``stall_timeout``
is dropped too, and its writer, whose thread may be stuck in a socket read that no one can
interrupt, is abandoned: aborted from a daemon thread nobody waits for. Nothing is committed
here: the caller decides, once the source has exited cleanly, whether each upload is committed or
aborted.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from strongroom.core import deadline
from strongroom.core.adaptive import LevelController, Pacer
from strongroom.core.codecs import AdaptiveZstdWriter, Codec, CompressWriter
from strongroom.core.crypto import Keyring
from strongroom.core.storage.base import ObjectWriter
from strongroom.core.streams import Reader
from strongroom.errors import LocationUnavailable

CHUNK_SIZE = 1 << 20
QUEUE_CHUNKS = 8
#: Seconds a location may accept nothing before it is dropped (``BACKUP_LOCATION_TIMEOUT``).
STALL_TIMEOUT = 60.0
#: Seconds a failed or interrupted stream waits for each location to return from its write.
STOP_WAIT = 5.0
_END = b""

Progress = Callable[[int, int], None]


@dataclass
class LocationOutcome:
    """How one location fared: bytes accepted, time spent, and the error if it failed."""

    name: str
    bytes_written: int = 0
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    error: BaseException | None = None
    committed: bool = False
    #: Dropped while its writer may still be busy in its thread: abort it without waiting.
    abandoned: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class _LocationFeeder(threading.Thread):
    """Moves chunks from a bounded queue into one location's ``ObjectWriter``."""

    def __init__(self, name: str, writer: ObjectWriter, depth: int) -> None:
        super().__init__(name=f"strongroom-upload-{name}", daemon=True)
        self.writer = writer
        self.queue: queue.Queue[bytes] = queue.Queue(maxsize=depth)
        self.outcome = LocationOutcome(name)
        self.dropped = False

    def run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is _END:
                break
            if self.outcome.error is not None:
                continue  # keep draining so the producer never blocks on a dead location
            try:
                self.writer.write(chunk)
            except BaseException as exc:
                if self.outcome.error is None:  # a stall already said why it was dropped
                    self.outcome.error = exc
                continue
            if not self.dropped:
                self.outcome.bytes_written += len(chunk)
        if not self.dropped:
            self.outcome.duration = time.monotonic() - self.outcome.started

    def drop(self, seconds: float) -> None:
        """Give up on a location that accepted nothing for ``seconds``; never blocks.

        The thread may be stuck in a write: the queue is emptied and ended so it exits as soon
        as that write returns, and the writer is marked for an abort nobody waits for.
        """
        name = self.outcome.name
        self.dropped = self.outcome.abandoned = True
        self.outcome.duration = time.monotonic() - self.outcome.started
        if self.outcome.error is None:
            self.outcome.error = LocationUnavailable(
                f"{name}: no answer in {seconds:g} s (accepted nothing mid-upload), dropped "
                f"from this run",
                name,
            )
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(_END)


class FanOut:
    """The last push stage: SHA-256 and size of the stored bytes, then one queue per location."""

    def __init__(
        self,
        writers: Mapping[str, ObjectWriter],
        *,
        depth: int = QUEUE_CHUNKS,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.stall_timeout = stall_timeout
        self.feeders = [_LocationFeeder(name, w, depth) for name, w in writers.items()]
        for feeder in self.feeders:
            feeder.start()

    def write(self, data: bytes, /) -> int:
        if not data:
            return 0
        chunk = bytes(data)
        self.sha256.update(chunk)
        self.size += len(chunk)
        for feeder in self.feeders:
            if feeder.dropped or feeder.outcome.error is not None:
                continue
            try:
                feeder.queue.put(chunk, timeout=self.stall_timeout)
            except queue.Full:
                feeder.drop(self.stall_timeout)
        return len(data)

    def close(self) -> None:
        """End every queue and wait for each location to drain it, while it makes progress."""
        for feeder in self.feeders:
            if feeder.dropped:
                continue
            try:
                feeder.queue.put(_END, timeout=self.stall_timeout)
            except queue.Full:
                feeder.drop(self.stall_timeout)
        for feeder in self.feeders:
            self._drain(feeder)

    def _drain(self, feeder: _LocationFeeder) -> None:
        """Join ``feeder``; one that writes nothing for ``stall_timeout`` is dropped instead."""
        while not feeder.dropped:
            before = feeder.outcome.bytes_written
            feeder.join(self.stall_timeout)
            if not feeder.is_alive():
                return
            if feeder.outcome.bytes_written == before:
                feeder.drop(self.stall_timeout)

    def stop(self) -> None:
        """The stream failed or was interrupted: every feeder ends after the write it is in.

        Queued chunks are thrown away (the uploads are aborted next) and each feeder gets
        ``STOP_WAIT`` seconds to return from its current write, so an interrupted run's
        cleanup never waits a whole ``stall_timeout`` on a location.
        """
        for feeder in self.feeders:
            with contextlib.suppress(queue.Empty):
                while True:
                    feeder.queue.get_nowait()
            with contextlib.suppress(queue.Full):
                feeder.queue.put_nowait(_END)
        deadline = time.monotonic() + STOP_WAIT
        for feeder in self.feeders:
            feeder.join(max(0.0, deadline - time.monotonic()))

    def lost(self, required: frozenset[str]) -> bool:
        """Every location failed, or one of ``required`` did."""
        failed = {f.outcome.name for f in self.feeders if f.outcome.error is not None}
        return len(failed) == len(self.feeders) or bool(failed & required)

    def outcomes(self) -> dict[str, LocationOutcome]:
        return {f.outcome.name: f.outcome for f in self.feeders}


@dataclass(frozen=True)
class StreamResult:
    """Sizes and checksum of one streamed backup, plus each location's outcome."""

    raw_size: int
    compressed_size: int
    stored_size: int
    sha256: str
    outcomes: dict[str, LocationOutcome]
    #: Adaptive zstd only: per level used, (raw bytes compressed at it, bytes they became).
    levels: dict[int, tuple[int, int]] = field(default_factory=dict)


def stream_to_locations(
    source: Reader,
    codec: Codec,
    keyring: Keyring,
    writers: Mapping[str, ObjectWriter],
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
    stall_timeout: float = STALL_TIMEOUT,
    stop_on_failure_of: frozenset[str] = frozenset(),
    adapt: bool = False,
) -> StreamResult:
    """Push ``source`` through the codec and the cipher into every writer, uncommitted.

    Reading stops as soon as every location has failed, or any named in
    ``stop_on_failure_of`` (the required ones) has: the caller then stops the source at once
    instead of waiting for it to fill a pipe nobody drains. With ``adapt`` and an adaptive
    codec, the level follows the time spent waiting for ``source`` (:mod:`.adaptive`).
    """
    fanout = FanOut(writers, stall_timeout=stall_timeout)
    encryptor = keyring.encrypting_writer(fanout)
    compressor: CompressWriter
    pacer: Pacer | None = None
    if adapt and codec.adaptive:
        assert codec.min_level is not None
        compressor = codec.adaptive_writer(encryptor)
        pacer = Pacer(compressor, LevelController(codec.min_level, codec.level))
    else:
        compressor = codec.compress_writer(encryptor)
    clock = time.monotonic
    raw = 0
    try:
        while True:
            started = clock()
            chunk = source.read(chunk_size)
            if not chunk:
                break
            read = clock()
            raw += len(chunk)
            compressor.write(chunk)
            if pacer is not None:
                pacer.tick(read - started, clock() - read)
            if progress is not None:
                progress(raw, fanout.size)
            if fanout.lost(stop_on_failure_of):
                break  # the object cannot be stored: stop reading, the caller reports why
    except BaseException:
        fanout.stop()  # the caller aborts every upload: no frame to finish, nothing to drain
        raise
    compressor.close()  # flushes codec -> cipher -> fanout, and joins the feeders
    return StreamResult(
        raw_size=raw,
        compressed_size=int(getattr(compressor, "bytes_out", 0)),
        stored_size=fanout.size,
        sha256=fanout.sha256.hexdigest(),
        outcomes=fanout.outcomes(),
        levels=dict(compressor.levels) if isinstance(compressor, AdaptiveZstdWriter) else {},
    )


def settle(
    writers: Mapping[str, ObjectWriter],
    outcomes: Mapping[str, LocationOutcome],
    *,
    commit: bool,
) -> None:
    """Commit every healthy upload (in parallel) when ``commit``, abort everything else.

    An abort never raises: its job is to leave nothing behind, and a failure to abort is
    recorded on the outcome for ``cleanup_incomplete`` to mop up next time. A dropped
    (abandoned) location is aborted from a daemon thread nobody waits for: it stopped
    answering, and its abort could hang as long as its writes did; what it leaves is mopped up
    by the next run's ``cleanup_incomplete``.
    """
    waited = [n for n in writers if not outcomes[n].abandoned]
    for name in writers:
        if outcomes[name].abandoned:
            deadline.abandon(writers[name].abort, f"strongroom-abort-{name}")

    def one(name: str) -> None:
        outcome = outcomes[name]
        writer = writers[name]
        if commit and outcome.ok:
            try:
                writer.commit()
                outcome.committed = True
                return
            except BaseException as exc:
                outcome.error = exc
        with contextlib.suppress(BaseException):
            writer.abort()

    with ThreadPoolExecutor(max_workers=max(1, len(waited))) as pool:
        list(pool.map(one, waited))
