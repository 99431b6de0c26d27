"""Loading one tenant's rows into a live database, in one transaction, beside every other tenant.

The target keeps serving every other tenant while this runs, so nothing here takes a lock an
ordinary write would not (ROW EXCLUSIVE on the tables, no TRUNCATE, no LOCK TABLE), and no
statement touches a row of another tenant: every DELETE and INSERT filters on the tenant column.
In order, in one transaction (READ COMMITTED):

1. the tenant model is discovered on the target (FK order, keys, columns, sequences) and the
   tenant setting is set for the transaction, so RLS policies (when the role is subject to them)
   admit the tenant's rows, and their WITH CHECK proves every inserted row is the tenant's;
2. without ``replace``, a tenant that still has rows is refused (how many, where);
3. every table the source yields is checked against the target (same columns, same types as
   ``format_type`` spells them: :class:`SchemaDrift` names table and column) and staged by
   ``COPY ... FROM STDIN`` into a temporary table (``ON COMMIT DROP``; a table yielded twice,
   one partition after another, is appended); every staged row must be the tenant's, and the
   staged counts must equal the source's expected ones;
4. only then the tenant's current rows are made the staged ones (``tenant_write.py``): where
   every table has a primary key, only the rows that differ are deleted (children first),
   updated or inserted (parents first), else all of them are deleted and inserted; the tenant
   table's own row is upserted (``ON CONFLICT (key) DO UPDATE``), never deleted, so shared rows
   referencing it are not disturbed; inserts are ``OVERRIDING SYSTEM VALUE`` (identity and
   serial values kept), one ``INSERT ... SELECT`` per table, sorted by the key into the
   table's largest parent, with ``work_mem`` raised for this transaction only;
5. sequences are moved forward past the restored values, never backwards.

Any error rolls everything back (the temporary tables go with it) and is one line naming the
table and the constraint. ``empty=True`` is the load into a database whose schema was just
created without its constraints (pg_restore's pre-data): rows are copied straight into the
tables, no deletes, then the same checks and sequences.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.core.postgres.tables import TableRef
from strongroom.core.postgres.tenant_export import TenantScope
from strongroom.core.postgres.tenant_rows import TableRows, TenantRows
from strongroom.core.postgres.tenant_write import Staged, TargetTable, is_tenant, write
from strongroom.core.postgres.tenants import Column, TenantModel, discover, source_of
from strongroom.errors import (
    RestoreError,
    SchemaDrift,
    TargetBusy,
    TargetNotEmpty,
    TenantRowsMismatch,
)

Conn = psycopg.Connection[Any]

log = logging.getLogger("strongroom.tenant_restore")

#: Local buffers for the staging tables: the default 8 MB would send a big tenant to disk twice.
TEMP_BUFFERS = "256MB"
#: Memory for each sort and hash of the write (this transaction only): the inserts sorted by a
#: parent's key and the joins of the staged rows with the tenant's current ones hold a big
#: tenant's rows in memory instead of spilling them to temporary files at the default 4 MB.
WORK_MEM = "128MB"
_FORMATS = {"binary": sql.SQL("binary"), "text": sql.SQL("text")}
_NOTHING = "nothing was changed"

_TARGET_COLUMNS_SQL = """
SELECT c.oid, c.relkind = 'p', a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""
_PRIMARY_KEY_SQL = """
SELECT array_agg(a.attname ORDER BY a.attnum)
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s AND i.indisprimary
"""
#: Sequences owned by a column (serial: deptype 'a'; identity: deptype 'i').
_SEQUENCES_SQL = """
SELECT d.refobjid, a.attname, d.objid
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = ANY(%s) AND d.deptype IN ('a', 'i')
"""


