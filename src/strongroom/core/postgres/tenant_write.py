"""Writing a tenant's staged rows over its current ones: the changes only, or everything.

Both ways end with the tenant's rows of each table equal to the staged ones, byte for byte,
and the tenant table's own row upserted, never deleted (shared rows may reference it):

* **changes** (every table has a primary key): one full join per table of the tenant's rows
  with the staged ones, on the key, puts the keys that differ in a temporary table, each
  marked for delete (the backup lacks it), update (both have it, the contents differ by
  ``record_image_eq``: PostgreSQL's binary row comparison, the ``*=`` of ``REFRESH
  MATERIALIZED VIEW CONCURRENTLY``) or insert (the target lacks it). Then children first the
  deletes, parents first the updates and inserts, each joining only those keys. A restore
  after "half the inventory was deleted" writes that half, not the whole tenant twice (delete
  and insert); the untouched rows, their index entries and foreign-key checks cost nothing.
* **everything**: the tenant's rows deleted children first, the staged ones inserted parents
  first, one ``INSERT ... SELECT`` each.

Either way each table's rows go in sorted by the key into its largest parent
(:func:`insert_orders`): every inserted row pays one foreign-key check per parent, and sorted
rows find their parents where the previous row's check just looked.

The changes are tried first inside a savepoint and each table is then proven equal to the
staged rows: each delete, update and insert must have written exactly the keys marked for it
(RLS hides rows from an UPDATE or DELETE without an error; a cascade may take a row an update
then misses) and the tenant's rows must number the staged ones. Those counts are a proof only
where the statements run nothing of the application's own, so a table with a trigger (not a
constraint's) or a rule is compared whole instead: a full join on the key, contents compared
byte for byte. A constraint the changes trip over in passing (a unique value moving between
two rows, a deleted parent its current child still references) or a table that did not come
out equal rolls back to the savepoint and everything is written instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from strongroom.core.postgres.tables import TableRef
from strongroom.core.postgres.tenants import Column
from strongroom.errors import RestoreError

log = logging.getLogger("strongroom.tenant_restore")

Conn = psycopg.Connection[Any]

_PRIMARY_KEYS_SQL = """
SELECT i.indrelid, array_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum))
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = ANY(%s) AND i.indisprimary
GROUP BY i.indrelid
"""
#: Each foreign key of the tables: its columns, and the size of the parent's index that every
#: inserted row's check walks (a partitioned parent: its partitions' indexes together).
_FOREIGN_KEYS_SQL = """
SELECT c.conrelid,
       array_agg(a.attname ORDER BY k.n),
       CASE WHEN i.relkind = 'I'
            THEN (SELECT COALESCE(sum(pg_relation_size(t.relid)), 0)
                  FROM pg_partition_tree(c.conindid) t)
            ELSE pg_relation_size(c.conindid) END
FROM pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
JOIN pg_class i ON i.oid = c.conindid
WHERE c.contype = 'f' AND c.conrelid = ANY(%s)
GROUP BY c.oid, c.conrelid, c.conindid, i.relkind
ORDER BY c.conrelid, c.conname
"""

#: ``default_statistics_target`` while the staged and diff tables are analyzed.
STAGE_STATISTICS = "10"


@dataclass(frozen=True)
class TargetTable:
    """A tenant table as the target has it: where its rows go, how the tenant's are found."""

    ref: TableRef
    oid: int
    #: The column that says whose a row is (the key, for the tenant table); None: not known.
    filter_column: str | None
    columns: dict[str, Column]
    partitioned: bool = False
    is_tenant_table: bool = False

    def source(self) -> sql.Composed:
        return self.ref.ident() if self.partitioned else sql.SQL("ONLY {}").format(self.ref.ident())


@dataclass
class Staged:
    """Where one table's rows of the source went (a temporary table, or the table itself)."""

    table: TargetTable
    into: sql.Composable
    columns: tuple[str, ...]
    rows: int = 0


def is_tenant(column: str | None, tenant: str, alias: str | None = None) -> sql.Composed:
    """``<column> = '<tenant>'``: a literal the server casts to the column's type."""
    if column is None:
        return sql.SQL("true").format()
    name = sql.Identifier(alias, column) if alias else sql.Identifier(column)
    return sql.SQL("{} = {}").format(name, sql.Literal(tenant))


