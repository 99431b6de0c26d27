"""Run the stages of a pull pipeline in threads of their own, connected by bounded queues.

Reading back a copy is three CPU-bound stages (read + SHA-256, AES-GCM, zstd) and a writer; in
one thread they take turns on one core. hashlib, the cipher and zstandard release the GIL on
large buffers, so with each stage in its own thread they overlap on the cores there are.

A :class:`Pipeline` owns its stages: leaving its ``with`` block, by the end of the data, an
error in any stage or a signal's ``Interrupted`` in the caller, stops every thread and joins it
before the sources are closed. An error in a stage's thread is raised again, as itself, in
whoever reads that stage next, so it reaches the caller through the stages downstream exactly
as it would without threads. Memory stays bounded: at most ``depth`` chunks wait per stage.
"""

from __future__ import annotations

import queue
import threading
from types import TracebackType

from strongroom.core.streams import Reader

CHUNK_SIZE = 1 << 20
DEPTH = 4
#: How often a blocked ``put``/``get`` looks whether the pipeline was stopped.
_POLL = 0.05
#: How long closing waits for a thread still inside its source's ``read`` (e.g. a socket).
_JOIN_TIMEOUT = 30.0


class PipelineStopped(Exception):
    """Raised in a stage's thread when the pipeline was stopped while it waited."""


class _Failed:
    """What a stage's thread hands on instead of a chunk when its source raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead:
    """A :class:`Reader` that pulls ``source`` in a thread, up to ``depth`` chunks ahead.

    ``read`` hands on at most one chunk's bytes per call (the protocol allows short reads).
    Only one thread may read it at a time; it reads ``source`` to the end, once.
    """

    def __init__(
        self,
        source: Reader,
        stop: threading.Event,
        *,
        name: str,
        chunk_size: int = CHUNK_SIZE,
        depth: int = DEPTH,
    ) -> None:
        self.source = source
        self._stop = stop
        self._chunk_size = chunk_size
        self._queue: queue.Queue[bytes | _Failed] = queue.Queue(maxsize=depth)
        self._current = b""
        self._offset = 0
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"readahead-{name}", daemon=True)
        self._thread.start()

    # -- the stage's own thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                data = self.source.read(self._chunk_size)
                if not self._put(data) or not data:
                    return
        except BaseException as exc:  # handed on, raised again by the reader
            self._put(_Failed(exc))

    def _put(self, item: bytes | _Failed) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    # -- the reader's side -----------------------------------------------------------------

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(self._chunk_size):
                parts.append(chunk)
            return b"".join(parts)
        if self._offset >= len(self._current) and not self._next():
            return b""
        start = self._offset
        if start == 0 and size >= len(self._current):
            data = self._current  # the whole chunk: no copy
        else:
            data = self._current[start : start + size]
        self._offset = start + len(data)
        return data

    def _next(self) -> bool:
        """Take the next chunk; False at the end. Re-raises the source's error."""
        if self._error is not None:
            raise self._error
        if self._ended:
            return False
        while True:
            if self._stop.is_set():
                raise PipelineStopped("the read-back pipeline was stopped")
            try:
                item = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                continue
        if isinstance(item, _Failed):
            self._error = item.error
            raise item.error
        if not item:
            self._ended = True
            return False
        self._current, self._offset = item, 0
        return True

    def join(self, timeout: float | None = _JOIN_TIMEOUT) -> None:
        """Wait for the thread (after the pipeline was stopped)."""
        self._thread.join(timeout)

    def close(self) -> None:
        """Stop the pipeline, wait for this stage's thread, then close its source."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.join()
        self.source.close()


class Pipeline:
    """The stages of one read-back; ``with`` it so every thread ends, whatever happens."""

    def __init__(self, *, chunk_size: int = CHUNK_SIZE, depth: int = DEPTH) -> None:
        self.stop = threading.Event()
        self.stages: list[ReadAhead] = []
        self._chunk_size = chunk_size
        self._depth = depth

    def stage(self, source: Reader, name: str) -> ReadAhead:
        """Start reading ``source`` ahead in a thread of its own."""
        ahead = ReadAhead(
            source, self.stop, name=name, chunk_size=self._chunk_size, depth=self._depth
        )
        self.stages.append(ahead)
        return ahead

    def close(self) -> None:
        """Stop every stage and join its thread (all of them stopped first, so none waits on
        another), then close the sources, downstream first."""
        self.stop.set()
        for ahead in self.stages:
            ahead.join()
        for ahead in reversed(self.stages):
            ahead.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
