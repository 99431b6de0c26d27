"""The restore side: an empty target database, pg_restore, its row counts, undoing a failed run."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from strongroom.core.postgres.binaries import StderrDrain, find_binary
from strongroom.core.postgres.children import spawn, terminate
from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.core.postgres.tables import SYSTEM_SCHEMAS, TableRef, count_rows, user_tables
from strongroom.errors import RestoreError, TargetNotEmpty


def run_restore(
    archive: Path,
    target: ConnInfo,
    *,
    jobs: int,
    bindir: str | None = None,
    timeout: float | None = None,
) -> str:
    """Run ``pg_restore -j N`` from a verified archive file; return its log or raise."""
    argv = [
        find_binary("pg_restore", bindir),
        "--no-owner",
        "--no-acl",
        "--exit-on-error",
        f"--jobs={max(1, jobs)}",
        "-v",
        f"--dbname={target.dbname}",
        str(archive),
    ]
    proc = spawn(argv, env=target.env(), stdout=subprocess.DEVNULL)
    drain = StderrDrain(proc.stderr)
    drain.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate(proc)
        raise RestoreError(f"pg_restore did not finish within {timeout:g} s") from None
    except BaseException:  # interrupted: pg_restore and its workers stop writing now
        terminate(proc)
        raise
    drain.join(timeout=10)
    if code != 0:
        raise RestoreError(f"pg_restore failed (exit {code}): {drain.last_error()}")
    return drain.text()


def prepare_target(target: ConnInfo, *, create: bool = True) -> bool:
    """Make sure the target database exists and is empty; return whether it was created here.

    A non-empty target is refused: restoring over live tables is exactly the kind of surprise a
    backup tool must not spring (``--replace`` restores beside it and swaps, see ``replace``).
    ``create=False`` only checks, so a restore that fails before it has a good copy leaves no
    empty database behind.
    """
    if not _database_exists(target):
        if create:
            _create_database(target)
        return create
    with target.connect(autocommit=True) as conn:
        relations = _relation_count(conn)
    if relations:
        raise TargetNotEmpty(
            f"restore target {target} is not empty ({relations} tables/views/sequences): "
            "restore into a new or empty database, or pass --replace to replace it"
        )
    return False


def _relation_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r','p','v','m','S') AND n.nspname <> ALL(%s)"
        " AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%'",
        (list(SYSTEM_SCHEMAS),),
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class TargetMark:
    """An empty target as it was before pg_restore: what a failed restore must take away again."""

    schemas: frozenset[str]
    extensions: frozenset[str]
    #: ``regprocedure`` / ``regtype`` text of the routines and types outside the system schemas.
    routines: frozenset[str]
    types: frozenset[str]
    #: The server's clock at the mark: pg_restore sessions started later are this run's.
    since: datetime


_ROUTINES_SQL = (
    "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname <> ALL(%s) AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE"
    " d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
)
#: Domains, enums, ranges and standalone composite types (a table's row type goes with it).
_TYPES_SQL = (
    "SELECT t.oid::regtype::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
    " LEFT JOIN pg_class c ON c.oid = t.typrelid WHERE n.nspname <> ALL(%s)"
    " AND (t.typtype IN ('d', 'e', 'r') OR c.relkind = 'c') AND NOT EXISTS (SELECT 1 FROM"
    " pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')"
)


def mark_target(target: ConnInfo) -> TargetMark:
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return TargetMark(
            frozenset(_schemas(conn)),
            frozenset(_names(conn, "SELECT extname FROM pg_extension")),
            frozenset(_names(conn, _ROUTINES_SQL, list(SYSTEM_SCHEMAS))),
            frozenset(_names(conn, _TYPES_SQL, list(SYSTEM_SCHEMAS))),
            row[0],
        )


def undo_restore(target: ConnInfo, mark: TargetMark | None) -> None:
    """After a failed or interrupted pg_restore: leave the target as empty as it was.

    A database this run created (``mark`` is None) is dropped, ending pg_restore's sessions. In
    an existing empty target, this run's pg_restore sessions are ended (their locks would block
    the clean-up), then what it created is dropped: extensions, schemas, and in the schemas that
    existed before their tables, views, sequences, routines and types. Database-wide objects
    pg_restore creates last (event triggers, publications) are not looked for.
    """
    if mark is None:
        with target.with_db("postgres").connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(target.dbname)
                )
            )
        return
    with target.connect(autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
            " current_database() AND pid <> pg_backend_pid() AND usename = current_user"
            " AND application_name = 'pg_restore' AND backend_start >= %s",
            (mark.since,),
        )
        for statement in _undo_statements(conn, mark):
            conn.execute(statement)


def _undo_statements(conn: psycopg.Connection[Any], mark: TargetMark) -> Iterator[sql.Composed]:
    """DROPs for what is new since ``mark``, each looked up after the ones before it ran."""
    for ext in set(_names(conn, "SELECT extname FROM pg_extension")) - mark.extensions:
        yield sql.SQL("DROP EXTENSION IF EXISTS {} CASCADE").format(sql.Identifier(ext))
    for schema in _schemas(conn) - mark.schemas:
        yield sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
    for kind, schema, name in _relations(conn):
        yield sql.SQL("DROP {} IF EXISTS {}.{} CASCADE").format(
            sql.SQL(kind), sql.Identifier(schema), sql.Identifier(name)
        )
    # regprocedure / regtype text is quoted by the server itself: safe to splice as SQL
    for routine in set(_names(conn, _ROUTINES_SQL, list(SYSTEM_SCHEMAS))) - mark.routines:
        yield sql.SQL("DROP ROUTINE IF EXISTS {} CASCADE").format(sql.SQL(routine))
    for type_ in set(_names(conn, _TYPES_SQL, list(SYSTEM_SCHEMAS))) - mark.types:
        yield sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(sql.SQL(type_))


def _names(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[str]:
    return [str(r[0]) for r in conn.execute(query, params or None).fetchall()]


def _schemas(conn: psycopg.Connection[Any]) -> set[str]:
    return set(_names(conn, "SELECT nspname FROM pg_namespace"))


def _relations(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """User tables, views and sequences that no extension owns, with the DROP keyword of each."""
    rows = conn.execute(
        "SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'"
        " WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname, c.relname"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r','p','v','m','S') AND n.nspname <> ALL(%s)"
        " AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%'"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
        " AND d.objid = c.oid AND d.deptype IN ('e', 'a', 'i'))",
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def _database_exists(target: ConnInfo) -> bool:
    with target.with_db("postgres").connect(autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,))
        return row.fetchone() is not None


def _create_database(target: ConnInfo) -> None:
    with target.with_db("postgres").connect(autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
        except psycopg.Error as exc:
            raise RestoreError(
                f"cannot create restore target database {target.dbname!r}: {redact(exc)}; "
                "create it yourself (empty) or use a role with CREATEDB"
            ) from None


def target_row_counts(target: ConnInfo) -> dict[str, int]:
    """Row counts of every user table of the restored database."""
    with target.connect(autocommit=True) as conn:
        with suppress(psycopg.Error):
            conn.execute("SET row_security = off")
        tables = [TableRef(r[0], r[1]) for r in user_tables(conn)]
        try:
            return count_rows(conn, tables)
        except psycopg.Error as exc:
            raise RestoreError(
                f"restored, but cannot count rows as {target.user}: {redact(exc)}"
            ) from None