def write(conn: Conn, staged: Sequence[Staged], tenant: str) -> dict[str, int]:
    """Make the tenant's rows the staged ones (``staged`` parents first); rows per table."""
    keys = _primary_keys(conn, staged)
    orders = insert_orders(conn, staged, keys)
    if keys is not None:
        conn.execute("SAVEPOINT strongroom_changes")
        try:
            restored = _write_changes(conn, staged, keys, orders, tenant)
            conn.execute("RELEASE SAVEPOINT strongroom_changes")
            return restored
        except (psycopg.errors.IntegrityError, _NotTheSame) as exc:
            conn.execute("ROLLBACK TO SAVEPOINT strongroom_changes")
            why = exc.diag.message_primary if isinstance(exc, psycopg.Error) else str(exc)
            log.info("writing the changes only tripped over %s: writing every row", why)
    return _write_everything(conn, staged, orders, tenant)


class _NotTheSame(Exception):
    """After the changes, a table's rows of the tenant still differ from the staged ones (a
    policy that hides rows from UPDATE or DELETE, a trigger that rewrites them)."""


def _primary_keys(conn: Conn, staged: Sequence[Staged]) -> dict[int, tuple[str, ...]] | None:
    """Each table's primary key, if every table has one the rows can be matched by."""
    rows = conn.execute(_PRIMARY_KEYS_SQL, ([s.table.oid for s in staged],)).fetchall()
    keys = {int(oid): tuple(str(c) for c in cols) for oid, cols in rows}
    for s in staged:
        key = keys.get(s.table.oid)
        if not key or not set(key) <= set(s.columns) or s.table.filter_column is None:
            return None
        if any(s.table.columns[c].identity == "a" for c in s.columns if c not in key):
            return None  # an ALWAYS identity outside the key cannot be updated
    return keys


def insert_orders(
    conn: Conn, staged: Sequence[Staged], keys: dict[int, tuple[str, ...]] | None
) -> dict[int, tuple[str, ...]]:
    """The columns each table's rows are inserted in the order of (by table oid).

    Every inserted row costs one foreign-key check per parent (PostgreSQL's RI trigger: an
    index probe and a key-share lock of the parent row): rows sorted by their key into the
    largest parent find each parent in the index pages the previous row's check just read
    (a sale's lines one after another), and the table's own index on those columns takes
    them in order too. A table with no such key (its only parent the tenant table, whose key
    is the same for every row) goes in its primary key's order. The order changes where rows
    land on disk, never which rows or what they hold.
    """
    tenant_column = {s.table.oid: (s.table.filter_column,) for s in staged}
    largest: dict[int, tuple[int, tuple[str, ...]]] = {}
    for oid, columns, size in conn.execute(_FOREIGN_KEYS_SQL, (list(tenant_column),)).fetchall():
        by = tuple(str(c) for c in columns)
        if by != tenant_column[int(oid)] and int(size) > largest.get(int(oid), (-1, ()))[0]:
            largest[int(oid)] = (int(size), by)  # (the tenant table's key: the same in every row)
    orders: dict[int, tuple[str, ...]] = {}
    for s in staged:
        if s.table.is_tenant_table:
            continue
        by = largest.get(s.table.oid, (0, ()))[1] or (keys or {}).get(s.table.oid, ())
        if by and set(by) <= set(s.columns):
            orders[s.table.oid] = by
    return orders