@dataclass
class _Load:
    """One load's state: the target's tenant tables (parents first) and what was staged."""

    conn: Conn
    scope: TenantScope
    source: TenantRows
    replace: bool
    empty: bool
    key: str | None
    tables: dict[str, TargetTable] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    staged: dict[str, Staged] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.source.tenant_id

    def run(self) -> dict[str, int]:
        if not self.empty:
            self.conn.execute(sql.SQL("SET temp_buffers = {}").format(sql.Literal(TEMP_BUFFERS)))
            self.conn.execute("SELECT set_config('work_mem', %s, true)", (WORK_MEM,))
        self.conn.execute("SELECT set_config(%s, %s, true)", (self.scope.setting, self.tenant))
        if not self.empty:
            model = discover(self.conn, self.scope.table, self.scope.column)
            self._use_model(model)
            self._refuse_existing_rows(model)
        for rows in self.source.tables():
            self._stage(rows)
        self._check_staged()
        if self.empty:
            restored = {name: s.rows for name, s in self.staged.items()}
        else:
            ordered = [self.staged[n] for n in self.order if n in self.staged]
            restored = write(self.conn, ordered, self.tenant)
        self._advance_sequences()
        return restored

    # -- the target's tables --------------------------------------------------------------------

    def _use_model(self, model: TenantModel) -> None:
        for t in model.tables:
            name = str(t.ref)
            self.tables[name] = TargetTable(
                t.ref,
                t.oid,
                t.filter_column,
                {c.name: c for c in t.columns},
                t.partitioned,
                t.ref == model.tenant_table,
            )
            self.order.append(name)

    def _table(self, name: str) -> TargetTable | None:
        """The target's table ``name``; in empty mode looked up on first use (no keys yet)."""
        if self.empty and name not in self.tables:
            found = _lookup(self.conn, name, self.scope, self.key)
            if found is not None:
                self.tables[name] = found
                self.order.append(name)
        return self.tables.get(name)

    def _refuse_existing_rows(self, model: TenantModel) -> None:
        if self.replace:
            return
        found = {}
        for table in model.tables:
            query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                source_of(table), is_tenant(table.filter_column, self.tenant)
            )
            row = self.conn.execute(query).fetchone()
            if row and row[0]:
                found[str(table.ref)] = int(row[0])
        if found:
            where = ", ".join(f"{n} in {t}" for t, n in found.items())
            raise TargetNotEmpty(
                f"tenant {self.tenant} still has {sum(found.values())} rows in the target "
                f"({where}): add --replace to replace them with the backup's"
            )

    # -- staging --------------------------------------------------------------------------------

    def _stage(self, rows: TableRows) -> None:
        table = self._table(rows.name)
        _check_drift(rows, table, self.scope.column)
        assert table is not None
        names = tuple(c.name for c in rows.columns)
        staged = self.staged.get(rows.name)
        if staged is None:
            staged = Staged(table, self._stage_into(table, names), names)
            self.staged[rows.name] = staged
        elif staged.columns != names:
            raise RestoreError(
                f"the backup holds {rows.name} twice with different columns; {_NOTHING}"
            )
        started = time.monotonic()
        copied = _copy(self.conn, staged.into, names, rows)
        staged.rows += copied
        log.info("%s: %d rows staged in %.2f s", rows.name, copied, time.monotonic() - started)

    def _stage_into(self, table: TargetTable, names: tuple[str, ...]) -> sql.Composable:
        if self.empty:
            return table.ref.ident()
        stage = sql.Identifier(f"strongroom_stage_{len(self.staged)}")
        # the types are the target's own format_type() text (the drift check compared them), so
        # they name exactly the target's types; the server quoted them itself
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(table.columns[n].type))
            for n in names
        )
        self.conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(stage, columns)
        )
        return stage

    def _check_staged(self) -> None:
        """Every staged row is the tenant's, and the source's counts are what it promised."""
        started = time.monotonic()
        for name, staged in self.staged.items():
            self._refuse_foreign_rows(name, staged)
        log.info(
            "every staged row is tenant %s's (%.2f s)", self.tenant, time.monotonic() - started
        )
        expected = self.source.expected_rows
        differ = {
            t: (expected.get(t, 0), self.staged[t].rows if t in self.staged else 0)
            for t in sorted(set(expected) | set(self.staged))
        }
        differ = {t: (e, s) for t, (e, s) in differ.items() if e != s}
        if differ:
            detail = ", ".join(f"{t}: {s} read, {e} expected" for t, (e, s) in differ.items())
            raise TenantRowsMismatch(
                f"the backup's rows of tenant {self.tenant} differ from its manifest ({detail}); "
                f"{_NOTHING}"
            )

    def _refuse_foreign_rows(self, name: str, staged: Staged) -> None:
        column = staged.table.filter_column
        into = staged.table.source() if self.empty else staged.into
        if column is None:  # an empty target's tenant table without a key yet: one row only
            if staged.rows > 1:
                raise RestoreError(
                    f"{name} of the backup holds {staged.rows} rows, one tenant has one; {_NOTHING}"
                )
            return
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} IS DISTINCT FROM {}").format(
            into, sql.Identifier(column), sql.Literal(self.tenant)
        )
        row = self.conn.execute(query).fetchone()
        if row and row[0]:
            raise RestoreError(
                f"{name} of the backup holds {row[0]} rows of another tenant than {self.tenant} "
                f"({column}); {_NOTHING}"
            )

    # -- writing --------------------------------------------------------------------------------

    def _advance_sequences(self) -> None:
        by_oid = {s.table.oid: s for s in self.staged.values()}
        rows = self.conn.execute(_SEQUENCES_SQL, (list(by_oid),)).fetchall()
        for table_oid, column, sequence in rows:
            staged = by_oid[int(table_oid)]
            if column in staged.columns:
                into = staged.table.source() if self.empty else staged.into
                _advance(self.conn, int(sequence), into, str(column))


