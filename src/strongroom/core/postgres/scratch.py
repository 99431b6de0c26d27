"""A throwaway PostgreSQL server on a restored data directory (the base backup drill's target).

The server runs as the data directory's owner (``pg_ctl`` refuses root; when we are root the
directory is handed to ``os_user`` first), listens on no TCP address at all, only on a Unix
socket in a 0700 directory of that owner, with ``trust`` for local connections: nobody but
that OS user (and root) can reach the restored data while the drill reads it. It must never
archive (its new timeline must not join the source's archive). Stopping escalates: ``pg_ctl
stop -m fast``, then ``-m immediate``, then SIGKILL of the postmaster named in its pid file.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.errors import PostgresError

AUTO_CONF = "postgresql.auto.conf"
PID_FILE = "postmaster.pid"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the socket file's name; the server opens no TCP port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ScratchServer:
    """One restored data directory under ``root`` (``data/``, ``socket/``, ``server.log``)."""

    root: Path
    bindir: str
    port: int
    os_user: str = "postgres"

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def conninfo(self, dbname: str = "postgres", user: str = "postgres") -> ConnInfo:
        return ConnInfo(
            {"host": str(self.socket_dir), "port": str(self.port), "user": user, "dbname": dbname}
        )

    # -- lifecycle ------------------------------------------------------------------------

    def configure(self) -> None:
        """Socket only, no archiving, trust for local connections; owned by the server's user.

        Appended to ``postgresql.auto.conf`` after the recovery settings: the last line wins,
        over whatever the source cluster set with ``ALTER SYSTEM``.
        """
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        with (self.pgdata / AUTO_CONF).open("a", encoding="utf-8") as conf:
            conf.write(
                "# strongroom drill: a throwaway server\n"
                f"port = {self.port}\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "archive_mode = off\n"
                f"hba_file = '{self.root / 'hba.conf'}'\n"
                f"ident_file = '{self.root / 'ident.conf'}'\n"
            )
        (self.root / "hba.conf").write_text("local all all trust\n")
        (self.root / "ident.conf").write_text("")
        (self.pgdata / "standby.signal").unlink(missing_ok=True)
        self._give()

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.os_user, "--", *argv] if os.geteuid() == 0 else argv

    def _give(self) -> None:
        """Hand the whole tree to the server's OS user when we are root (pg_ctl refuses root)."""
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam(self.os_user)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        for base, dirs, files in os.walk(self.root):
            for name in dirs + files:
                os.lchown(os.path.join(base, name), entry.pw_uid, entry.pw_gid)

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = self._as_owner([str(Path(self.bindir) / "pg_ctl"), "-D", str(self.pgdata), *args])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"pg_ctl {args[-1]} timed out")

    def start(self) -> None:
        """Start without waiting (recovery may take long; :meth:`wait_promoted` bounds it)."""
        out = self._pg_ctl("-l", str(self.log_file), "-W", "start", timeout=60)
        if out.returncode != 0:
            raise PostgresError(
                f"the drill server did not start: {out.stderr.strip()[-500:]} {self.log_tail()}"
            )

    def postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid`` while that postmaster lives, else None."""
        try:
            first = (self.pgdata / PID_FILE).read_text().split("\n", 1)[0].strip()
        except OSError:
            return None
        pid = int(first) if first.isdigit() else 0
        # A stale file's pid may belong to another process by now: only ours counts.
        return pid if pid > 0 and _alive(pid) and is_postmaster_of(pid, self.pgdata) else None

    def wait_pid(self, timeout: float) -> int | None:
        """The postmaster's pid once its pid file is written (None if it exited first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.postmaster_pid()
            if pid is not None:
                return pid
            time.sleep(0.05)
        return None

    def wait_promoted(self, timeout: float) -> str:
        """Wait until recovery has ended and the server accepts writes; the superuser's name.

        Fails at once when the postmaster exits (missing or corrupt WAL ends it with FATAL),
        with the log's last error, and after ``timeout`` seconds otherwise.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.postmaster_pid() is None:
                raise PostgresError(f"the drill server exited during recovery: {self.log_tail()}")
            user = self._promoted_as()
            if user is not None:
                return user
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"the drill server was not promoted within {timeout:g} s "
                    f"(BACKUP_DRILL_SERVER_TIMEOUT): {self.log_tail()}"
                )
            time.sleep(0.2)

    def _promoted_as(self) -> str | None:
        """The bootstrap superuser's name once promoted; None while starting or recovering."""
        for user in dict.fromkeys((self.os_user, "postgres")):
            try:
                with self.conninfo(user=user).connect(autocommit=True, connect_timeout=5) as c:
                    row = c.execute(
                        "SELECT pg_is_in_recovery(), (SELECT rolname FROM pg_roles WHERE oid = 10)"
                    ).fetchone()
            except (psycopg.Error, PostgresError) as exc:
                if "does not exist" in str(exc) and "role" in str(exc):
                    continue
                return None
            return None if row is None or row[0] else str(row[1])
        return None

    def stop(self, timeout: float = 30) -> str:
        """Fast, then immediate, then SIGKILL; how it stopped (``""``: it was not running)."""
        if self.postmaster_pid() is None:
            return ""
        for mode in ("fast", "immediate"):
            self._pg_ctl("-m", mode, "-t", str(int(timeout)), "-w", "stop", timeout=timeout + 10)
            if self.postmaster_pid() is None:
                return mode
        pid = self.postmaster_pid()
        if pid is not None:
            kill(pid)
        return "killed"

    def log_tail(self) -> str:
        """The last error line of the server's log (or its last line)."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        for line in reversed(lines):
            if "FATAL" in line or "PANIC" in line or "ERROR" in line:
                return line.strip()
        return lines[-1].strip() if lines else "(empty server log)"


def kill(pid: int) -> None:
    """SIGKILL a postmaster and wait briefly for it to go."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not _alive(pid):
            return
        time.sleep(0.05)


