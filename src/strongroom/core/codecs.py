"""Compression, exactly once, in the stream: ``zstd`` (default), ``gzip`` and ``none``.

``pg_dump`` runs with ``-Z0``, so this is the only place a dump is compressed. ``zstd`` level 3
on all cores is the default (about 10x faster than gzip-9 at a similar ratio); ``gzip`` writes a
real gzip member (``zlib`` with ``wbits=31``) so the seed's gzip-9 can be reproduced and the
decrypted stream can be read by ``gunzip``.

Decompression is a pull ``Reader`` with bounded output per ``read`` (a highly compressible table
never inflates into memory at once) and it insists on a *complete* stream: a truncated frame,
bytes after it, or a checksum mismatch raise ``IntegrityError``. python-zstandard's streaming
readers end silently on a truncated frame, so ``_ZstdFrameTracker`` walks the frame's block
headers alongside the decompressor to know whether the frame really ended.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol, cast

import zstandard

from strongroom.core.streams import Reader, Writer
from strongroom.errors import ConfigError, IntegrityError

_READ_SIZE = 1 << 17
#: Input per multi-threaded zstd job. zstd's default (4 windows: 8 MiB at level 3) keeps
#: several jobs' input and output buffers in flight per worker, about 60 MiB with two workers;
#: 2 MiB jobs hold about 18 MiB for 1% more output and no measurable loss of speed.
ZSTD_JOB_SIZE = 2 << 20


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class CompressWriter:
    """Push stage: compresses into ``downstream``; counts raw ``bytes_in`` and ``bytes_out``."""

    def __init__(self, compressor: _Compressor | None, downstream: Writer) -> None:
        self._compressor = compressor
        self.downstream = downstream
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False

    def write(self, data: bytes, /) -> int:
        if self.closed:
            raise ValueError("write to a closed compress writer")
        if not data:
            return 0
        out = self._compressor.compress(data) if self._compressor is not None else bytes(data)
        self.bytes_in += len(data)
        self._emit(out)
        return len(data)

    def close(self) -> None:
        """Finish the frame and close downstream (always, even when the flush fails)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._compressor is not None:
                self._emit(self._compressor.flush())
        finally:
            self.downstream.close()

    def _emit(self, out: bytes) -> None:
        if out:
            self.downstream.write(out)
            self.bytes_out += len(out)


class _DecompressReader:
    """Pull stage shared by the codecs: ``_fill`` produces the next decompressed chunk."""

    codec_name = ""

    def __init__(self, source: Reader) -> None:
        self.source = source
        self.bytes_in = 0
        self.bytes_out = 0
        self._buffer = b""
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        while not self._buffer and not self._done:
            self._buffer = self._fill(max(size, 1))
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        self.bytes_out += len(out)
        return out

    def close(self) -> None:
        self.source.close()

    def _fill(self, size: int) -> bytes:
        raise NotImplementedError

    def _source_read(self, size: int) -> bytes:
        data = self.source.read(size)
        self.bytes_in += len(data)
        return data

    def _expect_end(self) -> None:
        """After the stream's end, the source must be exhausted too (drains it to EOF)."""
        self._done = True
        if self._source_read(_READ_SIZE):
            raise self._corrupt("unexpected bytes after the end of the compressed stream")

    def _corrupt(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"{self.codec_name} stream is corrupt after {self.bytes_out} output bytes: {why}"
        )


class _GzipReader(_DecompressReader):
    codec_name = "gzip"

    def __init__(self, source: Reader) -> None:
        super().__init__(source)
        self._z = zlib.decompressobj(wbits=31)
        self._pending = b""

    def _fill(self, size: int) -> bytes:
        if not self._pending and not self._z.eof:
            self._pending = self._source_read(_READ_SIZE)
            if not self._pending:
                raise self._corrupt("truncated (the stream ends before the gzip trailer)")
        try:
            out = self._z.decompress(self._pending, size)
        except zlib.error as exc:
            raise self._corrupt(str(exc)) from None
        self._pending = self._z.unconsumed_tail
        if self._z.eof:
            if self._z.unused_data:
                raise self._corrupt("unexpected bytes after the end of the gzip member")
            if not out:
                self._expect_end()
        return out


class _PlainReader(_DecompressReader):
    codec_name = "none"

    def _fill(self, size: int) -> bytes:
        data = self._source_read(size)
        if not data:
            self._done = True
        return data


