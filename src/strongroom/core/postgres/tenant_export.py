"""One tenant's rows of every tenant table, read in one snapshot under the RLS policy itself.

Two connections share one snapshot. The first (the connecting role, ``REPEATABLE READ READ
ONLY``) exports it, reads the tenant model and, when that role bypasses RLS, counts the
tenant's rows independently of any policy. The second imports the snapshot, takes a role that
is *subject* to RLS (each table's owner, or ``STRONGROOM_TENANT_ROLE``) with the tenant setting
set, and runs per table ``COPY (SELECT <columns> FROM <table> WHERE <column> = <tenant>) TO
STDOUT (FORMAT binary)``. A row of another tenant would have to pass the policy *and* the column
filter; a role that bypasses RLS, or a table whose RLS its owner escapes (enabled, not forced),
is refused before any work. Each table's exported rows are checked against the count, so a
policy that hides some of the tenant's own rows fails the run instead of storing a short backup.
The stream framing is :mod:`strongroom.core.tenant_format`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from strongroom.core import tenant_format
from strongroom.core.postgres.conninfo import ConnInfo
from strongroom.core.postgres.dump import exported_snapshot, start_dump
from strongroom.core.postgres.tenants import (
    TenantModel,
    TenantTable,
    count_tenant_rows,
    discover,
    source_of,
    tenant_filter,
)
from strongroom.errors import DumpFailed, PreflightError, TenantNotFound

_ROLE_SQL = (
    "SELECT current_user, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
)


@dataclass(frozen=True)
class TenantScope:
    """The configured tenant model: table, column, the setting the policies read, the role."""

    table: str = "tenants"
    column: str = "tenant_id"
    setting: str = "app.current_tenant"
    role: str | None = None


@dataclass(frozen=True)
class SchemaDump:
    """How to take the schema-only archive a tenant backup carries: pg_dump's own settings."""

    timeout: float = 3600.0
    bindir: str | None = None

    def take(self, target: ConnInfo, snapshot: str) -> bytes:
        """``pg_dump --schema-only -Fc`` in ``snapshot``: the whole schema, small (kilobytes)."""
        dump = start_dump(
            target,
            snapshot=snapshot,
            timeout=self.timeout,
            bindir=self.bindir,
            extra_args=["--schema-only"],
        )
        try:
            archive = dump.read()
        except BaseException:
            dump.kill()
            raise
        try:
            dump.finish()
        except DumpFailed as exc:
            raise DumpFailed(f"the schema of the tenant backup: {exc}") from None
        return archive


@contextmanager
def model_snapshot(
    target: ConnInfo, scope: TenantScope
) -> Iterator[tuple[str, psycopg.Connection[Any], TenantModel, bool]]:
    """(snapshot, its connection, the tenant model in it, whether that role bypasses RLS)."""
    with exported_snapshot(target) as (snapshot, conn):
        row = conn.execute(_ROLE_SQL).fetchone()
        bypasses = bool(row and row[1])
        yield snapshot, conn, discover(conn, scope.table, scope.column), bypasses


@dataclass
class TenantSession:
    """A tenant's export, checked and counted, ready to :meth:`start` streaming."""

    tenant_id: str
    model: TenantModel
    counts: dict[str, int]
    conn: psycopg.Connection[Any]
    scope: TenantScope
    #: The roles the tables are read as, by table (``schema.table``).
    roles: dict[str, str]
    server_version: str = ""
    #: ``pg_dump --schema-only -Fc`` of the database in the export's snapshot (None: not taken).
    schema: bytes | None = None

    def start(self) -> TenantExport:
        return TenantExport(self)

    def header(self) -> dict[str, Any]:
        header = {"tenant_id": self.tenant_id, "tables": [t.describe() for t in self.model.tables]}
        if self.schema is not None:
            header["schema"] = tenant_format.encode_schema(self.schema)
        return header


@contextmanager
def tenant_session(
    target: ConnInfo,
    scope: TenantScope,
    tenant_id: str,
    *,
    schema_dump: SchemaDump | None = None,
) -> Iterator[TenantSession]:
    """Open, check and count one tenant's export; ``PreflightError``/``TenantNotFound`` first.

    With ``schema_dump``, the database's schema is dumped in the same snapshot, so a tenant
    backup can be restored into a new database (``header["schema"]``).
    """
    with model_snapshot(target, scope) as (snapshot, first, model, bypasses):
        conn = target.connect(autocommit=False)
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            conn.execute("SELECT set_config(%s, %s, true)", (scope.setting, tenant_id))
            roles = _check_roles(conn, model, scope)
            if bypasses:
                counts = _counted(first, model, tenant_id, None)
            else:
                counts = _counted(conn, model, tenant_id, roles)
            row = first.execute("SELECT current_setting('server_version')").fetchone()
            version = str(row[0]) if row else ""
            schema = schema_dump.take(target, snapshot) if schema_dump else None
            yield TenantSession(tenant_id, model, counts, conn, scope, roles, version, schema)
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            conn.close()


