"""The threaded read-back pipeline: order kept, any stage's error raised as itself, threads end."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from strongroom.core import crypto
from strongroom.core.codecs import get_codec
from strongroom.core.readahead import Pipeline, PipelineStopped
from strongroom.core.readback import read_back
from strongroom.errors import IntegrityError, StorageError


class Chunks:
    """A source handing out ``data`` in reads of at most ``step`` bytes; fails if told to."""

    def __init__(self, data: bytes, step: int = 1000, fail_at: int | None = None) -> None:
        self.stream = io.BytesIO(data)
        self.step = step
        self.fail_at = fail_at
        self.closed = False

    def read(self, size: int = -1, /) -> bytes:
        if self.fail_at is not None and self.stream.tell() >= self.fail_at:
            raise StorageError("the location went away")
        return self.stream.read(min(self.step, size) if size >= 0 else self.step)

    def close(self) -> None:
        self.closed = True


class Upper:
    """A middle stage that transforms what it reads (and can fail after some reads)."""

    def __init__(self, source: Chunks | object, fail_after: int | None = None) -> None:
        self.source = source
        self.reads = 0
        self.fail_after = fail_after
        self.closed = False

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise IntegrityError("stage two found tampering")
        return self.source.read(size).upper()  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self.closed = True
        self.source.close()  # type: ignore[attr-defined]


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("readahead-")}


def _read_all(reader: object, size: int = 777) -> bytes:
    parts = []
    while chunk := reader.read(size):  # type: ignore[attr-defined]
        parts.append(chunk)
    return b"".join(parts)


def test_order_is_kept_through_three_stages() -> None:
    data = os.urandom(300_000).hex().encode()
    source = Chunks(data, step=4099)
    with Pipeline(chunk_size=5000, depth=2) as pipe:
        one = pipe.stage(source, "one")
        two = pipe.stage(Upper(one), "two")
        three = pipe.stage(Upper(two), "three")
        assert _read_all(three) == data.upper()
        assert three.read(10) == b""
    assert source.closed
    assert not _threads()


def test_read_minus_one_and_exact_sizes() -> None:
    data = bytes(range(256)) * 100
    with Pipeline(chunk_size=1000) as pipe:
        ahead = pipe.stage(Chunks(data, step=1000), "one")
        assert ahead.read(1000) == data[:1000]
        assert ahead.read(10) == data[1000:1010]
        assert ahead.read() == data[1010:]


@pytest.mark.parametrize("where", ["source", "middle"])
def test_an_error_in_any_stage_reaches_the_reader_as_itself(where: str) -> None:
    data = b"x" * 200_000
    source = Chunks(data, step=1000, fail_at=50_000 if where == "source" else None)
    expected = StorageError if where == "source" else IntegrityError
    with pytest.raises(expected), Pipeline(chunk_size=1000, depth=2) as pipe:
        one = pipe.stage(source, "one")
        two = pipe.stage(Upper(one, fail_after=20 if where == "middle" else None), "two")
        three = pipe.stage(Upper(two), "three")
        _read_all(three)
    assert source.closed
    assert not _threads()


def test_leaving_early_stops_every_thread() -> None:
    """The caller's own exception (a sink's, or a signal's) stops stages still reading ahead."""
    source = Chunks(b"y" * 10_000_000, step=1000)
    with pytest.raises(KeyboardInterrupt), Pipeline(chunk_size=1000, depth=2) as pipe:
        two = pipe.stage(Upper(pipe.stage(source, "one")), "two")
        two.read(10)
        raise KeyboardInterrupt
    assert source.closed
    assert source.stream.tell() < 10_000_000
    assert not _threads()


def test_a_stopped_pipeline_refuses_to_read_on() -> None:
    pipe = Pipeline(chunk_size=1000, depth=1)
    ahead = pipe.stage(Chunks(b"z" * 100_000), "one")
    pipe.stop.set()
    with pytest.raises(PipelineStopped):
        _read_all(ahead)
    pipe.close()
    assert not _threads()


def _stored(plain: bytes, key: str) -> bytes:
    out = io.BytesIO()

    class Sink:
        def write(self, data: bytes) -> int:
            return out.write(data)

        def close(self) -> None:
            pass

    writer = get_codec("zstd", 3).compress_writer(
        crypto.Keyring.from_strings(key).encrypting_writer(Sink())
    )
    writer.write(plain)
    writer.close()
    return out.getvalue()


def test_read_back_hands_on_the_plaintext_in_order_and_hashes_every_byte() -> None:
    key = crypto.generate_key()
    plain = os.urandom(1 << 20) + bytes(3 << 20) + os.urandom(12345)
    stored = _stored(plain, key)
    got = bytearray()
    back = read_back(
        Chunks(stored, step=65536),
        crypto.Keyring.from_strings(key),
        get_codec("zstd", 3),
        expected_sha256=hashlib.sha256(stored).hexdigest(),
        sink=got.extend,
    )
    assert bytes(got) == plain
    assert back.raw_size == len(plain)
    assert back.stored_size == len(stored)
    assert not _threads()


def test_read_back_hashes_trailing_garbage_and_fails_on_tampering() -> None:
    key = crypto.generate_key()
    stored = _stored(os.urandom(3 << 20), key)
    keyring = crypto.Keyring.from_strings(key)
    digest = hashlib.sha256(stored).hexdigest()
    with pytest.raises(IntegrityError):
        read_back(Chunks(stored + b"junk"), keyring, get_codec("zstd", 3), expected_sha256=digest)
    spoiled = bytearray(stored)
    spoiled[len(stored) // 2] ^= 1
    with pytest.raises(IntegrityError):
        read_back(Chunks(bytes(spoiled)), keyring, get_codec("zstd", 3))
    assert not _threads()


def test_read_back_stops_its_threads_when_the_sink_fails() -> None:
    key = crypto.generate_key()
    stored = _stored(os.urandom(4 << 20), key)

    def sink(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        read_back(Chunks(stored), crypto.Keyring.from_strings(key), get_codec("zstd", 3), sink=sink)
    assert not _threads()
