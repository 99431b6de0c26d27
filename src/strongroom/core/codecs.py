"""Compression, exactly once, in the stream: ``zstd`` (default), ``gzip`` and ``none``.

``pg_dump`` runs with ``-Z0``, so this is the only place a dump is compressed. ``zstd`` on all cores
is the default, adaptive between a floor (level 1) and a ceiling (level 3): a backup's stream
steps its level to the CPU left over (:mod:`strongroom.core.adaptive`), and each level change
starts a new zstd frame, since python-zstandard fixes a compressor's parameters for a whole
frame. A stream is then one or more complete, checksummed frames, which RFC 8878 and ``zstd -d``
read as one stream. ``gzip`` writes a real gzip member (``zlib`` with ``wbits=31``) so the
seed's gzip-9 can be reproduced and the decrypted stream can be read by ``gunzip``.

Decompression is a pull ``Reader`` with bounded output per ``read`` (a highly compressible table
never inflates into memory at once) and it insists on a *complete* stream: a truncated frame,
bytes after the last frame that are not a frame, or a checksum mismatch raise ``IntegrityError``.
python-zstandard's streaming readers end silently on a truncated frame, so ``_ZstdFrameTracker``
walks the frames' block headers alongside the decompressor to know whether each really ended.
A cut exactly between two frames looks like a shorter stream here; the stored object's SHA-256,
the cipher's authenticated end and the manifest's ``raw_size`` each catch it (``readback``).
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
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
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


class AdaptiveZstdWriter(CompressWriter):
    """zstd whose level may change mid-stream: each change finishes the frame and starts one.

    ``levels`` counts, per level, the raw bytes compressed at it and the bytes they became
    (exact: every frame is finished before the next level starts).
    """

    def __init__(self, codec: Codec, downstream: Writer) -> None:
        self._codec = codec
        self.level = codec.level
        super().__init__(codec.zstd_compressor(self.level), downstream)
        self.levels: dict[int, tuple[int, int]] = {}
        self._frame_in = 0
        self._frame_out = 0

    def set_level(self, level: int, /) -> None:
        """Compress what follows at ``level`` (a new frame if this one holds any input)."""
        if level == self.level or self.closed:
            return
        if self.bytes_in > self._frame_in:
            assert self._compressor is not None
            self._emit(self._compressor.flush())
            self._count()
        self.level = level
        self._compressor = self._codec.zstd_compressor(level)

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()
            finally:
                self._count()

    def _count(self) -> None:
        raw, out = self.bytes_in - self._frame_in, self.bytes_out - self._frame_out
        if raw or out:
            before = self.levels.get(self.level, (0, 0))
            self.levels[self.level] = (before[0] + raw, before[1] + out)
        self._frame_in, self._frame_out = self.bytes_in, self.bytes_out


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
    """Follows zstd frames' structure (RFC 8878) to tell complete frames from a cut one.

    Only headers are parsed (5 bytes, then 3 per block of up to 128 KiB); contents are skipped.
    After a frame ends, the next bytes must start another frame (a level change) or be the end;
    anything else sets ``trailing``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 5
        self._on_full: Callable[[bytes], None] = self._frame_header
        self._skip = 0
        self._last = False
        self._checksum = False
        self.frames = 0
        self.complete = False
        self.trailing = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.trailing:
                return
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
            else:
                take = min(self._need - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if self.complete and not _ZSTD_MAGIC.startswith(self._buf[:4]):
                    self.trailing = True  # what follows a finished frame is not a frame
                    return
                if len(self._buf) < self._need:
                    continue
                header = bytes(self._buf)
                self._buf.clear()
                self._on_full(header)
            if self._last and not self._skip:
                self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        self.complete = True
        self._last = False
        self._need, self._on_full = 5, self._frame_header

    def _frame_header(self, header: bytes) -> None:
        if header[:4] != _ZSTD_MAGIC:
            raise ValueError("not a zstd frame (bad magic number)")
        self.complete = False
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

    @property
    def at_end(self) -> bool:
        """At least one frame, and the bytes so far end exactly where a frame ended."""
        return self.complete and not self._buf


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
            read_across_frames=True,
            closefd=False,
        )

    def _fill(self, size: int) -> bytes:
        try:
            out = self._reader.read(size)
        except zstandard.ZstdError as exc:
            if self.tracker.trailing:
                raise self._corrupt("unexpected bytes after the end of the zstd frame") from None
            raise self._corrupt(str(exc)) from None
        if self.tracker.trailing:
            raise self._corrupt("unexpected bytes after the end of the zstd frame")
        if not out:
            if not self.tracker.at_end:
                raise self._corrupt("truncated (the stream ends inside the zstd frame)")
            self._expect_end()
        return out