def _write_changes(
    conn: Conn,
    staged: Sequence[Staged],
    keys: dict[int, tuple[str, ...]],
    orders: dict[int, tuple[str, ...]],
    tenant: str,
) -> dict[str, int]:
    started = time.monotonic()
    # the joins need row counts and the keys' spread, not detailed histograms: 3,000 sampled
    # rows a table instead of 30,000 (transaction-local, like the rest of the load's settings)
    conn.execute("SELECT set_config('default_statistics_target', %s, true)", (STAGE_STATISTICS,))
    for s in staged:
        if not s.table.is_tenant_table:
            conn.execute(sql.SQL("ANALYZE {}").format(s.into))  # temp tables get no autovacuum
    log.info("staged rows analyzed in %.2f s", time.monotonic() - started)
    diffs = {
        s.table.oid: _classify(conn, s, keys[s.table.oid], tenant, index)
        for index, s in enumerate(staged)
        if not s.table.is_tenant_table
    }
    for s in reversed(staged):
        if not s.table.is_tenant_table:
            diff = diffs[s.table.oid]
            delete = _delete_absent(s, keys[s.table.oid], tenant, diff.name)
            diff.done("d", _timed(conn, "deleted", s, delete))
    rewritten = _rewritten(conn, staged)
    restored: dict[str, int] = {}
    for s in staged:
        if s.table.is_tenant_table:
            restored[str(s.table.ref)] = _timed(conn, "upserted", s, _insert(s, tenant))
            continue
        key, diff = keys[s.table.oid], diffs[s.table.oid]
        update = _update_changed(s, key, tenant, diff.name)
        if update is not None:
            diff.done("u", _timed(conn, "updated", s, update))
        order = orders.get(s.table.oid, ())
        insert = _insert(s, tenant, missing=(key, diff.name), order=order)
        diff.done("i", _timed(conn, "inserted", s, insert))
        diff.check(s)
        if s.table.oid in rewritten:  # a trigger or rule may have written more, or otherwise
            restored[str(s.table.ref)] = _check_same(conn, s, key, tenant)
        else:
            restored[str(s.table.ref)] = _check_count(conn, s, tenant)
    return restored


@dataclass
class _Diff:
    """A table's diff table and how many keys it marks for each write (``d``, ``u``, ``i``)."""

    name: sql.Identifier
    marked: dict[str, int]
    written: dict[str, int] = field(default_factory=dict)

    def done(self, op: str, rows: int) -> None:
        self.written[op] = rows

    def check(self, s: Staged) -> None:
        """Each write touched exactly the keys marked for it: no policy hid a row from an
        UPDATE or DELETE (RLS skips those rows silently), no cascade took a row it updates."""
        for op, what in (("d", "deleted"), ("u", "updated"), ("i", "inserted")):
            marked, written = self.marked.get(op, 0), self.written.get(op, 0)
            if marked != written:
                raise _NotTheSame(f"{s.table.ref}: {written} rows {what} of {marked} that differ")


#: Tables (by oid, partitions under their root) whose writes run code of the application: a
#: trigger that is not a constraint's own, or a rule.
_REWRITTEN_SQL = """
SELECT DISTINCT r.oid
FROM unnest(%s::oid[]) AS r(oid)
CROSS JOIN LATERAL (SELECT r.oid UNION SELECT relid FROM pg_partition_tree(r.oid)) AS p(relid)
WHERE EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p.relid AND NOT t.tgisinternal)
   OR EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = p.relid AND w.rulename <> '_RETURN')
"""


def _rewritten(conn: Conn, staged: Sequence[Staged]) -> set[int]:
    """The tables whose rows after the writes are proven by comparing them all (a trigger or
    a rule may change a row as it is written, or other rows); the rest by their counts."""
    rows = conn.execute(_REWRITTEN_SQL, ([s.table.oid for s in staged],)).fetchall()
    return {int(r[0]) for r in rows}


#: The column of a diff table that says what to do with the key: ``d``elete, ``u``pdate or
#: ``i``nsert (a name no key column can clash with in practice: it is not a valid bare name).
_OP = sql.Identifier("strongroom op")


