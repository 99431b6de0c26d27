"""Data offsets for a custom-format archive that pg_dump wrote to a pipe.

pg_dump writes a custom archive's table of contents first and its data after; written to a
file it seeks back at the end and fills in where each table's data starts, written to a pipe
(as every strongroom backup is) it cannot, and every entry says "position not set". pg_restore
then finds a table's data by walking the archive block by block, and with ``-Z0`` a block is
one chunk per row: millions of small reads and seeks, in every parallel worker, before the
first row of a large table loads.

The scratch copy a restore writes is a file, so the offsets can be put back: this module reads
the table of contents (``pg_backup_archiver.c``: ``WriteHead``/``WriteToc``, archive versions
1.12 to 1.16), finds each table's data block as the bytes go by, and afterwards writes the
offsets into the entries in place, as pg_dump would have with a seekable output.

How a block is found without walking its chunks: a data block ends with a zero-length chunk
(five zero bytes: sign and a 4-byte length) and the next one starts with the byte 1 and its
dump id. COPY's text format (the only thing in a table's data block) never holds a zero byte,
and a chunk header is a zero sign byte plus a non-zero length, so five zero bytes followed by
``01 00`` occur only at a block boundary or inside a small dump id next to a length that is a
multiple of 256; the id read after the match must then be a data entry not yet found, later in
the archive than the last one, so a false match would need a dump id of 16 million or more.
Anything unexpected (another integer size, large objects, an entry not found) leaves those
entries as pg_dump wrote them: pg_restore then walks to them as it always did. The offsets only
save pg_restore the walk; they never decide what is restored.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = b"PGDMP"
_FORMAT_CUSTOM = 1
_POS_NOT_SET, _POS_SET = 1, 2
_BLK_DATA = 1
_MIN_VERSION, _MAX_VERSION = (1, 12), (1, 16)
#: A header and table of contents larger than this (a schema of very many objects) is not read.
MAX_TOC_BYTES = 64 << 20
_BOUNDARY = b"\x00" * 5 + bytes([_BLK_DATA, 0])
#: A boundary and the 4-byte dump id after it.
_MATCH = len(_BOUNDARY) + 4
#: Bytes kept from one chunk for the next: a match may straddle the two.
_KEEP = _MATCH - 1


def _libc_memmem() -> Callable[[bytes, int], int] | None:
    """``memmem(3)`` for the boundary: about twice as fast as ``bytes.find`` on this data, and
    it runs without the GIL, beside the read-back's other stages. None where libc has none."""
    try:
        import ctypes

        memmem = ctypes.CDLL(None).memmem
    except (OSError, AttributeError, ImportError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    width = len(_BOUNDARY)

    def find(buf: bytes, start: int) -> int:
        base = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
        if start >= len(buf):
            return -1
        hit = memmem(base + start, len(buf) - start, _BOUNDARY, width)
        return -1 if not hit else int(hit) - base

    return find


def _bytes_find(buf: bytes, start: int) -> int:
    return buf.find(_BOUNDARY, start)


_find: Callable[[bytes, int], int] = _libc_memmem() or _bytes_find


class _Short(Exception):
    """The table of contents continues past the bytes seen so far."""


class _Unsupported(Exception):
    """Not an archive this module knows how to index; leave it as it is."""


@dataclass
class _Entry:
    dump_id: int
    desc: str
    offset_field: int  # file position of the entry's offset flag byte
    state: int
    place: int  # its index in the table of contents


@dataclass
class _Toc:
    data_start: int
    entries: list[_Entry]


class _Reader:
    """Reads the archive's integers and strings (``ReadInt``/``ReadStr``) from a buffer."""

    def __init__(self, buf: bytes | bytearray) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _Short
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(4), "little")  # parse_toc accepts no other size
        return -value if sign else value

    def str(self) -> str | None:
        length = self.int()
        if length < 0:
            return None
        return self.take(length).decode("utf-8", "replace")


def parse_toc(buf: bytes | bytearray) -> _Toc:
    """The header and table of contents at the start of ``buf`` (raises ``_Short`` when more
    bytes are needed, ``_Unsupported`` for an archive this module leaves alone)."""
    r = _Reader(buf)
    if r.take(5) != MAGIC:
        raise _Unsupported("not a custom-format archive")
    version = (r.byte(), r.byte())
    r.byte()  # revision
    if not _MIN_VERSION <= version <= _MAX_VERSION:
        raise _Unsupported(f"archive version {version[0]}.{version[1]}")
    int_size, off_size = r.byte(), r.byte()
    if int_size != 4 or off_size != 8 or r.byte() != _FORMAT_CUSTOM:
        raise _Unsupported("integer or offset size, or format")
    if version >= (1, 15):
        r.byte()  # compression algorithm
    else:
        r.int()  # compression level
    for _ in range(7):  # creation time
        r.int()
    for _ in range(3):  # database name, server version, pg_dump version
        r.str()
    entries = [_read_entry(r, version, place) for place in range(r.int())]
    return _Toc(r.pos, entries)


