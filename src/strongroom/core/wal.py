"""PostgreSQL's WAL files as the archive sees them: names, page headers, timeline histories.

Pure functions over names and bytes, no server and no libpq. This module lives beside
``core/postgres/`` rather than in it because importing that package loads psycopg, and
``wal-push`` (one process per 16 MB segment, run by PostgreSQL's archiver) must start fast.

Names (``access/xlog_internal.h``)::

    TTTTTTTTXXXXXXXXYYYYYYYY            a segment: timeline, then its number as two 32-bit
                                        halves (the "log" and the segment within it)
    TTTTTTTTXXXXXXXXYYYYYYYY.partial    the last, incomplete segment of a timeline left behind
    TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup   a base backup's label (start offset in hex)
    TTTTTTTT.history                    the timeline's history (parent timelines, switch points)

With a segment size of S bytes, a "log" holds ``0x100000000 // S`` segments (256 at 16 MB).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from strongroom.errors import IntegrityError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
#: A segment size is a power of two from 1 MB to 1 GB (``initdb --wal-segsize``).
SEGMENT_SIZES = frozenset(1 << n for n in range(20, 31))
XLP_LONG_HEADER = 0x0002
#: ``XLogLongPageHeaderData``: the short header (magic, info, timeline, page address, remaining
#: length; 24 bytes with alignment), then system identifier, segment size and block size.
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
LONG_HEADER_SIZE = _LONG_HEADER.size
#: ``ControlFileData`` starts with the system identifier (``global/pg_control``).
_CONTROL_SYSID = struct.Struct("<Q")

_SEGMENT = re.compile(r"(?P<tli>[0-9A-F]{8})(?P<log>[0-9A-F]{8})(?P<seg>[0-9A-F]{8})")
_NAME = re.compile(
    r"(?P<segment>[0-9A-F]{24})(?P<suffix>\.partial|\.[0-9A-F]{8}\.backup)?"
    r"|(?P<history>[0-9A-F]{8})\.history"
)


class WalFile:
    """One archivable file, classified by its name.

    The records of this module are plain classes with slots, not dataclasses: ``wal-push``'s
    fast path imports this module, and ``dataclasses`` (with ``inspect``) cost a third of
    that call's CPU.
    """

    __slots__ = ("kind", "name", "timeline")

    def __init__(self, name: str, kind: str, timeline: int) -> None:
        self.name = name
        #: ``segment``, ``partial``, ``backup`` or ``history``.
        self.kind = kind
        self.timeline = timeline

    @property
    def has_page_header(self) -> bool:
        """Segments (whole or partial) start with a long page header; labels and histories
        are text."""
        return self.kind in ("segment", "partial")

    @property
    def segment(self) -> str:
        """The segment name this file belongs to (a history file has none: ``""``)."""
        return "" if self.kind == "history" else self.name[:24]


def parse_name(name: str) -> WalFile:
    """Classify ``name``; ``ValueError`` for anything PostgreSQL would not archive."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            f"{name!r} is not a WAL file name (a 24-hex-digit segment, .partial, .backup or "
            ".history)"
        )
    if match["history"]:
        return WalFile(name, "history", int(match["history"], 16))
    suffix = match["suffix"] or ""
    kind = "partial" if suffix == ".partial" else "backup" if suffix else "segment"
    return WalFile(name, kind, int(name[:8], 16))


