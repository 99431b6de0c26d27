"""The tenant model, read from the catalog views: which tables hold a tenant's rows, in FK order.

Configured, not guessed: the tenant table (its single-column primary key is the tenant id) and
the tenant column (every table holding it is a tenant table). Partitioned tables are exported
through their parent (partitions are skipped); tables without the column are shared and never
part of a tenant backup. A table with RLS enabled that neither holds the column nor reaches the
tenant table by foreign keys is an error naming it: RLS says it is private to someone, and we
could not say to whom.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from strongroom.core.postgres.tables import SYSTEM_SCHEMAS, TableRef
from strongroom.errors import PreflightError

#: Tables and partitioned parents outside the system schemas and extensions.
_RELATIONS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relrowsecurity, pg_get_userbyid(c.relowner),
       c.relkind = 'p'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""
#: Exported columns: stored generated ones are recomputed by PostgreSQL, so left out.
_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity
FROM pg_attribute a
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attrelid, a.attnum
"""
_FOREIGN_KEYS_SQL = """
SELECT conrelid, confrelid FROM pg_constraint
WHERE contype = 'f' AND conparentid = 0 AND conrelid = ANY(%s) AND confrelid = ANY(%s)
"""
_PRIMARY_KEY_SQL = """
SELECT array_agg(a.attname ORDER BY a.attnum)
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s AND i.indisprimary
"""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    #: ``attidentity``: ``a`` GENERATED ALWAYS, ``d`` BY DEFAULT, ``""`` none.
    identity: str = ""


@dataclass(frozen=True)
class TenantTable:
    """One table exported per tenant: filtered on ``filter_column`` = the tenant id."""

    ref: TableRef
    filter_column: str
    columns: tuple[Column, ...]
    owner: str
    rls: bool
    oid: int = 0
    #: Partitioned parents are read whole (their partitions hold the rows); others ``ONLY``.
    partitioned: bool = False

    def describe(self) -> dict[str, Any]:
        """The table's entry in the export header and the manifest."""
        return {
            "name": str(self.ref),
            "filter": self.filter_column,
            "rls": self.rls,
            "owner": self.owner,
            "partitioned": self.partitioned,
            "columns": [
                {"name": c.name, "type": c.type, "identity": c.identity} for c in self.columns
            ],
        }


@dataclass(frozen=True)
class TenantModel:
    """What one tenant's backup holds (``tables``, parents first) and what it leaves out."""

    tenant_table: TableRef
    tenant_key: str
    tenant_column: str
    tables: tuple[TenantTable, ...]
    shared: tuple[TableRef, ...]
    #: Shared tables with RLS that reach the tenant table only by foreign keys: not exported
    #: (no column to filter on), named in the manifest so nobody takes them for included.
    linked: tuple[TableRef, ...] = ()


@dataclass(frozen=True)
class _Relation:
    oid: int
    ref: TableRef
    rls: bool
    owner: str
    partitioned: bool


def discover(
    conn: psycopg.Connection[Any], table: str, column: str, *, key: str | None = None
) -> TenantModel:
    """The tenant model as ``conn``'s snapshot sees the catalog; ``PreflightError`` if unusable.

    ``key`` names the tenant table's key when it has no primary key *yet*: a new database whose
    schema's pre-data section is in and whose constraints come after the rows.
    """
    relations = [
        _Relation(int(r[0]), TableRef(r[1], r[2]), bool(r[3]), str(r[4]), bool(r[5]))
        for r in conn.execute(_RELATIONS_SQL, (list(SYSTEM_SCHEMAS),)).fetchall()
    ]
    tenant = _tenant_table(conn, table, relations)
    columns = _columns(conn, [r.oid for r in relations])
    key = _tenant_key(conn, tenant, key)
    members = [r for r in relations if r.oid == tenant.oid or column in _names(columns[r.oid])]
    others = [r for r in relations if r not in members]
    edges = _foreign_keys(conn, [r.oid for r in relations])
    linked = _refuse_unreachable(others, edges, tenant.oid, column)
    ordered = _parents_first(members, edges)
    tables = tuple(
        TenantTable(
            r.ref,
            key if r.oid == tenant.oid else column,
            columns[r.oid],
            r.owner,
            r.rls,
            r.oid,
            r.partitioned,
        )
        for r in ordered
    )
    return TenantModel(tenant.ref, key, column, tables, tuple(r.ref for r in others), linked)


def _tenant_table(conn: psycopg.Connection[Any], table: str, rels: list[_Relation]) -> _Relation:
    row = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()
    found = [r for r in rels if row is not None and r.oid == row[0]]
    if not found:
        raise PreflightError(
            f"tenant table {table!r} does not exist: set STRONGROOM_TENANT_TABLE to the table "
            "whose primary key is the tenant id"
        )
    return found[0]


