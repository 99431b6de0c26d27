"""What a one-tenant restore loads: each tenant table's rows as COPY input, from either backup kind.

A tenant backup carries them as COPY binary streams (``strongroom-tenant/1``); a nightly full
backup carries every tenant's rows as pg_dump TABLE DATA, from which one tenant's lines are
picked (:mod:`strongroom.core.postgres.tenant_extract`). The loader
(:mod:`strongroom.core.postgres.tenant_load`) stages whatever a source yields and works out the
foreign-key order from the target itself, so a source may yield tables in any order, and the
same table more than once (a full backup holds one TABLE DATA entry per partition; each is
yielded under its partitioned parent's name).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from strongroom.core.postgres.tenants import Column

CopyFormat = Literal["binary", "text"]


@dataclass
class TableRows:
    """One table's (or one partition's) rows of the tenant, as ``COPY ... FROM STDIN`` input."""

    #: ``schema.table`` as the target knows it; a partition's rows come under its parent.
    name: str
    #: The columns the COPY input holds, in its order (types as ``format_type`` spells them).
    columns: tuple[Column, ...]
    format: CopyFormat
    #: The COPY input itself; read once, to the end, before the source yields the next table.
    chunks: Iterator[bytes]


class TenantRows(Protocol):
    """A backup's rows of one tenant, read in one pass."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def expected_rows(self) -> dict[str, int]:
        """The manifest's row count per tenant table (``schema.table``), the restore's yardstick."""
        ...

    def tables(self) -> Iterator[TableRows]: ...
