"""The throwaway databases of restore drills: their names, finding them, dropping them.

Every drill database is named ``strongroom_drill_<suffix>`` so a leftover (its drill killed) is
found by name on the server alone; what may be dropped is decided above, from the catalog.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.errors import RestoreError

DRILL_PREFIX = "strongroom_drill_"
_SUFFIX = re.compile(r"[^a-z0-9_]")


def drill_database_name(suffix: str) -> str:
    """``strongroom_drill_<suffix>``, lower-case letters, digits and ``_`` only (63 bytes max)."""
    return (DRILL_PREFIX + _SUFFIX.sub("_", suffix.lower()))[:63]


def drill_databases(server: ConnInfo) -> dict[str, int]:
    """The drill databases on ``server``, each with its number of open sessions."""
    pattern = DRILL_PREFIX.replace("_", r"\_") + "%"
    try:
        with server.with_db("postgres").connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a"
                " WHERE a.datname = d.datname) FROM pg_database d"
                " WHERE d.datname LIKE %s ORDER BY d.datname",
                (pattern,),
            ).fetchall()
    except psycopg.Error as exc:
        raise RestoreError(f"cannot list the drill databases on {server}: {redact(exc)}") from None
    return {str(r[0]): int(r[1]) for r in rows}


def can_create_databases(server: ConnInfo) -> bool:
    """Whether the role may ``CREATE DATABASE`` (superuser or ``CREATEDB``)."""
    with server.with_db("postgres").connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    return bool(row and row[0])


def drop_drill_database(server: ConnInfo, name: str) -> None:
    """Drop one drill database, ending its sessions; refuses any other name."""
    if not name.startswith(DRILL_PREFIX):
        raise ValueError(f"{name!r} is not a drill database")
    try:
        with server.with_db("postgres").connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except psycopg.Error as exc:
        raise RestoreError(
            f"cannot drop the drill database {name!r} on {server}: {redact(exc)}"
        ) from None
