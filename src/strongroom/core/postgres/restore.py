"""The restore side: an existing-and-empty target database, pg_restore, and its row counts."""

from __future__ import annotations

import subprocess
from contextlib import suppress
from pathlib import Path

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


def prepare_target(target: ConnInfo, *, replace: bool, create: bool = True) -> None:
    """Make sure the target database exists and is empty, creating or clearing it as asked.

    A non-empty target is refused unless ``replace``: restoring over live tables is exactly the
    kind of surprise a backup tool must not spring. ``create=False`` only checks, so a restore
    that fails before it has a good copy leaves no empty database behind.
    """
    if not _database_exists(target):
        if create:
            _create_database(target)
        return
    with target.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT n.nspname, count(c.oid) FROM pg_namespace n "
            "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r','p','v','m','S')"
            " WHERE n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'"
            " AND n.nspname NOT LIKE 'pg_toast%%' GROUP BY 1",
            (list(SYSTEM_SCHEMAS),),
        ).fetchall()
        relations = sum(int(r[1]) for r in rows)
        if relations == 0:
            return
        if not replace:
            raise TargetNotEmpty(
                f"restore target {target} is not empty ({relations} tables/views/sequences): "
                "restore into a new or empty database, or pass --replace to drop its schemas first"
            )
        for schema, _ in rows:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.execute("CREATE SCHEMA IF NOT EXISTS public")


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
