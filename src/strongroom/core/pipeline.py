"""The streaming backup pipeline: source -> compress -> encrypt -> hash -> every location at once.

No temporary files and bounded memory whatever the database size: the producer reads the source
in fixed chunks, and each location drains a small bounded queue in its own thread, so one dump
feeds all locations. A location that fails is dropped (its thread keeps draining so it never
blocks the producer) and the others go on; a location that stalls longer than ``stall_timeout``
is dropped too. Nothing is committed here: the caller decides, once the source has exited cleanly,
whether each upload is committed or aborted.
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

from strongroom.core.codecs import Codec
from strongroom.core.crypto import Keyring
from strongroom.core.storage.base import ObjectWriter
from strongroom.core.streams import Reader

CHUNK_SIZE = 1 << 20
QUEUE_CHUNKS = 8
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
                self.outcome.bytes_written += len(chunk)
            except BaseException as exc:
                self.outcome.error = exc
        self.outcome.duration = time.monotonic() - self.outcome.started


class FanOut:
    """The last push stage: SHA-256 and size of the stored bytes, then one queue per location."""

    def __init__(
        self,
        writers: Mapping[str, ObjectWriter],
        *,
        depth: int = QUEUE_CHUNKS,
        stall_timeout: float = 600.0,
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
                feeder.dropped = True
                feeder.outcome.error = TimeoutError(
                    f"location accepted nothing for {self.stall_timeout:.0f} s and was dropped"
                )
        return len(data)

    def close(self) -> None:
        for feeder in self.feeders:
            if not feeder.dropped:
                feeder.queue.put(_END)
        for feeder in self.feeders:
            if not feeder.dropped:
                feeder.join()

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


def stream_to_locations(
    source: Reader,
    codec: Codec,
    keyring: Keyring,
    writers: Mapping[str, ObjectWriter],
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
    stall_timeout: float = 600.0,
    stop_on_failure_of: frozenset[str] = frozenset(),
) -> StreamResult:
    """Push ``source`` through the codec and the cipher into every writer, uncommitted.

    Reading stops as soon as every location has failed, or any named in
    ``stop_on_failure_of`` (the required ones) has: the caller then stops the source at once
    instead of waiting for it to fill a pipe nobody drains.
    """
    fanout = FanOut(writers, stall_timeout=stall_timeout)
    encryptor = keyring.encrypting_writer(fanout)
    compressor = codec.compress_writer(encryptor)
    raw = 0
    try:
        while True:
            chunk = source.read(chunk_size)
            if not chunk:
                break
            raw += len(chunk)
            compressor.write(chunk)
            if progress is not None:
                progress(raw, fanout.size)
            if fanout.lost(stop_on_failure_of):
                break  # the object cannot be stored: stop reading, the caller reports why
    finally:
        compressor.close()  # flushes codec -> cipher -> fanout, and joins the feeders
    return StreamResult(
        raw_size=raw,
        compressed_size=int(getattr(compressor, "bytes_out", 0)),
        stored_size=fanout.size,
        sha256=fanout.sha256.hexdigest(),
        outcomes=fanout.outcomes(),
    )


def settle(
    writers: Mapping[str, ObjectWriter],
    outcomes: Mapping[str, LocationOutcome],
    *,
    commit: bool,
) -> None:
    """Commit every healthy upload (in parallel) when ``commit``, abort everything else.

    An abort never raises: its job is to leave nothing behind, and a failure to abort is
    recorded on the outcome for ``cleanup_incomplete`` to mop up next time.
    """

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

    with ThreadPoolExecutor(max_workers=max(1, len(writers))) as pool:
        list(pool.map(one, list(writers)))