def _check_roles(
    conn: psycopg.Connection[Any], model: TenantModel, scope: TenantScope
) -> dict[str, str]:
    """Each table's export role: one the session may take, subject to the table's policy."""
    row = conn.execute("SELECT session_user").fetchone()
    user = str(row[0]) if row else "?"
    roles: dict[str, str] = {}
    for table in model.tables:
        role = scope.role or table.owner
        _set_role(conn, role, table, user, configured=scope.role is not None)
        row = conn.execute(_ROLE_SQL).fetchone()
        if row and row[1]:
            raise PreflightError(
                f"role {role} bypasses row-level security (superuser or BYPASSRLS), so the "
                f"export of {table.ref} would not be held by its policy: set "
                "STRONGROOM_TENANT_ROLE to a role without either"
            )
        if table.rls and not _policy_applies(conn, table):
            raise PreflightError(
                f"table {table.ref} has row-level security enabled but not forced, so its owner "
                f"{role} is not held by it: ALTER TABLE {table.ref} FORCE ROW LEVEL SECURITY, "
                "or set STRONGROOM_TENANT_ROLE to a role that does not own it"
            )
        roles[str(table.ref)] = role
    return roles


def _set_role(
    conn: psycopg.Connection[Any], role: str, table: TenantTable, user: str, *, configured: bool
) -> None:
    try:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidParameterValue):
        whose = "STRONGROOM_TENANT_ROLE" if configured else f"the owner of {table.ref}"
        raise PreflightError(
            f"role {user} cannot SET ROLE {role} ({whose}), so the tenant export cannot read "
            f"under the RLS policy: GRANT {role} TO {user}, or set STRONGROOM_TENANT_ROLE to a "
            f"role subject to RLS that {user} is a member of"
        ) from None


def _policy_applies(conn: psycopg.Connection[Any], table: TenantTable) -> bool:
    row = conn.execute("SELECT row_security_active(%s::oid::regclass)", (table.oid,)).fetchone()
    return bool(row and row[0])


def _counted(
    conn: psycopg.Connection[Any], model: TenantModel, tenant_id: str, roles: dict[str, str] | None
) -> dict[str, int]:
    """The tenant's counts: independent of any policy (``roles`` None: ``conn`` bypasses RLS),
    else as the export roles see them. ``TenantNotFound`` when the tenant table lacks the id."""
    try:
        if roles is None:
            counts = count_tenant_rows(conn, model, tenant_id)
        else:
            counts = _counted_as(conn, model, tenant_id, roles)
    except psycopg.errors.DataError:
        counts = {}
    if not counts.get(str(model.tenant_table)):
        raise TenantNotFound(
            f"tenant {tenant_id!r} is not in {model.tenant_table} ({model.tenant_key}); "
            "`strongroom tenant list` shows the tenant ids"
        )
    return counts


def _counted_as(
    conn: psycopg.Connection[Any], model: TenantModel, tenant_id: str, roles: dict[str, str]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in model.tables:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(roles[str(table.ref)])))
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            source_of(table), tenant_filter(table, tenant_id)
        )
        row = conn.execute(query).fetchone()
        counts[str(table.ref)] = int(row[0]) if row else 0
    return counts


class TenantExport:
    """The framed export as a pull stream (the store path's ``Source``); memory stays flat."""

    def __init__(self, session: TenantSession) -> None:
        self.session = session
        self.exported: dict[str, int] = {}
        self._frames = self._generate()
        self._buffer = bytearray()
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            try:
                self._buffer += next(self._frames)
            except StopIteration:
                self._done = True
        take = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        data = bytes(self._buffer[:take])
        del self._buffer[:take]
        return data

    def close(self) -> None:
        self._buffer.clear()

    def finish(self) -> dict[str, int]:
        """The rows exported per table, once the whole stream was read."""
        if not self._done:
            raise DumpFailed("the tenant export was not read to its end")
        return dict(self.exported)

    def kill(self) -> None:
        """Stop now; the session's connection is closed by its owner. Never raises."""
        with contextlib.suppress(Exception):
            self.session.conn.cancel_safe(timeout=5)
        with contextlib.suppress(Exception):
            self._frames.close()

    def _generate(self) -> Generator[bytes, None, None]:
        s = self.session
        yield tenant_format.header_bytes(s.header())
        for index, table in enumerate(s.model.tables):
            rows = yield from self._copy(index, table)
            expected = s.counts[str(table.ref)]
            if rows != expected:
                raise DumpFailed(
                    f"{table.ref}: the export under the RLS policy read {rows} rows of tenant "
                    f"{s.tenant_id}, the snapshot holds {expected}: check the table's policy "
                    f"and STRONGROOM_TENANT_SETTING ({s.scope.setting})"
                )
            self.exported[str(table.ref)] = rows
            yield tenant_format.end_of_table(index)
        yield tenant_format.end_of_export()

    def _copy(self, index: int, table: TenantTable) -> Generator[bytes, None, int]:
        s = self.session
        s.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(s.roles[str(table.ref)])))
        query = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT (FORMAT binary)").format(
            sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
            source_of(table),
            tenant_filter(table, s.tenant_id),
        )
        try:
            with s.conn.cursor() as cur:
                with cur.copy(query) as copy:
                    yield from tenant_format.gathered(index, copy)
                return int(cur.rowcount)
        except psycopg.Error as exc:  # e.g. a policy that raises for this tenant: its own line
            why = exc.diag.message_primary or str(exc)
            raise DumpFailed(
                f"{table.ref}: PostgreSQL stopped the export of tenant {s.tenant_id}'s rows: {why}"
            ) from exc
