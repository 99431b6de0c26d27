"""PostgreSQL side of a backup: connection settings, the RLS preflight, pg_dump and pg_restore.

Subprocesses follow Barman's ``Command`` discipline: argv lists only, credentials through the
environment (``PGPASSWORD``) never argv, stderr drained concurrently so the child never blocks,
exit codes always checked, and a watchdog that enforces the configured timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from strongroom.errors import (
    ConfigError,
    DumpFailed,
    PostgresError,
    PreflightError,
    RestoreError,
    TargetNotEmpty,
)

_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

# Map libpq connection keywords to the environment variables libpq reads, so that nothing of the
# connection (the password least of all) needs to appear in a child's argv.
_ENV_FOR = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "passfile": "PGPASSFILE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
}


@dataclass(frozen=True)
class ConnInfo:
    """A parsed connection target; ``str()`` never reveals the password."""

    params: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> ConnInfo:
        """Parse a ``postgresql://`` URL or a libpq key=value string."""
        if not url:
            raise ConfigError(
                "DATABASE_URL is not set: point it at the database to back up, "
                "e.g. postgresql://strongroom_backup@db.example:5432/shop"
            )
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"DATABASE_URL is not a valid PostgreSQL URL: {_redact(exc)}"
            ) from None
        return cls(params)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("USER", "")

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    def with_db(self, dbname: str) -> ConnInfo:
        return ConnInfo({**self.params, "dbname": dbname})

    def conninfo(self) -> str:
        return make_conninfo(**self.params)

    def env(self) -> dict[str, str]:
        """Environment for libpq children: the process env plus this target, password included."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for key, value in self.params.items():
            if key in _ENV_FOR:
                env[_ENV_FOR[key]] = value
        return env

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.conninfo(), **kwargs)
        except psycopg.OperationalError as exc:
            raise PostgresError(f"cannot connect to {self}: {_redact(exc)}") from None

    def __str__(self) -> str:
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        return f"database {self.dbname!r} on {host}:{port} as {self.user or 'default user'}"


def _redact(exc: BaseException) -> str:
    """First line of a driver error, with anything password-like removed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)


def find_binary(name: str, bindir: str | None = None) -> str:
    """Locate a PostgreSQL client binary, preferring the newest installed major version.

    pg_dump must be at least as new as the server, so the highest versioned directory wins over
    whatever ``PATH`` offers.
    """
    candidates: list[Path] = []
    if bindir:
        candidates.append(Path(bindir) / name)
    versioned = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versioned)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise ConfigError(
        f"{name} not found: install the PostgreSQL client (apt-get install postgresql-client) "
        "or set BACKUP_PG_BINDIR"
    )


def binary_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


# --------------------------------------------------------------------------------------------
# Preflight


@dataclass(frozen=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.name))


@dataclass(frozen=True)
class Preflight:
    """What we learnt about the database before dumping it."""

    role: str
    server_version: str
    tables: tuple[TableRef, ...]
    rls_tables: tuple[TableRef, ...]
    bypasses_rls: bool


_TABLES_SQL = """
SELECT n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_get_userbyid(c.relowner) = current_user AS owned,
       has_table_privilege(c.oid, 'SELECT') AS readable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


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
        rows = conn.execute(_TABLES_SQL, (list(_SYSTEM_SCHEMAS),)).fetchall()
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


# --------------------------------------------------------------------------------------------
# Snapshot + row counts


@contextmanager
def exported_snapshot(target: ConnInfo) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """Hold a REPEATABLE READ transaction whose snapshot pg_dump imports (``--snapshot``).

    Row counts taken in the same transaction then describe exactly the data in the dump.
    """
    conn = target.connect(autocommit=False)
    try:
        conn.execute("SET row_security = off")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        yield str(row[0]), conn
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def count_rows(conn: psycopg.Connection[Any], tables: Sequence[TableRef]) -> dict[str, int]:
    """Exact row counts per table (``schema.table``), as the connection's snapshot sees them."""
    counts: dict[str, int] = {}
    for table in tables:
        query = sql.SQL("SELECT count(*) FROM ONLY {}").format(table.ident())
        row = conn.execute(query).fetchone()
        counts[str(table)] = int(row[0]) if row else 0
    return counts


# --------------------------------------------------------------------------------------------
# Subprocesses


class _Drain(threading.Thread):
    """Reads a child's stderr to the end so it can never fill the pipe and stall the child."""

    def __init__(self, stream: Any, keep_lines: int = 2000) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=keep_lines)

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip())
        self.stream.close()

    def text(self) -> str:
        return "\n".join(self.lines)

    def last_error(self) -> str:
        for line in reversed(self.lines):
            if "error" in line.lower() or "fatal" in line.lower():
                return line
        return self.lines[-1] if self.lines else "no output"


