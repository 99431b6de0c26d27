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


def _rows(count: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * size for i in range(count)]


def test_rows_are_gathered_into_frames_of_about_the_target_size() -> None:
    rows = _rows(3000, 200)  # 600 kB of COPY messages: three frames, not 3000
    frames = list(tf.gathered(0, iter(rows)))
    sizes = [tf._FRAME.unpack(f[: tf._FRAME.size])[1] for f in frames]
    assert len(frames) == 3 and all(s >= tf.CHUNK_TARGET for s in sizes[:-1])
    assert b"".join(f[tf._FRAME.size :] for f in frames) == b"".join(rows)
    assert list(tf.gathered(0, iter([]))) == []  # an empty table: no frame (its end says it)


def _per_row_export(tables: list[list[bytes]]) -> bytes:
    """An export as written before rows were gathered: one frame per COPY message."""
    parts = [
        tf.header_bytes(
            {
                "tenant_id": "t1",
                "tables": [{"name": f"public.t{i}", "columns": []} for i in range(len(tables))],
            }
        )
    ]
    for index, rows in enumerate(tables):
        for row in rows:
            parts.extend(tf.chunk_frames(index, row))
        parts.append(tf.end_of_table(index))
    parts.append(tf.end_of_export())
    return b"".join(parts)


def test_an_export_of_a_frame_per_row_is_read_back_in_few_large_writes() -> None:
    from strongroom.core.postgres.tenant_file import ExportRows

    tables = [_rows(5, 10), [], _rows(4000, 100)]
    export = ExportRows(io.BytesIO(_per_row_export(tables)), {})
    read = [list(rows.chunks) for rows in export.tables()]
    assert [b"".join(blocks) for blocks in read] == [b"".join(rows) for rows in tables]
    assert [len(blocks) for blocks in read] == [1, 0, 2]  # 400 kB in two writes, not 4000
