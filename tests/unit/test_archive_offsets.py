"""The data-offset index of a pipe-written custom archive, on archives built byte for byte as
pg_dump writes them (``WriteHead``, ``WriteToc``, ``_StartData``, one chunk per COPY row)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from strongroom.core.postgres import archive_offsets
from strongroom.core.postgres.archive_offsets import OffsetIndexer, parse_toc

SEARCHES = {"memmem": archive_offsets._libc_memmem(), "bytes.find": archive_offsets._bytes_find}


@pytest.fixture(autouse=True, params=sorted(SEARCHES))
def search(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test with libc's memmem and with the fallback."""
    find = SEARCHES[request.param]
    assert find is not None, "memmem(3) is missing from this libc"
    monkeypatch.setattr(archive_offsets, "_find", find)


def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def _str(text: str | None) -> bytes:
    if text is None:
        return _int(-1)
    raw = text.encode()
    return _int(len(raw)) + raw


def _entry(dump_id: int, desc: str, state: int, minor: int) -> bytes:
    parts = [_int(dump_id), _int(1 if state != 3 else 0), _str("1259"), _str(str(dump_id)),
             _str(f"t{dump_id}"), _str(desc), _int(2 if desc == "TABLE DATA" else 1),
             _str(""), _str(""), _str("COPY x FROM stdin;\n"), _str("public"), _str(""),
             _str("heap")]  # fmt: skip
    if minor >= 16:
        parts.append(_int(114))
    parts += [_str("app"), _str("false"), _str("7"), _str(None)]
    return b"".join(parts) + bytes([state]) + bytes(8)


def build(
    tables: dict[int, list[bytes]], *, minor: int = 14, other: tuple[int, str] | None = None
) -> tuple[bytes, dict[int, int]]:
    """A custom archive with the tables' rows as data blocks; also each block's true offset."""
    head = b"PGDMP" + bytes([1, minor, 0, 4, 8, 1])
    head += bytes([0]) if minor >= 15 else _int(0)
    head += b"".join(_int(n) for n in (1, 2, 3, 4, 5, 126, 0))
    head += _str("shop") + _str("15.20") + _str("15.20")
    entries = [_entry(9, "SCHEMA", 3, minor)]
    entries += [_entry(i, "TABLE DATA", 1, minor) for i in tables]
    if other:
        entries.append(_entry(other[0], other[1], 1, minor))
    out = bytearray(head + _int(len(entries)) + b"".join(entries))
    offsets = {}
    for dump_id, rows in tables.items():
        offsets[dump_id] = len(out)
        out += bytes([1]) + _int(dump_id)
        for row in rows:
            out += _int(len(row)) + row
        out += _int(0)
    return bytes(out), offsets


def _rows(n: int, width: int = 40, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [
        (
            f"{i}\t" + "".join(rnd.choice("abc xyz\\t") for _ in range(rnd.randint(1, width)))
        ).encode()
        + b"\n"
        for i in range(n)
    ]


def _index(data: bytes, chunk: int) -> OffsetIndexer:
    ix = OffsetIndexer()
    for i in range(0, len(data), chunk):
        ix.feed(memoryview(data)[i : i + chunk])
    return ix


def test_finds_every_block_whatever_the_chunking() -> None:
    tables = {
        3401: _rows(300),
        # an id < 256 and a first chunk of 256 bytes: 01 00 05 00 00 00 00 00 01 00 00 looks like
        # a boundary, and the id after it is not one of ours
        5: [b"x" * 255 + b"\n", *_rows(20)],
        3402: [],  # an empty table: its block is a header and the end chunk
        3403: _rows(50, width=700),
        3404: [],
    }
    data, offsets = build(tables)
    for chunk in (1, 2, 3, 7, 11, 64, 4096, len(data)):
        ix = _index(data, chunk)
        assert ix.found == offsets, chunk
        assert not ix.stopped


@pytest.mark.parametrize("minor", [12, 13, 14, 15, 16])
def test_patch_writes_what_pg_dump_would_have(tmp_path: Path, minor: int) -> None:
    tables = {7001: _rows(40), 7002: _rows(10, seed=2), 7003: []}
    data, offsets = build(tables, minor=minor)
    path = tmp_path / "archive.dump"
    path.write_bytes(data)
    ix = _index(data, 1000)
    assert ix.patch(path) == 3
    patched = path.read_bytes()
    assert len(patched) == len(data)
    toc = parse_toc(patched)
    for entry in toc.entries:
        if entry.desc != "TABLE DATA":
            assert entry.state == 3
            continue
        assert entry.state == 2
        at = int.from_bytes(patched[entry.offset_field + 1 : entry.offset_field + 9], "little")
        assert at == offsets[entry.dump_id]
        assert patched[at : at + 6] == bytes([1]) + _int(entry.dump_id)
    assert patched[toc.data_start :] == data[toc.data_start :]  # data untouched


def test_large_objects_leave_the_archive_as_it_is(tmp_path: Path) -> None:
    data, _ = build({10: _rows(5)}, other=(11, "BLOBS"))
    ix = _index(data, 64)
    assert ix.stopped.startswith("data of another kind")
    path = tmp_path / "a.dump"
    path.write_bytes(data)
    assert ix.patch(path) == 0
    assert path.read_bytes() == data


def test_another_archive_or_version_is_not_indexed(tmp_path: Path) -> None:
    data, _ = build({10: _rows(5)})
    for bad in (
        b"STRGR" + data[5:],
        data[:5] + bytes([1, 17]) + data[7:],
        data[:8] + b"\x08" + data[9:],
    ):
        ix = _index(bad, 100)
        assert ix.stopped and not ix.found
    assert not _index(b"", 1).found


def test_an_entry_not_found_stays_unset_and_the_rest_are_found() -> None:
    tables = {20: _rows(30), 21: _rows(30, seed=3), 22: _rows(30, seed=4)}
    data, offsets = build(tables)
    broken = data.replace(bytes([1]) + _int(21), bytes([9]) + _int(21))  # an unknown block type
    ix = _index(broken, 512)
    assert ix.found == {20: offsets[20], 22: offsets[22]}