@dataclass(frozen=True)
class Codec:
    """One configured compression: name, level, file extension and its two stream stages.

    ``min_level`` is set when the level adapts (zstd only): ``level`` is then the ceiling and
    ``min_level`` the floor; ``None`` means every byte is compressed at ``level``.
    """

    name: str
    level: int
    extension: str
    threads: int = -1
    min_level: int | None = None

    @property
    def adaptive(self) -> bool:
        return self.min_level is not None

    def compress_writer(self, downstream: Writer) -> CompressWriter:
        """Push stage at the fixed ``level``; ``close()`` finishes the stream and ``downstream``."""
        if self.name == "zstd":
            return CompressWriter(self.zstd_compressor(self.level), downstream)
        if self.name == "gzip":
            return CompressWriter(zlib.compressobj(self.level, wbits=31), downstream)
        return CompressWriter(None, downstream)

    def adaptive_writer(self, downstream: Writer) -> AdaptiveZstdWriter:
        """Push stage whose level the caller steps (``set_level``) between floor and ceiling."""
        if not self.adaptive or self.name != "zstd":
            raise ValueError(f"codec {self.name} level {self.level} does not adapt")
        return AdaptiveZstdWriter(self, downstream)

    def zstd_compressor(self, level: int) -> _Compressor:
        """A fresh checksummed zstd frame at ``level`` on this codec's threads."""
        options: dict[str, int] = {"threads": self.threads, "write_checksum": 1}
        if self.threads != 0:
            options["job_size"] = ZSTD_JOB_SIZE
        params = zstandard.ZstdCompressionParameters.from_level(level, **options)
        return zstandard.ZstdCompressor(compression_params=params).compressobj()

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


#: The default floor of adaptive zstd (``BACKUP_COMPRESSION_MIN_LEVEL``).
MIN_LEVEL = 1

CODECS: dict[str, _Spec] = {
    "zstd": _Spec("zst", 3, range(1, 23)),
    "gzip": _Spec("gz", 6, range(1, 10)),
    "none": _Spec("", 0, range(0, 1)),
}


def get_codec(
    name: str,
    level: int | None = None,
    threads: int = -1,
    *,
    min_level: int | None = None,
    adapt: bool | None = None,
) -> Codec:
    """The codec called ``name``; ``ConfigError`` (one line, valid values) if it is not valid.

    ``adapt`` (default: on for zstd) makes ``level`` the ceiling and ``min_level`` (default
    ``MIN_LEVEL``) the floor of the level a backup's stream may step to.
    """
    key = (name or "").strip().lower()
    spec = CODECS.get(key)
    if spec is None:
        raise ConfigError(
            f"BACKUP_COMPRESSION {name!r} is not a known codec; use one of: {', '.join(CODECS)}"
        )
    chosen = _level(key, spec, "BACKUP_COMPRESSION_LEVEL", level)
    if threads < -1:
        raise ConfigError(
            f"BACKUP_COMPRESSION_THREADS {threads} is invalid; use -1 (all cores), "
            "0 (compress in the calling thread) or a number of worker threads"
        )
    if adapt is None:
        adapt = key == "zstd"
    if adapt and key != "zstd":
        raise ConfigError(
            f"BACKUP_COMPRESSION_ADAPT is on, but only zstd adapts its level, not {key}; "
            "set BACKUP_COMPRESSION_ADAPT=false or BACKUP_COMPRESSION=zstd"
        )
    floor = None
    if adapt:
        floor = _level(key, spec, "BACKUP_COMPRESSION_MIN_LEVEL", min_level, MIN_LEVEL)
        if floor > chosen:
            raise ConfigError(
                f"BACKUP_COMPRESSION_MIN_LEVEL {floor} is above BACKUP_COMPRESSION_LEVEL "
                f"{chosen} (the ceiling of adaptive zstd); lower the floor or raise the ceiling"
            )
    return Codec(key, chosen, spec.extension, threads, floor)


def _level(key: str, spec: _Spec, setting: str, level: int | None, default: int = 0) -> int:
    chosen = (default or spec.default_level) if level is None else level
    if chosen not in spec.levels:
        valid = f"{spec.levels.start}-{spec.levels.stop - 1}" if len(spec.levels) > 1 else "0"
        raise ConfigError(
            f"{setting} {level} is out of range for {key}; use {valid} "
            f"(default {default or spec.default_level})"
        )
    return chosen