def _classify(conn: Conn, s: Staged, key: tuple[str, ...], tenant: str, index: int) -> _Diff:
    """The keys whose rows differ between the tenant's current rows and the staged ones, each
    with what to do (:data:`_OP`), in a temporary table; its name.

    One full join of the two decides every write of the table; the delete, update and insert
    then touch only those keys (an incident's share), instead of each joining the whole tenant's
    rows with the staged ones again.
    """
    diff = sql.Identifier(f"strongroom_diff_{index}")
    t_key, s_key = sql.Identifier("t", key[0]), sql.Identifier("s", key[0])
    query = sql.SQL(
        "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT"
        " CASE WHEN {} IS NULL THEN 'i' WHEN {} IS NULL THEN 'd' ELSE 'u' END AS {}, {}"
        " {} WHERE {} IS NULL OR {} IS NULL OR NOT record_image_eq({}, {})"
    ).format(
        diff, t_key, s_key, _OP,
        sql.SQL(", ").join(
            sql.SQL("COALESCE({}, {}) AS {}").format(
                sql.Identifier("s", c), sql.Identifier("t", c), sql.Identifier(c)
            )
            for c in key
        ),
        _full_join(s, key, tenant),
        t_key, s_key, _row("t", s.columns), _row("s", s.columns),
    )  # fmt: skip
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(query)
        rows = max(0, int(cur.rowcount))
    conn.execute(sql.SQL("ANALYZE {}").format(diff))
    count = sql.SQL("SELECT {}, count(*) FROM {} GROUP BY 1").format(_OP, diff)
    marked = {str(op): int(n) for op, n in conn.execute(count).fetchall()}
    log.info("%s: %d rows differ (%.2f s)", s.table.ref, rows, time.monotonic() - started)
    return _Diff(diff, marked)


def _full_join(s: Staged, key: tuple[str, ...], tenant: str) -> sql.Composed:
    """``FROM`` the tenant's current rows (``t``, the staged columns) ``FULL JOIN`` the staged
    ones (``s``) on the key: what the classifying and the proving joins both compare."""
    mine = sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in s.columns),
        s.table.source(),
        is_tenant(s.table.filter_column, tenant),
    )
    return sql.SQL("FROM ({}) AS t FULL JOIN {} AS s ON {}").format(mine, s.into, _same(key))


def _check_count(conn: Conn, s: Staged, tenant: str) -> int:
    """The tenant's rows of a table no trigger or rule writes: as many as were staged (the
    writes' counts proved each key's row; this proves no other row came or went meanwhile)."""
    started = time.monotonic()
    rows = _count(conn, s.table, tenant)
    log.info("%s: %d rows counted in %.2f s", s.table.ref, rows, time.monotonic() - started)
    if rows != s.rows:
        raise _NotTheSame(
            f"{s.table.ref}: {rows} rows of the tenant after writing, {s.rows} staged"
        )
    return rows


def _check_same(conn: Conn, s: Staged, key: tuple[str, ...], tenant: str) -> int:
    """The tenant's rows of the table, proven equal to the staged ones; ``_NotTheSame`` if not."""
    t_key, s_key = sql.Identifier("t", key[0]), sql.Identifier("s", key[0])
    query = sql.SQL(
        "SELECT count({}), count(*) FILTER (WHERE {} IS NULL),"
        " count(*) FILTER (WHERE {} IS NULL),"
        " count(*) FILTER (WHERE {} IS NOT NULL AND {} IS NOT NULL"
        " AND NOT record_image_eq({}, {})) {}"
    ).format(
        t_key, s_key, t_key, t_key, s_key, _row("t", s.columns), _row("s", s.columns),
        _full_join(s, key, tenant),
    )  # fmt: skip
    started = time.monotonic()
    row = conn.execute(query).fetchone()
    rows, extra, missing, differ = (int(v) for v in row) if row else (0, 0, 0, 0)
    log.info("%s: %d rows compared in %.2f s", s.table.ref, rows, time.monotonic() - started)
    if extra or missing or differ:
        raise _NotTheSame(
            f"{s.table.ref}: {extra} rows not in the backup, {missing} missing, {differ} "
            "different after writing the changes"
        )
    return rows


def _write_everything(
    conn: Conn, staged: Sequence[Staged], orders: dict[int, tuple[str, ...]], tenant: str
) -> dict[str, int]:
    for s in reversed(staged):
        if not s.table.is_tenant_table:
            statement = sql.SQL("DELETE FROM {} WHERE {}").format(
                s.table.source(), is_tenant(s.table.filter_column, tenant)
            )
            _timed(conn, "deleted", s, statement)
            left = _count(conn, s.table, tenant)
            if left:
                raise RestoreError(
                    f"{left} rows of tenant {tenant} in {s.table.ref} could not be deleted (a "
                    "row-level security policy without DELETE for this role?): restore as a role "
                    "the policies let delete and insert the tenant's rows; nothing was changed"
                )
    return {
        str(s.table.ref): _timed(
            conn, "inserted", s, _insert(s, tenant, order=orders.get(s.table.oid, ()))
        )
        for s in staged
    }