def load_tenant(
    target: ConnInfo,
    scope: TenantScope,
    source: TenantRows,
    *,
    replace: bool,
    empty: bool = False,
    key: str | None = None,
    lock_timeout: float | None = None,
) -> dict[str, int]:
    """Load ``source`` (module docstring); return the rows restored per table (``schema.table``).

    ``key`` names the tenant table's key where an empty target has no primary key yet;
    ``lock_timeout`` (seconds) bounds every wait for a lock another session holds.
    """
    with target.connect(autocommit=False) as conn:
        try:
            _session_limits(conn, lock_timeout)
            restored = _Load(conn, scope, source, replace, empty, key).run()
            conn.commit()
            return restored
        except psycopg.Error as exc:
            _rollback(conn)
            raise _translated(exc, source.tenant_id, lock_timeout) from None
        except BaseException:
            _rollback(conn)
            raise


def _session_limits(conn: Conn, lock_timeout: float | None) -> None:
    """Bounded waits for locks; no limit on the restore's own long statements, nor on the pauses
    between them (a full backup's other tables stream past while the transaction idles), which
    a role's own ``statement_timeout`` or ``idle_in_transaction_session_timeout`` would impose."""
    limits = {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"}
    if lock_timeout is not None:
        limits["lock_timeout"] = f"{max(1, round(lock_timeout * 1000))}ms"
    for name, value in limits.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def _rollback(conn: Conn) -> None:
    """Roll back if the connection still works; a dead one was rolled back by the server."""
    with contextlib.suppress(psycopg.Error):
        conn.rollback()


# -- helpers ------------------------------------------------------------------------------------


def _lookup(conn: Conn, name: str, scope: TenantScope, key: str | None) -> TargetTable | None:
    """A table of an empty target by name, its columns, and whose rows it holds."""
    schema, _, relname = name.partition(".")
    rows = conn.execute(_TARGET_COLUMNS_SQL, (schema, relname)).fetchall()
    if not rows:
        return None
    oid, partitioned = int(rows[0][0]), bool(rows[0][1])
    columns = {str(r[2]): Column(str(r[2]), str(r[3]), str(r[4] or "")) for r in rows}
    tenant_row = conn.execute("SELECT to_regclass(%s)::oid", (scope.table,)).fetchone()
    is_tenant_table = tenant_row is not None and tenant_row[0] == oid
    if is_tenant_table:
        column = _primary_key(conn, oid) or key
    elif scope.column in columns:
        column = scope.column
    else:
        return None
    return TargetTable(
        TableRef(schema, relname), oid, column, columns, partitioned, is_tenant_table
    )


def _primary_key(conn: Conn, oid: int) -> str | None:
    row = conn.execute(_PRIMARY_KEY_SQL, (oid,)).fetchone()
    keys = list(row[0]) if row and row[0] else []
    return str(keys[0]) if len(keys) == 1 else None


def _check_drift(rows: TableRows, table: TargetTable | None, tenant_column: str) -> None:
    """The backup's table and every column of it exist on the target with the same type."""
    fix = f"migrate the target to the backup's schema, or restore a backup that matches; {_NOTHING}"
    if table is None:
        raise SchemaDrift(
            f"table {rows.name} of the backup is not a tenant table of the target (missing, or "
            f"without its {tenant_column} column): {fix}"
        )
    for column in rows.columns:
        have = table.columns.get(column.name)
        if have is None:
            typed = f" ({column.type})" if column.type else ""
            raise SchemaDrift(
                f"column {rows.name}.{column.name}{typed} of the backup is missing on the "
                f"target: {fix}"
            )
        if have.type != column.type:
            raise SchemaDrift(
                f"column {rows.name}.{column.name} is {column.type} in the backup but "
                f"{have.type} on the target: {fix}"
            )


def _copy(conn: Conn, into: sql.Composable, names: Iterable[str], rows: TableRows) -> int:
    """Stream one table's COPY input into ``into``; the rows it held."""
    columns = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
        into, columns, _FORMATS[rows.format]
    )
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for chunk in rows.chunks:
                copy.write(chunk)
        return max(0, int(cur.rowcount))


