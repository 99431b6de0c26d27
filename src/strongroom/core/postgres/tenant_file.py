"""A tenant backup's rows as :class:`TenantRows`: the decrypted ``strongroom-tenant/1`` stream.

The restore hands this a reader over the plaintext it already proved whole (authenticated,
SHA-256, size), so the framing checks here are a second line, not the first. Each table's COPY
binary chunks are passed on as they are read, never a whole table in memory. Header keys this
version does not know (a newer writer's, such as the embedded schema) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from strongroom.core import tenant_format
from strongroom.core.postgres.tenant_rows import TableRows
from strongroom.core.postgres.tenants import Column
from strongroom.core.streams import Reader
from strongroom.errors import IntegrityError


class ExportRows:
    """One tenant backup read in one pass: its header, then each table's COPY binary stream."""

    def __init__(self, source: Reader, expected_rows: dict[str, int]) -> None:
        self.header: dict[str, Any] = tenant_format.read_header(source)
        self._source = source
        self._expected = dict(expected_rows)
        self._tables = [_described(t) for t in self.header.get("tables", [])]

    @property
    def tenant_id(self) -> str:
        return str(self.header.get("tenant_id", ""))

    @property
    def expected_rows(self) -> dict[str, int]:
        return dict(self._expected)

    def tables(self) -> Iterator[TableRows]:
        chunks = tenant_format.read_chunks(self._source, len(self._tables))
        for name, columns in self._tables:
            yield TableRows(name, columns, "binary", _one_table(chunks))
        if next(chunks, None) is not None:  # reads the end-of-export frame (checked there)
            raise IntegrityError("tenant export holds more tables than its header lists")


def _described(table: dict[str, Any]) -> tuple[str, tuple[Column, ...]]:
    columns = tuple(
        Column(str(c["name"]), str(c["type"]), str(c.get("identity", ""))) for c in table["columns"]
    )
    return str(table["name"]), columns


def _one_table(chunks: Iterator[tenant_format.Chunk]) -> Iterator[bytes]:
    """This table's chunks, up to its end-of-table frame (``read_chunks`` checks the order),
    small ones gathered: exports written before :func:`tenant_format.gathered` hold a chunk
    per row, and a ``COPY FROM`` write per row costs more than the row."""
    pending = bytearray()
    for chunk in chunks:
        if chunk.last:
            if pending:
                yield bytes(pending)
            return
        if not pending and len(chunk.data) >= tenant_format.CHUNK_TARGET:
            yield chunk.data
            continue
        pending += chunk.data
        if len(pending) >= tenant_format.CHUNK_TARGET:
            yield bytes(pending)
            pending.clear()
    raise IntegrityError("tenant export ended inside a table")