def _delete_absent(
    s: Staged, key: tuple[str, ...], tenant: str, diff: sql.Composable
) -> sql.Composed:
    """The tenant's rows whose key the backup does not hold (``d`` in the table's diff)."""
    return sql.SQL("DELETE FROM {} AS t USING {} AS d WHERE {} AND d.{} = 'd' AND {}").format(
        s.table.source(), diff, is_tenant(s.table.filter_column, tenant, "t"), _OP,
        _same(key, "t", "d"),
    )  # fmt: skip


def _update_changed(
    s: Staged, key: tuple[str, ...], tenant: str, diff: sql.Composable
) -> sql.Composed | None:
    """The tenant's rows the backup holds under the same key with other contents (``u``)."""
    others = [c for c in s.columns if c not in key]
    if not others:
        return None
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("s", c)) for c in others
    )
    return sql.SQL(
        "UPDATE {} AS t SET {} FROM {} AS s JOIN {} AS d ON {} WHERE {} AND d.{} = 'u' AND {}"
    ).format(
        s.table.source(),
        sets,
        s.into,
        diff,
        _same(key, "s", "d"),
        is_tenant(s.table.filter_column, tenant, "t"),
        _OP,
        _same(key),
    )


def _insert(
    s: Staged,
    tenant: str,
    missing: tuple[tuple[str, ...], sql.Composable] | None = None,
    order: tuple[str, ...] = (),
) -> sql.Composed:
    """``INSERT ... SELECT`` from the stage (with ``missing``, the key and the diff table: only
    the rows the target lacks, ``i``), sorted by ``order`` (``insert_orders``); the tenant
    table's row is upserted."""
    table = s.table
    columns = sql.SQL(", ").join(sql.Identifier(n) for n in s.columns)
    overriding = any(table.columns[n].identity == "a" for n in s.columns)
    join: sql.Composable = sql.SQL("")
    where = is_tenant(table.filter_column, tenant, "s")
    if missing is not None and not table.is_tenant_table:
        key, diff = missing
        join = sql.SQL(" JOIN {} AS d ON {}").format(diff, _same(key, "s", "d"))
        where = sql.SQL("{} AND d.{} = 'i'").format(where, _OP)
    statement = sql.SQL("INSERT INTO {} ({}) {}SELECT {} FROM {} AS s{} WHERE {}").format(
        table.ref.ident(),
        columns,
        sql.SQL("OVERRIDING SYSTEM VALUE " if overriding else ""),
        sql.SQL(", ").join(sql.Identifier("s", n) for n in s.columns),
        s.into,
        join,
        where,
    )
    if order:
        statement += sql.SQL(" ORDER BY {}").format(
            sql.SQL(", ").join(sql.Identifier("s", c) for c in order)
        )
    if table.is_tenant_table and table.filter_column:
        statement += _upsert(table, s.columns)
    return statement


def _upsert(table: TargetTable, names: tuple[str, ...]) -> sql.Composed:
    """``ON CONFLICT (key) DO UPDATE`` every other column (an ALWAYS identity cannot be set)."""
    key = table.filter_column
    assert key is not None
    others = [n for n in names if n != key and table.columns[n].identity != "a"]
    if not others:
        return sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(sql.Identifier(key))
    sets = sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n)) for n in others
    )
    return sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(sql.Identifier(key), sets)


def _same(key: Iterable[str], left: str = "s", right: str = "t") -> sql.Composed:
    """``left.k = right.k`` for each key column."""
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, c), sql.Identifier(right, c)) for c in key
    )


def _row(alias: str, columns: Iterable[str]) -> sql.Composed:
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns))


def _count(conn: Conn, table: TargetTable, tenant: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        table.source(), is_tenant(table.filter_column, tenant)
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _timed(conn: Conn, what: str, s: Staged, statement: sql.Composed) -> int:
    """Run one write; log its rows and seconds (``-v``); return its row count."""
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(statement)
        rows = max(0, int(cur.rowcount))
    log.info("%s: %d rows %s in %.2f s", s.table.ref, rows, what, time.monotonic() - started)
    return rows