def _advance(conn: Conn, sequence: int, rows: sql.Composable, column: str) -> None:
    """Move the sequence past the restored values if it is behind them; never backwards.

    Only a sequence behind the restored values moves (a new database, or one reset by hand):
    while it is behind, other writers drawing from it would collide with the restored keys
    anyway, so the short window between reading and setting it loses nothing.
    """
    conn.execute(
        sql.SQL(
            "SELECT setval(s.seqrelid::regclass, x.m) FROM (SELECT max({})::bigint AS m FROM {}) x"
            " JOIN pg_sequence s ON s.seqrelid = %s"
            " WHERE x.m IS NOT NULL AND s.seqincrement > 0"
            " AND x.m >= COALESCE(pg_sequence_last_value(s.seqrelid::regclass) + 1, s.seqstart)"
        ).format(sql.Identifier(column), rows),
        (sequence,),
    )


def _translated(exc: psycopg.Error, tenant: str, lock_timeout: float | None) -> RestoreError:
    """One line for the operator: which table, which constraint, and that nothing changed."""
    diag = exc.diag
    where = f"{diag.schema_name}.{diag.table_name}" if diag.table_name else "the target"
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        waited = f" ({lock_timeout:g} s)" if lock_timeout is not None else ""
        return TargetBusy(
            f"restoring tenant {tenant}: a lock on {where} stayed held by another session past "
            f"BACKUP_RESTORE_LOCK_TIMEOUT{waited}; {_NOTHING}: retry when it is free, or raise "
            "the timeout"
        )
    if isinstance(exc, psycopg.errors.IntegrityError):
        constraint = f" constraint {diag.constraint_name}" if diag.constraint_name else ""
        detail = f" ({diag.message_detail})" if diag.message_detail else ""
        return RestoreError(
            f"restoring tenant {tenant} into {where} broke{constraint}: "
            f"{diag.message_primary or redact(exc)}{detail}; {_NOTHING}"
        )
    if isinstance(exc, psycopg.errors.DataError):
        return RestoreError(
            f"tenant id {tenant!r} or its rows do not fit the target's types: {redact(exc)}; "
            f"{_NOTHING}"
        )
    return RestoreError(f"restoring tenant {tenant} failed: {redact(exc)}; {_NOTHING}")
