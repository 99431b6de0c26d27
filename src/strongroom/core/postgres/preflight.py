"""The RLS preflight: refuse, before any work, a role that could not dump every tenant's rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from strongroom.core.postgres.conninfo import ConnInfo
from strongroom.core.postgres.tables import TableRef, user_tables
from strongroom.errors import PreflightError


@dataclass(frozen=True)
class Preflight:
    """What we learnt about the database before dumping it."""

    role: str
    server_version: str
    tables: tuple[TableRef, ...]
    rls_tables: tuple[TableRef, ...]
    bypasses_rls: bool


def preflight(target: ConnInfo, *, setup_hint_role: str = "strongroom_backup") -> Preflight:
    """Fail before any work if pg_dump could not read every row of every table.

    RLS applies to a role that is not superuser and lacks BYPASSRLS on tables with RLS enabled
    (unless it owns them and RLS is not forced). pg_dump would then stop with "query would be
    affected by row-level security policy", or, worse, a tool that does not set
    ``row_security=off`` would silently dump only some tenants' rows.
    """
    with target.connect(autocommit=True) as conn:
        role_row = conn.execute(
            "SELECT current_user, r.rolsuper, r.rolbypassrls, current_setting('server_version')"
            " FROM pg_roles r WHERE r.rolname = current_user"
        ).fetchone()
        assert role_row is not None
        role, is_super, bypass, version = role_row
        rows = user_tables(conn)
        tables = tuple(TableRef(r[0], r[1]) for r in rows)
        rls = tuple(TableRef(r[0], r[1]) for r in rows if r[2])
        affected = [TableRef(r[0], r[1]) for r in rows if r[2] and (r[3] or not r[4])]
        bypasses = bool(is_super or bypass)
        if affected and not bypasses:
            raise PreflightError(_rls_message(role, affected, setup_hint_role))
        unreadable = [TableRef(r[0], r[1]) for r in rows if not r[5]]
        if unreadable:
            names = ", ".join(str(t) for t in unreadable[:5])
            raise PreflightError(
                f"role {role} cannot read {len(unreadable)} table(s) ({names}): grant it "
                f"SELECT, or use a dedicated role: strongroom setup-role {setup_hint_role}"
            )
    return Preflight(role, str(version), tables, rls, bypasses)


def _rls_message(role: str, affected: Sequence[TableRef], hint_role: str) -> str:
    names = ", ".join(str(t) for t in affected[:5]) + (", ..." if len(affected) > 5 else "")
    return (
        f"role {role} cannot bypass row-level security on {len(affected)} table(s) ({names}), "
        f"so pg_dump would fail or miss tenants' rows. Fix: as a superuser run "
        f"`strongroom setup-role {hint_role}` (a dedicated login role with BYPASSRLS and "
        f"read-only access) and use that role in DATABASE_URL; do not grant BYPASSRLS to "
        f"the application role or to postgres"
    )