def _read_entry(r: _Reader, version: tuple[int, int], place: int) -> _Entry:
    dump_id = r.int()
    r.int()  # had dumper
    r.str(), r.str()  # table oid, oid
    r.str()  # tag
    desc = r.str() or ""
    r.int()  # section
    for _ in range(6):  # definition, drop, copy, namespace, tablespace, table access method
        r.str()
    if version >= (1, 16):
        r.int()  # relkind
    r.str(), r.str()  # owner, "false" (WITH OIDS)
    while r.str() is not None:  # dependencies, ended by a null string
        pass
    offset_field = r.pos
    state = r.byte()
    r.take(8)
    return _Entry(dump_id, desc, offset_field, state, place)


@dataclass
class OffsetIndexer:
    """Fed the archive's bytes in order; finds each table's data block; then patches the file.

    ``feed`` never raises for what it cannot index: it stops looking and :meth:`patch` then
    writes only what was found before that (usually all or nothing).
    """

    _head: bytearray = field(default_factory=bytearray)
    _data: dict[int, _Entry] | None = None  # dump id -> data entry; None until the TOC is read
    _pending: set[int] = field(default_factory=set)  # dump ids of the blocks not found yet
    _pos: int = 0  # archive position of the next byte fed
    _tail: bytes = b""  # the last bytes fed, for a boundary split between two chunks
    _last: int = -1  # TOC place of the last block found
    found: dict[int, int] = field(default_factory=dict)  # dump id -> block position
    stopped: str = ""  # why indexing stopped early, if it did

    def feed(self, data: bytes | memoryview) -> None:
        if self.stopped:
            return
        if self._data is None:
            self._head += data
            self._pos += len(data)
            self._read_toc()
            return
        self._scan(data if isinstance(data, bytes) else bytes(data))

    def _read_toc(self) -> None:
        try:
            toc = parse_toc(self._head)
        except _Short:
            if len(self._head) > MAX_TOC_BYTES:
                self._stop("table of contents too large")
            return
        except _Unsupported as exc:
            self._stop(str(exc))
            return
        data = {e.dump_id: e for e in toc.entries if e.state == _POS_NOT_SET}
        other = next((e.desc for e in data.values() if e.desc != "TABLE DATA"), None)
        if other is not None:
            self._stop(f"data of another kind ({other})")
            return
        self._data, self._pending = data, set(data)
        rest = bytes(self._head[toc.data_start :])
        self._head = bytearray()
        self._pos = toc.data_start
        # the first block follows the table of contents with no end chunk before it: five
        # zero bytes in front of it, as if there were one, let the same search find it
        self._tail = _BOUNDARY[:5]
        self._scan(rest)

    def _scan(self, data: bytes) -> None:
        """Search ``data``, and the joint of the last bytes before it with its first ones."""
        tail = self._tail
        if tail:
            self._search(tail + data[:_KEEP], self._pos - len(tail), len(tail))
        self._search(data, self._pos, len(data))
        self._tail = (tail + data)[-_KEEP:] if len(data) < _KEEP else data[-_KEEP:]
        self._pos += len(data)

    def _search(self, buf: bytes, base: int, stop: int) -> None:
        """Claim each boundary in ``buf`` that starts before ``stop`` and has its id in ``buf``
        (one that does not is searched again with the next chunk: it is in the kept tail)."""
        start = 0
        while self._pending:
            hit = _find(buf, start)
            if hit < 0 or hit >= stop or hit + _MATCH > len(buf):
                return
            block = hit + 5
            self._claim(struct.unpack_from("<I", buf, block + 2)[0], base + block)
            start = hit + 1

    def _claim(self, dump_id: int, position: int) -> None:
        assert self._data is not None
        if dump_id not in self._pending or self._data[dump_id].place <= self._last:
            return  # not a block boundary (see the module docstring)
        self._last = self._data[dump_id].place
        self._pending.discard(dump_id)
        self.found[dump_id] = position

    def _stop(self, why: str) -> None:
        self.stopped = why
        self._head = bytearray()

    def patch(self, path: str | os.PathLike[str]) -> int:
        """Write the offsets found into ``path``'s table of contents; how many were written."""
        if self._data is None or not self.found:
            return 0
        fd = os.open(path, os.O_WRONLY)
        try:
            for dump_id, position in self.found.items():
                field_bytes = bytes([_POS_SET]) + position.to_bytes(8, "little")
                os.pwrite(fd, field_bytes, self._data[dump_id].offset_field)
        finally:
            os.close(fd)
        return len(self.found)