@dataclass
class DumpProcess:
    """A running ``pg_dump -Fc -Z0`` whose stdout is the archive stream."""

    proc: subprocess.Popen[bytes]
    drain: _Drain
    timeout: float
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False
    _timer: threading.Timer | None = None

    def __post_init__(self) -> None:
        self._timer = threading.Timer(self.timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def read(self, size: int = -1, /) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(size) if size >= 0 else self.proc.stdout.read()

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def finish(self) -> str:
        """Wait for exit; return pg_dump's stderr log, or raise ``DumpFailed`` naming why."""
        code = self.proc.wait()
        if self._timer:
            self._timer.cancel()
        self.drain.join(timeout=10)
        if self.timed_out:
            raise DumpFailed(
                f"pg_dump did not finish within {self.timeout:g} s and was stopped: "
                "raise BACKUP_PG_DUMP_TIMEOUT for a database this size"
            )
        if code != 0:
            raise DumpFailed(f"pg_dump failed (exit {code}): {self.drain.last_error()}")
        return self.drain.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self._timer:
            self._timer.cancel()


def start_dump(
    target: ConnInfo,
    *,
    snapshot: str | None,
    timeout: float,
    bindir: str | None = None,
    extra_args: Sequence[str] = (),
) -> DumpProcess:
    """Start pg_dump with the seed's flags, minus its compression (we compress once, later)."""
    argv = [find_binary("pg_dump", bindir), "-Fc", "-Z0", "--no-owner", "--no-acl", "-v"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    argv.extend(extra_args)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=target.env(),
        bufsize=0,
    )
    drain = _Drain(proc.stderr)
    drain.start()
    return DumpProcess(proc, drain, timeout)


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
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=target.env(),
    )
    drain = _Drain(proc.stderr)
    drain.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RestoreError(f"pg_restore did not finish within {timeout:g} s") from None
    drain.join(timeout=10)
    if code != 0:
        raise RestoreError(f"pg_restore failed (exit {code}): {drain.last_error()}")
    return drain.text()


# --------------------------------------------------------------------------------------------
# Restore targets


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
            (list(_SYSTEM_SCHEMAS),),
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
                f"cannot create restore target database {target.dbname!r}: {_redact(exc)}; "
                "create it yourself (empty) or use a role with CREATEDB"
            ) from None


def target_row_counts(target: ConnInfo) -> dict[str, int]:
    """Row counts of every user table of the restored database."""
    with target.connect(autocommit=True) as conn:
        with suppress(psycopg.Error):
            conn.execute("SET row_security = off")
        rows = conn.execute(_TABLES_SQL, (list(_SYSTEM_SCHEMAS),)).fetchall()
        tables = [TableRef(r[0], r[1]) for r in rows]
        try:
            return count_rows(conn, tables)
        except psycopg.Error as exc:
            raise RestoreError(
                f"restored, but cannot count rows as {target.user}: {_redact(exc)}"
            ) from None


# --------------------------------------------------------------------------------------------
# setup-role


def setup_role_sql(role: str, dbname: str, schemas: Sequence[str] = ("public",)) -> list[str]:
    """SQL for a dedicated least-privilege backup role: LOGIN, BYPASSRLS, read-only access.

    BYPASSRLS requires a superuser to grant. The role gets ``pg_read_all_data`` where the server
    has it (14+), which covers future tables too, and explicit grants otherwise.
    """
    ident = _quote_ident(role)
    stmts = [
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_quote_literal(role)}) THEN "
        f"CREATE ROLE {ident} LOGIN; END IF; END $$",
        f"ALTER ROLE {ident} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS",
        f"GRANT CONNECT ON DATABASE {_quote_ident(dbname)} TO {ident}",
        f"GRANT pg_read_all_data TO {ident}",
    ]
    for schema in schemas:
        s = _quote_ident(schema)
        stmts += [
            f"GRANT USAGE ON SCHEMA {s} TO {ident}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {ident}",
            f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {ident}",
        ]
    return stmts


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def apply_setup_role(target: ConnInfo, role: str, password: str | None) -> list[str]:
    """Create or update the backup role; returns the statements run (without the password)."""
    with target.connect(autocommit=True) as conn:
        schemas = [
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname <> ALL(%s) "
                "AND nspname NOT LIKE 'pg_temp%%' AND nspname NOT LIKE 'pg_toast%%'",
                (list(_SYSTEM_SCHEMAS),),
            ).fetchall()
        ]
        stmts = setup_role_sql(role, target.dbname, schemas)
        try:
            for stmt in stmts:
                conn.execute(stmt.encode())
            if password:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
        except psycopg.Error as exc:
            raise PostgresError(
                f"cannot set up role {role}: {_redact(exc)} (run setup-role as a superuser)"
            ) from None
    return stmts
