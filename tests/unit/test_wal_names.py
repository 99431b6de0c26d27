"""WAL file names, segment arithmetic, page headers and timeline histories (core/wal.py)."""

from __future__ import annotations

import struct

import pytest

from strongroom.core import wal
from strongroom.errors import IntegrityError

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("name", "kind", "timeline", "segment"),
    [
        ("000000010000000000000001", "segment", 1, "000000010000000000000001"),
        ("0000000A00000002000000FF.partial", "partial", 10, "0000000A00000002000000FF"),
        ("000000010000000000000003.00000028.backup", "backup", 1, "000000010000000000000003"),
        ("00000002.history", "history", 2, ""),
    ],
)
def test_names_are_classified(name: str, kind: str, timeline: int, segment: str) -> None:
    parsed = wal.parse_name(name)
    assert (parsed.kind, parsed.timeline, parsed.segment) == (kind, timeline, segment)
    assert parsed.has_page_header is (kind in ("segment", "partial"))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "00000001000000000000001",
        "000000010000000000000001.gz",
        "0000000100000000000000zz",
        "../00000002.history",
        "RECOVERYXLOG",
    ],
)
def test_anything_else_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a WAL file name"):
        wal.parse_name(name)


@pytest.mark.parametrize(
    ("name", "size", "following"),
    [
        ("000000010000000000000001", 16 * MB, "000000010000000000000002"),
        ("0000000100000000000000FF", 16 * MB, "000000010000000100000000"),
        ("000000030000000A000000FE", 16 * MB, "000000030000000A000000FF"),
        ("000000010000000000000FFF", 1 * MB, "000000010000000100000000"),
        ("0000000100000000000000FF", 1 * MB, "000000010000000000000100"),
        ("000000010000000000000003", 1024 * MB, "000000010000000100000000"),
        ("00000001000000000000003F", 64 * MB, "000000010000000100000000"),
    ],
)
def test_the_next_segment_depends_on_the_segment_size(name: str, size: int, following: str) -> None:
    assert wal.next_segment(name, size) == following
    assert wal.segment_number(following, size) == wal.segment_number(name, size) + 1


def test_a_name_impossible_for_the_segment_size_is_refused() -> None:
    with pytest.raises(ValueError, match="not a segment"):
        wal.segment_number("000000010000000000000100", 16 * MB)  # 256 segments per log
    with pytest.raises(ValueError, match="not a WAL segment size"):
        wal.next_segment("000000010000000000000001", 3 * MB)


def test_lsns_map_to_their_segment() -> None:
    lsn = wal.parse_lsn("16/B374D848")
    assert lsn == (0x16 << 32) | 0xB374D848 and wal.format_lsn(lsn) == "16/B374D848"
    assert wal.segment_of_lsn(lsn, 1) == "0000000100000016000000B3"
    assert wal.segment_of_lsn(lsn, 2, 64 * MB) == "00000002000000160000002C"
    with pytest.raises(ValueError, match="not an LSN"):
        wal.parse_lsn("B374D848")


def _header(sysid: int, pageaddr: int, tli: int = 1, size: int = 16 * MB, info: int = 2) -> bytes:
    return struct.pack("<HHIQI4xQII", 0xD110, info, tli, pageaddr, 0, sysid, size, 8192)


def test_the_long_page_header_gives_system_identifier_and_segment_size() -> None:
    data = _header(7714553371809466367, 3 * 16 * MB) + b"\0" * 100
    header = wal.read_page_header(data)
    assert header.system_identifier == 7714553371809466367
    assert (header.segment_size, header.block_size, header.timeline) == (16 * MB, 8192, 1)
    wal.check_segment(wal.parse_name("000000010000000000000003"), header)
    with pytest.raises(IntegrityError, match="not of the one its name says"):
        wal.check_segment(wal.parse_name("000000010000000000000004"), header)
    with pytest.raises(IntegrityError, match="not of the one its name says"):
        wal.check_segment(wal.parse_name("000000020000000000000003"), header)


def test_a_file_without_a_long_header_is_not_a_segment() -> None:
    with pytest.raises(IntegrityError, match="too short"):
        wal.read_page_header(b"\0" * 10)
    with pytest.raises(IntegrityError, match="long page header"):
        wal.read_page_header(_header(1, 0, info=0))
    with pytest.raises(IntegrityError, match="long page header"):
        wal.read_page_header(_header(1, 0, size=12345))


def test_a_timeline_history_lists_each_switch() -> None:
    text = (
        "1\t0/3000060\tno recovery target specified\n"
        "\n# a comment\n"
        "2\t0/5000000\tbefore 2026-12-01 10:00:00+00\n"
    )
    switches = wal.parse_history(text)
    assert [(s.parent, wal.format_lsn(s.lsn)) for s in switches] == [
        (1, "0/3000060"),
        (2, "0/5000000"),
    ]
    assert switches[1].reason.startswith("before")
    with pytest.raises(IntegrityError, match="line 1"):
        wal.parse_history("x\t0/1\n")