def is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a live postgres whose command line names ``pgdata`` (Linux /proc)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(pgdata).encode() in argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is gone for our purposes
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


# -- the proof: every database connects, every table reads, the largest indexes check ---------


def user_databases(server: ConnInfo) -> list[str]:
    """Every database that accepts connections, ``template1`` left out."""
    with server.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND datname <> 'template1'"
            " ORDER BY datname"
        ).fetchall()
    return [str(r[0]) for r in rows]


def count_tables(db: ConnInfo) -> dict[str, int]:
    """``count(*)`` of every user table and materialized view (``schema.table``): read whole."""
    try:
        with db.connect(autocommit=True) as conn:
            tables = conn.execute(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'"
                " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg\\_toast%%' ORDER BY 1"
            ).fetchall()
            counts: dict[str, int] = {}
            for (name,) in tables:
                row = conn.execute(f"SELECT count(*) FROM ONLY {name}").fetchone()
                counts[str(name)] = int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise PostgresError(f"reading database {db.dbname} failed: {redact(exc)}") from None
    return counts


def check_largest_indexes(db: ConnInfo, limit: int) -> list[str] | None:
    """``bt_index_check`` on the ``limit`` largest B-tree indexes; None without amcheck."""
    try:
        with db.connect(autocommit=True) as conn:
            available = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'"
            ).fetchone()
            if not available or limit <= 0:
                return None
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            indexes = conn.execute(
                "SELECT c.oid, c.oid::regclass::text FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid"
                " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg\\_toast%%'"
                " ORDER BY pg_relation_size(c.oid) DESC, 2 LIMIT %s",
                (limit,),
            ).fetchall()
            for oid, _ in indexes:
                conn.execute("SELECT bt_index_check(%s::regclass)", (oid,))
    except psycopg.Error as exc:
        raise PostgresError(f"amcheck in database {db.dbname} failed: {redact(exc)}") from None
    return [str(name) for _, name in indexes]
