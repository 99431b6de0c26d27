"""Codecs: round trips, standard formats, byte counts, and complete-stream checks (no servers)."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.core.codecs import Codec, get_codec
from strongroom.errors import ConfigError, IntegrityError

MIB = 1 << 20
NAMES = ("zstd", "gzip", "none")


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closes = 0

    def write(self, data: bytes, /) -> int:
        assert self.closes == 0, "write after close"
        self.chunks.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.closes += 1

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def compress(codec: Codec, plain: bytes, chunk: int = 64 * 1024) -> bytes:
    sink = Sink()
    writer = codec.compress_writer(sink)
    for start in range(0, len(plain), chunk):
        writer.write(plain[start : start + chunk])
    writer.close()
    writer.close()
    assert sink.closes == 1
    assert writer.bytes_in == len(plain)
    assert writer.bytes_out == len(sink.data)
    return sink.data


def decompress(codec: Codec, data: bytes, read_size: int = MIB) -> bytes:
    reader = codec.decompress_reader(io.BytesIO(data))
    parts = []
    while chunk := reader.read(read_size):
        assert len(chunk) <= read_size
        parts.append(chunk)
    reader.close()
    return b"".join(parts)


def dumpish(size: int) -> bytes:
    """Compressible, dump-like bytes: repeated rows with varying numbers."""
    rows = b"".join(
        b"%d\tcustomer-%d\t%d.%02d\tactive\n" % (i, i % 997, i * 7, i % 100)
        for i in range(size // 20 + 1)
    )
    return rows[:size]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [0, 1, 1000, 3 * MIB + 7])
def test_round_trip(name: str, size: int) -> None:
    codec = get_codec(name)
    plain = dumpish(size)
    assert decompress(codec, compress(codec, plain)) == plain


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(
    plain=st.binary(max_size=50_000),
    chunk=st.integers(min_value=1, max_value=9000),
    read_size=st.integers(min_value=1, max_value=9000),
)
def test_round_trip_any_chunking(name: str, plain: bytes, chunk: int, read_size: int) -> None:
    codec = get_codec(name, threads=0)
    assert decompress(codec, compress(codec, plain, chunk), read_size) == plain


def test_gzip_is_real_gzip() -> None:
    plain = dumpish(2 * MIB)
    for level in (1, 6, 9):
        stored = compress(get_codec("gzip", level), plain)
        assert stored[:2] == b"\x1f\x8b"
        assert gzip.decompress(stored) == plain
    # level 9 is byte-for-byte what zlib's gzip-9 produces: the seed's setting is reproducible
    z = zlib.compressobj(9, wbits=31)
    assert compress(get_codec("gzip", 9), plain) == z.compress(plain) + z.flush()


def test_zstd_is_a_standard_frame_with_checksum() -> None:
    plain = dumpish(2 * MIB)
    stored = compress(get_codec("zstd"), plain)
    assert zstandard.get_frame_parameters(stored).has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == plain
    assert len(stored) < len(plain) // 4


@pytest.mark.parametrize("threads", [-1, 0, 1, 3])
def test_zstd_threads(threads: int) -> None:
    codec = get_codec("zstd", threads=threads)
    assert codec.threads == threads
    plain = dumpish(5 * MIB)
    assert decompress(codec, compress(codec, plain, chunk=MIB)) == plain


def test_compressed_size_is_counted() -> None:
    codec = get_codec("zstd")
    sink = Sink()
    writer = codec.compress_writer(sink)
    writer.write(dumpish(MIB))
    writer.close()
    assert writer.bytes_in == MIB
    assert writer.bytes_out == len(sink.data) < MIB


def test_none_passes_through() -> None:
    assert compress(get_codec("none"), b"abc") == b"abc"


def test_defaults_and_extensions() -> None:
    assert get_codec("zstd") == Codec("zstd", 3, "zst", -1, min_level=1)
    assert get_codec("zstd", adapt=False) == Codec("zstd", 3, "zst", -1)
    assert not get_codec("gzip").adaptive and not get_codec("none").adaptive
    assert get_codec("gzip").level == 6 and get_codec("gzip").extension == "gz"
    assert get_codec("none").level == 0 and get_codec("none").extension == ""
    assert get_codec(" ZSTD ", 19).level == 19


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("gzip", 10), "BACKUP_COMPRESSION_LEVEL 10 is out of range for gzip; use 1-9 (default 6)"),
        (("gzip", 0), "use 1-9"),
        (("zstd", 23), "BACKUP_COMPRESSION_LEVEL 23 is out of range for zstd; use 1-22"),
        (("zstd", 0), "use 1-22"),
        (("none", 3), "use 0"),
        (("lz4",), "BACKUP_COMPRESSION 'lz4' is not a known codec; use one of: zstd, gzip, none"),
        (("",), "use one of: zstd, gzip, none"),
    ],
)
def test_invalid_settings(args: tuple[str, int], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        get_codec(*args)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_invalid_threads() -> None:
    with pytest.raises(ConfigError, match="BACKUP_COMPRESSION_THREADS -2 is invalid"):
        get_codec("zstd", threads=-2)


# --- damaged input -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored() -> dict[str, bytes]:
    plain = dumpish(MIB) + os.urandom(200_000)
    return {name: compress(get_codec(name), plain) for name in ("zstd", "gzip")}


@pytest.mark.parametrize("name", ["zstd", "gzip"])
@settings(max_examples=60, deadline=None)
@given(fraction=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_truncation_anywhere_is_corrupt(
    stored: dict[str, bytes], name: str, fraction: float
) -> None:
    data = stored[name]
    with pytest.raises(IntegrityError, match="stream is corrupt"):
        decompress(get_codec(name), data[: int(len(data) * fraction)])


@pytest.mark.parametrize("name", ["zstd", "gzip"])
@pytest.mark.parametrize("cut", [0, 1, 4, 5, 8, 12, -4, -1])
def test_truncation_at_the_edges(stored: dict[str, bytes], name: str, cut: int) -> None:
    with pytest.raises(IntegrityError):
        decompress(get_codec(name), stored[name][:cut])


@pytest.mark.parametrize("name", ["zstd", "gzip"])
@pytest.mark.parametrize("extra", [b"\x00", b"junk", b"\x28\xb5\x2f\xfe", b"\x1f\x8b"])
def test_trailing_bytes_are_corrupt(stored: dict[str, bytes], name: str, extra: bytes) -> None:
    with pytest.raises(IntegrityError, match="after the end"):
        decompress(get_codec(name), stored[name] + extra)


@pytest.mark.parametrize("extra", [b"\x28", b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfd\x04"])
def test_a_cut_second_frame_is_corrupt(stored: dict[str, bytes], extra: bytes) -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        decompress(get_codec("zstd"), stored["zstd"] + extra)


def test_frames_in_a_row_are_one_stream() -> None:
    """A level change starts a new frame: RFC 8878 (and ``zstd -d``) read frames in a row."""
    codec = get_codec("zstd")
    one, two = compress(codec, b"first "), compress(get_codec("zstd", 9), dumpish(MIB))
    assert decompress(codec, one + two + one) == b"first " + dumpish(MIB) + b"first "
    with pytest.raises(IntegrityError, match="after the end"):
        decompress(codec, one + two + b"junk")


# --- adaptive zstd ---------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [-1, 0])
def test_level_changes_mid_stream_decode_and_verify(threads: int) -> None:
    codec = get_codec("zstd", 3, threads, min_level=1)
    plain = dumpish(4 * MIB) + os.urandom(100_000) + dumpish(MIB)
    plan = {0: 1, MIB: 3, 2 * MIB: 2, 3 * MIB: 2, 4 * MIB: 1}
    sink = Sink()
    writer = codec.adaptive_writer(sink)
    for start in range(0, len(plain), 64 * 1024):
        if start in plan:
            writer.set_level(plan[start])
        writer.write(plain[start : start + 64 * 1024])
    writer.close()
    stored = sink.data
    assert set(writer.levels) == {1, 2, 3}
    assert writer.levels[3][0] == MIB and writer.levels[2][0] == 2 * MIB
    assert sum(r for r, _ in writer.levels.values()) == len(plain) == writer.bytes_in
    assert sum(o for _, o in writer.levels.values()) == len(stored) == writer.bytes_out
    assert decompress(codec, stored) == plain
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored)  # standard frames
    # each frame carries its own checksum: a flipped content byte in a later frame is caught
    bad = bytearray(stored)
    bad[-10] ^= 0x40
    with pytest.raises(IntegrityError):
        decompress(codec, bytes(bad))


def test_adaptive_writer_without_changes_is_one_frame() -> None:
    """A stream that never changed level is one frame, as a fixed level writes it."""
    codec = get_codec("zstd", 3, 0, min_level=1)
    plain = dumpish(2 * MIB)
    sink = Sink()
    writer = codec.adaptive_writer(sink)
    writer.set_level(3)  # the level it already has: no new frame
    writer.write(plain)
    writer.close()
    assert sink.data == compress(get_codec("zstd", 3, 0, adapt=False), plain, chunk=len(plain))
    assert writer.levels == {3: (len(plain), len(sink.data))}


def test_adaptive_writer_of_nothing_is_a_valid_empty_stream() -> None:
    codec = get_codec("zstd", min_level=1)
    sink = Sink()
    writer = codec.adaptive_writer(sink)
    writer.set_level(1)
    writer.close()
    assert decompress(codec, sink.data) == b""


def test_fixed_codec_has_no_adaptive_writer() -> None:
    with pytest.raises(ValueError, match="does not adapt"):
        get_codec("zstd", adapt=False).adaptive_writer(Sink())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"level": 3, "min_level": 5},
            "BACKUP_COMPRESSION_MIN_LEVEL 5 is above BACKUP_COMPRESSION_LEVEL 3",
        ),
        ({"level": 3, "min_level": 0}, "BACKUP_COMPRESSION_MIN_LEVEL 0 is out of range for zstd"),
        ({"level": 3, "min_level": 23}, "use 1-22"),
        ({"name": "gzip", "adapt": True}, "only zstd adapts its level, not gzip"),
    ],
)
def test_invalid_adaptive_settings(kwargs: dict[str, object], expected: str) -> None:
    name = str(kwargs.pop("name", "zstd"))
    with pytest.raises(ConfigError) as caught:
        get_codec(name, **kwargs)  # type: ignore[arg-type]
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_adaptive_bounds() -> None:
    assert get_codec("zstd", 3, min_level=3).min_level == 3  # floor = ceiling: one level
    assert get_codec("zstd", 19, min_level=2) == Codec("zstd", 19, "zst", -1, min_level=2)
    assert get_codec("zstd", 1).min_level == 1  # default floor under a ceiling of 1
    assert get_codec("zstd", 3, min_level=9, adapt=False).min_level is None  # fixed: unused
    assert get_codec("gzip", 9, min_level=30).min_level is None


@pytest.fixture(scope="module")
def small() -> dict[str, tuple[bytes, bytes]]:
    plain = b"hello world " * 50 + os.urandom(300)
    return {name: (plain, compress(get_codec(name), plain)) for name in ("zstd", "gzip")}


@pytest.mark.parametrize("name", ["zstd", "gzip"])
def test_no_flipped_bit_yields_wrong_data(small: dict[str, tuple[bytes, bytes]], name: str) -> None:
    """Every single-bit flip is caught, or hits bits that do not carry data (zstd window
    descriptor; gzip flags, mtime and OS bytes, and the deflate stream's final padding bits)."""
    plain, data = small[name]
    codec = get_codec(name)
    harmless: set[int] = set()
    for offset in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[offset] ^= 1 << bit
            try:
                out = decompress(codec, bytes(bad))
            except IntegrityError:
                continue
            assert out == plain, f"flip at {offset}.{bit} silently changed the data"
            harmless.add(offset)
    assert len(harmless) <= 10, sorted(harmless)


def test_not_compressed_at_all() -> None:
    for name in ("zstd", "gzip"):
        with pytest.raises(IntegrityError, match=f"{name} stream is corrupt"):
            decompress(get_codec(name), b"PGDMP" + os.urandom(1000))


@pytest.mark.parametrize("name", NAMES)
def test_reads_are_bounded_even_for_extreme_ratios(name: str) -> None:
    """64 MiB of zeros compresses to almost nothing; each read still returns <= size."""
    codec = get_codec(name)
    stored = compress(codec, bytes(64 * MIB), chunk=8 * MIB)
    reader = codec.decompress_reader(io.BytesIO(stored))
    total = 0
    while chunk := reader.read(MIB):
        assert len(chunk) <= MIB
        total += len(chunk)
    assert total == 64 * MIB


def test_read_minus_one_reads_everything() -> None:
    codec = get_codec("zstd")
    plain = dumpish(3 * MIB)
    assert codec.decompress_reader(io.BytesIO(compress(codec, plain))).read() == plain


class FailingSink(Sink):
    """Accepts the gzip header, then fails."""

    def write(self, data: bytes, /) -> int:
        if self.chunks:
            raise OSError("disk full")
        return super().write(data)


def test_close_closes_downstream_even_when_flush_fails() -> None:
    sink = FailingSink()
    writer = get_codec("gzip").compress_writer(sink)
    writer.write(b"x" * 10)  # zlib emits the gzip header and buffers the rest
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert sink.closes == 1
