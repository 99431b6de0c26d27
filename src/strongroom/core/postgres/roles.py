"""``strongroom setup-role``: a dedicated least-privilege backup role (LOGIN, BYPASSRLS, read-only).

Statements are composed with ``psycopg.sql`` so names are quoted by the driver, and the same
statements are printed by ``--dry-run`` (runnable as they are in psql) and executed otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.core.postgres.tables import SYSTEM_SCHEMAS
from strongroom.errors import PostgresError


def setup_role_statements(
    role: str, dbname: str, schemas: Sequence[str] = ("public",)
) -> list[sql.Composed]:
    """Statements creating (or updating) the backup role; BYPASSRLS needs a superuser to grant.

    The role gets ``pg_read_all_data`` where the server has it (14+), which covers future tables
    too, and explicit grants otherwise.
    """
    ident = sql.Identifier(role)
    create = sql.SQL(
        " BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) THEN "
        "CREATE ROLE {} LOGIN; END IF; END "
    ).format(sql.Literal(role), ident)
    stmts: list[sql.Composed] = [
        sql.SQL("DO ") + sql.SQL(_dollar_quoted(create.as_string(None))),
        sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS").format(
            ident
        ),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), ident),
        sql.SQL("GRANT pg_read_all_data TO {}").format(ident),
    ]
    for schema in schemas:
        s = sql.Identifier(schema)
        stmts += [
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, ident),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, ident),
            sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, ident),
        ]
    return stmts


def setup_role_sql(role: str, dbname: str, schemas: Sequence[str] = ("public",)) -> list[str]:
    """The statements as text, for ``--dry-run`` (no connection: nothing is run or needed)."""
    return [stmt.as_string(None) for stmt in setup_role_statements(role, dbname, schemas)]


def apply_setup_role(target: ConnInfo, role: str, password: str | None) -> list[str]:
    """Create or update the backup role; returns the statements run (without the password)."""
    with target.connect(autocommit=True) as conn:
        schemas = [
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname <> ALL(%s) "
                "AND nspname NOT LIKE 'pg_temp%%' AND nspname NOT LIKE 'pg_toast%%'",
                (list(SYSTEM_SCHEMAS),),
            ).fetchall()
        ]
        stmts = setup_role_statements(role, target.dbname, schemas)
        try:
            for stmt in stmts:
                conn.execute(stmt)
            if password:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
        except psycopg.Error as exc:
            raise PostgresError(
                f"cannot set up role {role}: {redact(exc)} (run setup-role as a superuser)"
            ) from None
        return [stmt.as_string(conn) for stmt in stmts]


def _dollar_quoted(body: str) -> str:
    """``body`` between dollar quotes whose tag it does not contain (a role may hold ``$$``)."""
    tag, n = "$$", 0
    while tag in body:
        n += 1
        tag = f"$q{n}$"
    return f"{tag}{body}{tag}"
