"""The framing of a tenant export (``strongroom-tenant/1``): one header, then COPY binary chunks.

A tenant backup is not a pg_dump archive: pg_dump has no row filter. It is the tenant's rows of
every tenant table, each table as PostgreSQL's own ``COPY ... (FORMAT binary)`` stream (every
type exact: arrays, bytea, enums, ranges, jsonb, TOASTed values), framed so that one object
holds all of them and a reader can route each byte to its table without parsing COPY::

    b"SRTENANT"                      8 bytes, magic
    u32 header length, header        UTF-8 JSON object (below)
    repeated:
      u32 table index, u32 length, bytes     a chunk of that table's COPY binary stream
      u32 table index, u32 0                 that table's stream is complete
    u32 0xFFFFFFFF, u32 0                    the export is complete

Integers are big-endian. Tables come in header order, one after the other (parents before
children, so a restore can insert in this order); each table's chunks concatenated are a whole
``COPY ... FROM STDIN (FORMAT binary)`` input for the columns listed, in that order. The header::

    {"format": "strongroom-tenant/1", "tenant_id": "...",
     "tables": [{"name": "public.tenants", "filter": "id",
                 "columns": [{"name": "id", "type": "uuid", "identity": ""}, ...]}, ...],
     "schema": "<base64>"}

``identity`` is PostgreSQL's ``attidentity`` (``a`` for ``GENERATED ALWAYS``: insert with
``OVERRIDING SYSTEM VALUE``); stored generated columns are not exported (PostgreSQL recomputes
them). ``schema`` was added later under the same format name (an additive key that older readers
ignore): the database's ``pg_dump --schema-only -Fc`` archive, taken in the export's snapshot,
base64-encoded, so a tenant can be restored into a new, empty database
(:func:`schema_from_header`; None for exports made before it). Nothing here talks to
PostgreSQL: the writer frames bytes, the reader splits them.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from strongroom.core.streams import Reader
from strongroom.errors import IntegrityError

FORMAT = "strongroom-tenant/1"
MAGIC = b"SRTENANT"
END_OF_EXPORT = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_FRAME = struct.Struct(">II")
#: A chunk longer than this is split, so a reader never needs more than this much at once.
MAX_CHUNK = 1 << 20
#: What a writer gathers into one chunk: PostgreSQL sends a COPY stream one row per message,
#: and a frame, a read and a ``COPY FROM`` write per row cost more Python than the row itself.
CHUNK_TARGET = 256 << 10


def header_bytes(header: dict[str, Any]) -> bytes:
    """Magic, length and the JSON header; ``header["format"]`` is set to :data:`FORMAT`."""
    body = json.dumps({**header, "format": FORMAT}, sort_keys=True, ensure_ascii=False).encode()
    return MAGIC + _U32.pack(len(body)) + body


def encode_schema(archive: bytes) -> str:
    """The schema-only archive as the header's ``schema`` value."""
    return base64.b64encode(archive).decode("ascii")


def schema_from_header(header: dict[str, Any]) -> bytes | None:
    """The schema-only pg_dump archive a tenant export carries; None for older exports."""
    value = header.get("schema")
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError("the tenant export's schema is not valid base64") from None


def chunk_frames(index: int, data: bytes) -> Iterator[bytes]:
    """``data`` of table ``index`` as one or more frames (never an empty one: that ends a table)."""
    view = memoryview(data)
    for start in range(0, len(view), MAX_CHUNK):
        part = view[start : start + MAX_CHUNK]
        yield _FRAME.pack(index, len(part)) + bytes(part)


def gathered(index: int, rows: Iterable[bytes | bytearray | memoryview]) -> Iterator[bytes]:
    """Table ``index``'s COPY stream ``rows`` (one message each) as frames of about
    :data:`CHUNK_TARGET`: the same bytes in the same order, a frame per ~256 KiB, not per row."""
    pending = bytearray()
    for row in rows:
        pending += row
        if len(pending) >= CHUNK_TARGET:
            yield from chunk_frames(index, bytes(pending))
            pending.clear()
    if pending:
        yield from chunk_frames(index, bytes(pending))


def end_of_table(index: int) -> bytes:
    return _FRAME.pack(index, 0)


def end_of_export() -> bytes:
    return _FRAME.pack(END_OF_EXPORT, 0)


@dataclass(frozen=True)
class Chunk:
    """A piece of table ``index``'s COPY stream; ``data == b""`` says the table is complete."""

    index: int
    data: bytes

    @property
    def last(self) -> bool:
        return not self.data


def read_header(source: Reader) -> dict[str, Any]:
    """The header of an export; ``IntegrityError`` when it is not one, or a newer format."""
    if _exactly(source, len(MAGIC)) != MAGIC:
        raise IntegrityError("not a strongroom tenant export (no SRTENANT magic)")
    (size,) = _U32.unpack(_exactly(source, _U32.size))
    try:
        header = json.loads(_exactly(source, size).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"malformed tenant export header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise IntegrityError(f"tenant export format {found!r}: this version reads {FORMAT!r}")
    return header


def read_chunks(source: Reader, tables: int) -> Iterator[Chunk]:
    """Every chunk after the header, checked: tables in order, each ended, the export ended."""
    expected = 0
    while True:
        index, size = _FRAME.unpack(_exactly(source, _FRAME.size))
        if index == END_OF_EXPORT:
            if expected != tables or size != 0:
                raise IntegrityError(f"tenant export ended after {expected} of {tables} tables")
            return
        if index != expected:
            raise IntegrityError(f"tenant export holds table {index} where {expected} was due")
        yield Chunk(index, _exactly(source, size) if size else b"")
        if size == 0:
            expected += 1


def _exactly(source: Reader, size: int) -> bytes:
    parts, left = [], size
    while left > 0:
        part = source.read(left)
        if not part:
            raise IntegrityError("tenant export is truncated")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
