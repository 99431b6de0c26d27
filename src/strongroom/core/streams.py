"""Tiny stream protocols shared by the pipeline stages.

Writes are pushed (pg_dump -> compress -> encrypt -> hash -> locations); reads are pulled
(location -> hash -> decrypt -> decompress -> pg_restore). Both sides use plain ``bytes``.
"""

from __future__ import annotations

from typing import Protocol


class Writer(Protocol):
    """A push stage: ``write`` chunks, then ``close`` once to flush everything downstream."""

    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


class Reader(Protocol):
    """A pull stage: ``read(n)`` returns at most n bytes, ``b""`` at the end."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...