def _tenant_key(conn: psycopg.Connection[Any], tenant: _Relation, fallback: str | None) -> str:
    row = conn.execute(_PRIMARY_KEY_SQL, (tenant.oid,)).fetchone()
    keys = list(row[0]) if row and row[0] else []
    if not keys and fallback:
        return fallback
    if len(keys) != 1:
        raise PreflightError(
            f"tenant table {tenant.ref} needs a single-column primary key (the tenant id), "
            f"it has {len(keys) or 'no'} key column(s)"
        )
    return str(keys[0])


def _columns(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, tuple[Column, ...]]:
    found: dict[int, list[Column]] = defaultdict(list)
    for oid, name, type_, identity in conn.execute(_COLUMNS_SQL, (oids,)).fetchall():
        found[int(oid)].append(Column(str(name), str(type_), str(identity or "")))
    return {oid: tuple(found[oid]) for oid in oids}


def _names(columns: tuple[Column, ...]) -> set[str]:
    return {c.name for c in columns}


def _foreign_keys(conn: psycopg.Connection[Any], oids: list[int]) -> set[tuple[int, int]]:
    """(child, parent) pairs; self-references left out (they say nothing about order)."""
    rows = conn.execute(_FOREIGN_KEYS_SQL, (oids, oids)).fetchall()
    return {(int(c), int(p)) for c, p in rows if c != p}


def _refuse_unreachable(
    others: list[_Relation], edges: set[tuple[int, int]], tenant_oid: int, column: str
) -> tuple[TableRef, ...]:
    """An RLS table that reaches no tenant is refused by name; those that do are returned."""
    parents: dict[int, set[int]] = defaultdict(set)
    for child, parent in edges:
        parents[child].add(parent)
    lost = [r for r in others if r.rls and not _reaches(r.oid, tenant_oid, parents)]
    if lost:
        names = ", ".join(str(r.ref) for r in lost)
        raise PreflightError(
            f"table {names} has row-level security but neither a {column} column nor a foreign "
            "key path to the tenant table: add the column, or set STRONGROOM_TENANT_COLUMN"
        )
    return tuple(r.ref for r in others if r.rls)


def _reaches(start: int, goal: int, parents: dict[int, set[int]]) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for parent in parents[todo.pop()]:
            if parent == goal:
                return True
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return False


def _parents_first(members: list[_Relation], edges: set[tuple[int, int]]) -> list[_Relation]:
    """Topological order by foreign keys, ties by name; a cycle is broken at the smallest name."""
    oids = {r.oid for r in members}
    waiting = {r.oid: {p for c, p in edges if c == r.oid and p in oids} for r in members}
    by_oid = {r.oid: r for r in members}
    ordered: list[_Relation] = []
    while waiting:
        ready = sorted((o for o, deps in waiting.items() if not deps), key=_name_of(by_oid))
        ready = ready or [min(waiting, key=_name_of(by_oid))]
        for oid in ready:
            ordered.append(by_oid[oid])
            del waiting[oid]
        for deps in waiting.values():
            deps.difference_update(ready)
    return ordered


def _name_of(by_oid: dict[int, _Relation]) -> Any:
    return lambda oid: str(by_oid[oid].ref)


def tenant_filter(table: TenantTable, tenant_id: str) -> sql.Composed:
    """``<filter column> = '<tenant id>'``: a literal, since COPY takes no parameters."""
    return sql.SQL("{} = {}").format(sql.Identifier(table.filter_column), sql.Literal(tenant_id))


def source_of(table: TenantTable) -> sql.Composed:
    """``ONLY <table>``, or the partitioned parent itself (which holds no rows of its own)."""
    return table.ref.ident() if table.partitioned else sql.SQL("ONLY {}").format(table.ref.ident())


def count_tenant_rows(
    conn: psycopg.Connection[Any], model: TenantModel, tenant_id: str
) -> dict[str, int]:
    """The tenant's rows per table (``schema.table``), as ``conn``'s snapshot and role see them."""
    counts: dict[str, int] = {}
    for table in model.tables:
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            source_of(table), tenant_filter(table, tenant_id)
        )
        row = conn.execute(query).fetchone()
        counts[str(table.ref)] = int(row[0]) if row else 0
    return counts


def tenant_ids(conn: psycopg.Connection[Any], model: TenantModel) -> list[str]:
    """Every tenant id, in order (``conn`` must see every row: it bypasses RLS)."""
    query = sql.SQL("SELECT {}::text FROM {} ORDER BY 1").format(
        sql.Identifier(model.tenant_key), model.tenant_table.ident()
    )
    return [str(r[0]) for r in conn.execute(query).fetchall()]


def rows_per_tenant(conn: psycopg.Connection[Any], model: TenantModel) -> dict[str, int]:
    """Rows of every tenant table per tenant id, summed (``conn`` bypasses RLS)."""
    totals: dict[str, int] = defaultdict(int)
    for table in model.tables:
        query = sql.SQL("SELECT {}::text, count(*) FROM {} GROUP BY 1").format(
            sql.Identifier(table.filter_column), source_of(table)
        )
        for tenant, rows in conn.execute(query).fetchall():
            totals[str(tenant)] += int(rows)
    return dict(totals)