def segments_per_log(segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Segments in one 4 GB "log" (the middle eight hex digits of a name)."""
    _check_size(segment_size)
    return 0x100000000 // segment_size


def segment_number(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The segment's position in the WAL stream (``XLogFromFileName``)."""
    match = _SEGMENT.fullmatch(name[:24])
    if match is None:
        raise ValueError(f"{name!r} does not start with a segment name")
    log, seg = int(match["log"], 16), int(match["seg"], 16)
    per_log = segments_per_log(segment_size)
    if seg >= per_log:
        raise ValueError(f"{name!r} is not a segment of a cluster with {segment_size}-byte WAL")
    return log * per_log + seg


def segment_name(timeline: int, number: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of segment ``number`` on ``timeline`` (``XLogFileName``)."""
    per_log = segments_per_log(segment_size)
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def next_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The segment after ``name`` on the same timeline."""
    return segment_name(int(name[:8], 16), segment_number(name, segment_size) + 1, segment_size)


def parse_lsn(text: str) -> int:
    """``16/B374D848`` as an integer."""
    high, sep, low = text.strip().partition("/")
    try:
        if not sep:
            raise ValueError
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"{text!r} is not an LSN (like 16/B374D848)") from None


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_of_lsn(lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The segment holding byte ``lsn`` of the WAL stream, on ``timeline``."""
    return segment_name(timeline, lsn // segment_size, segment_size)


class PageHeader:
    """The facts of a segment's first (long) page header the archive checks."""

    __slots__ = (
        "block_size",
        "magic",
        "page_address",
        "segment_size",
        "system_identifier",
        "timeline",
    )

    def __init__(
        self,
        magic: int,
        timeline: int,
        page_address: int,
        system_identifier: int,
        segment_size: int,
        block_size: int,
    ) -> None:
        self.magic, self.timeline, self.page_address = magic, timeline, page_address
        self.system_identifier, self.segment_size = system_identifier, segment_size
        self.block_size = block_size


def read_page_header(data: bytes) -> PageHeader:
    """Parse the long page header at the start of a segment; ``IntegrityError`` if absent."""
    if len(data) < LONG_HEADER_SIZE:
        raise IntegrityError("the file is too short for a WAL segment's page header")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if not info & XLP_LONG_HEADER or seg_size not in SEGMENT_SIZES:
        raise IntegrityError("the file does not start with a WAL segment's long page header")
    return PageHeader(magic, tli, pageaddr, sysid, seg_size, blcksz)


def check_segment(wal: WalFile, header: PageHeader) -> None:
    """The header must belong to the segment its name says (timeline and position)."""
    expected = segment_number(wal.name, header.segment_size) * header.segment_size
    if header.page_address != expected or header.timeline != wal.timeline:
        raise IntegrityError(
            f"{wal.name}: its page header is of segment "
            f"{segment_of_lsn(header.page_address, header.timeline, header.segment_size)}, "
            "not of the one its name says"
        )


def control_system_identifier(data_dir: Path) -> int:
    """The cluster's system identifier, from ``global/pg_control`` of its data directory."""
    path = data_dir / "global" / "pg_control"
    try:
        with path.open("rb") as control:
            head = control.read(_CONTROL_SYSID.size)
    except OSError as exc:
        raise OSError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(head) < _CONTROL_SYSID.size:
        raise IntegrityError(f"{path} is truncated")
    return int(_CONTROL_SYSID.unpack(head)[0])


class Switch:
    """One line of a timeline history: ``parent`` ended at ``lsn`` and the next began."""

    __slots__ = ("lsn", "parent", "reason")

    def __init__(self, parent: int, lsn: int, reason: str) -> None:
        self.parent, self.lsn, self.reason = parent, lsn, reason


def parse_history(text: str) -> list[Switch]:
    """The lines of a ``.history`` file (``tli<TAB>LSN<TAB>reason``; ``#`` comments)."""
    switches: list[Switch] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 2)
        try:
            parent, lsn = int(fields[0]), parse_lsn(fields[1])
        except (IndexError, ValueError):
            raise IntegrityError(f"line {number} of the timeline history is malformed") from None
        switches.append(Switch(parent, lsn, fields[2] if len(fields) > 2 else ""))
    return switches


def _check_size(segment_size: int) -> None:
    if segment_size not in SEGMENT_SIZES:
        raise ValueError(f"{segment_size} is not a WAL segment size (a power of two, 1 MB-1 GB)")
