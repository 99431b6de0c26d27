"""The tenant export framing: what the writer frames, the reader splits back, and refuses."""

from __future__ import annotations

import io

import pytest

from strongroom.core import tenant_format as tf
from strongroom.errors import IntegrityError


def _export(tables: list[bytes]) -> bytes:
    parts = [
        tf.header_bytes(
            {"tenant_id": "t1", "tables": [{"name": str(i)} for i in range(len(tables))]}
        )
    ]
    for index, data in enumerate(tables):
        parts.extend(tf.chunk_frames(index, data))
        parts.append(tf.end_of_table(index))
    parts.append(tf.end_of_export())
    return b"".join(parts)


def _split(blob: bytes) -> tuple[dict[str, object], dict[int, bytes]]:
    source = io.BytesIO(blob)
    header = tf.read_header(source)
    tables: dict[int, bytes] = {}
    for chunk in tf.read_chunks(source, len(header["tables"])):  # type: ignore[arg-type]
        tables[chunk.index] = tables.get(chunk.index, b"") + chunk.data
    return header, tables


def test_round_trip_keeps_every_byte_and_splits_long_chunks() -> None:
    big = bytes(range(256)) * (tf.MAX_CHUNK // 128)  # two frames
    header, tables = _split(_export([b"PGCOPY\n\xff\r\n\x00", b"", big]))
    assert header["format"] == tf.FORMAT and header["tenant_id"] == "t1"
    assert tables == {0: b"PGCOPY\n\xff\r\n\x00", 1: b"", 2: big}
    assert len(list(tf.chunk_frames(0, big))) == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-8], "truncated"),
        (lambda b: b"XXXXXXXX" + b[8:], "magic"),
        (lambda b: b[:-16] + tf.end_of_export(), "ended after"),
    ],
)
def test_damaged_exports_are_refused(damage, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IntegrityError, match=message):
        _split(damage(_export([b"abc", b"de"])))


def test_a_newer_format_is_named() -> None:
    blob = _export([b"x"]).replace(tf.FORMAT.encode(), b"strongroom-tenant/9")
    with pytest.raises(IntegrityError, match="strongroom-tenant/9"):
        _split(blob)