class _ZstdFrameTracker:
    """Follows one zstd frame's structure (RFC 8878) to tell a complete frame from a cut one.

    Only headers are parsed (5 bytes, then 3 per block of up to 128 KiB); contents are skipped.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 5
        self._on_full: Callable[[bytes], None] = self._frame_header
        self._skip = 0
        self._last = False
        self._checksum = False
        self.complete = False
        self.trailing = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.complete:
                self.trailing = True
                return
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
            else:
                take = min(self._need - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < self._need:
                    continue
                header = bytes(self._buf)
                self._buf.clear()
                self._on_full(header)
            if self._last and not self._skip:
                self.complete = True

    def _frame_header(self, header: bytes) -> None:
        if header[:4] != b"\x28\xb5\x2f\xfd":
            raise ValueError("not a zstd frame (bad magic number)")
        fhd = header[4]
        if fhd & 0x08:
            raise ValueError("reserved bit set in the zstd frame header")
        single = (fhd >> 5) & 1
        content_size = (single, 2, 4, 8)[fhd >> 6]
        self._checksum = bool((fhd >> 2) & 1)
        self._skip = (1 - single) + (0, 1, 2, 4)[fhd & 3] + content_size
        self._need, self._on_full = 3, self._block

    def _block(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        last, kind, size = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:
            raise ValueError("reserved zstd block type")
        self._skip = 1 if kind == 1 else size
        if last:
            self._last = True
            self._skip += 4 if self._checksum else 0


class _TrackedSource:
    """Hands the decompressor the source's bytes while the frame tracker watches them."""

    def __init__(self, owner: _ZstdReader) -> None:
        self.owner = owner

    def read(self, size: int = -1) -> bytes:
        data = self.owner._source_read(size if size >= 0 else _READ_SIZE)
        try:
            self.owner.tracker.feed(data)
        except ValueError as exc:
            raise self.owner._corrupt(str(exc)) from None
        return data


class _ZstdReader(_DecompressReader):
    codec_name = "zstd"

    def __init__(self, source: Reader) -> None:
        super().__init__(source)
        self.tracker = _ZstdFrameTracker()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], _TrackedSource(self)),
            read_size=_READ_SIZE,
            read_across_frames=False,
            closefd=False,
        )

    def _fill(self, size: int) -> bytes:
        try:
            out = self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise self._corrupt(str(exc)) from None
        if self.tracker.trailing:
            raise self._corrupt("unexpected bytes after the end of the zstd frame")
        if not out:
            if not self.tracker.complete:
                raise self._corrupt("truncated (the stream ends inside the zstd frame)")
            self._expect_end()
        return out


@dataclass(frozen=True)
class Codec:
    """One configured compression: name, level, file extension and its two stream stages."""

    name: str
    level: int
    extension: str
    threads: int = -1

    def compress_writer(self, downstream: Writer) -> CompressWriter:
        """Push stage; ``close()`` finishes the stream and closes ``downstream``."""
        if self.name == "zstd":
            options: dict[str, int] = {"threads": self.threads, "write_checksum": 1}
            if self.threads != 0:
                options["job_size"] = ZSTD_JOB_SIZE
            params = zstandard.ZstdCompressionParameters.from_level(self.level, **options)
            cctx = zstandard.ZstdCompressor(compression_params=params)
            return CompressWriter(cctx.compressobj(), downstream)
        if self.name == "gzip":
            return CompressWriter(zlib.compressobj(self.level, wbits=31), downstream)
        return CompressWriter(None, downstream)

    def decompress_reader(self, source: Reader) -> Reader:
        """Pull stage; corrupt, truncated or over-long input raises ``IntegrityError``."""
        readers: dict[str, type[_DecompressReader]] = {
            "zstd": _ZstdReader,
            "gzip": _GzipReader,
            "none": _PlainReader,
        }
        return readers[self.name](source)


@dataclass(frozen=True)
class _Spec:
    extension: str
    default_level: int
    levels: range


CODECS: dict[str, _Spec] = {
    "zstd": _Spec("zst", 3, range(1, 23)),
    "gzip": _Spec("gz", 6, range(1, 10)),
    "none": _Spec("", 0, range(0, 1)),
}


def get_codec(name: str, level: int | None = None, threads: int = -1) -> Codec:
    """The codec called ``name``; ``ConfigError`` (one line, valid values) if it is not valid."""
    key = (name or "").strip().lower()
    spec = CODECS.get(key)
    if spec is None:
        raise ConfigError(
            f"BACKUP_COMPRESSION {name!r} is not a known codec; use one of: {', '.join(CODECS)}"
        )
    chosen = spec.default_level if level is None else level
    if chosen not in spec.levels:
        valid = f"{spec.levels.start}-{spec.levels.stop - 1}" if len(spec.levels) > 1 else "0"
        raise ConfigError(
            f"BACKUP_COMPRESSION_LEVEL {level} is out of range for {key}; use {valid} "
            f"(default {spec.default_level})"
        )
    if threads < -1:
        raise ConfigError(
            f"BACKUP_COMPRESSION_THREADS {threads} is invalid; use -1 (all cores), "
            "0 (compress in the calling thread) or a number of worker threads"
        )
    return Codec(key, chosen, spec.extension, threads)
