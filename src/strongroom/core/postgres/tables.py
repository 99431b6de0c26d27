"""The user tables of a database and their exact row counts (preflight, dump and restore)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

#: Ordinary tables outside the system schemas and extensions, with what the preflight needs.
TABLES_SQL = """
SELECT n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_get_userbyid(c.relowner) = current_user AS owned,
       has_table_privilege(c.oid, 'SELECT') AS readable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.name))


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Rows of :data:`TABLES_SQL`: schema, name, RLS on, RLS forced, owned, readable."""
    return conn.execute(TABLES_SQL, (list(SYSTEM_SCHEMAS),)).fetchall()


def count_rows(conn: psycopg.Connection[Any], tables: Sequence[TableRef]) -> dict[str, int]:
    """Exact row counts per table (``schema.table``), as the connection's snapshot sees them."""
    counts: dict[str, int] = {}
    for table in tables:
        query = sql.SQL("SELECT count(*) FROM ONLY {}").format(table.ident())
        row = conn.execute(query).fetchone()
        counts[str(table)] = int(row[0]) if row else 0
    return counts
