"""A throwaway PostgreSQL cluster: ``initdb`` in a temp dir, a free port, gone on exit.

Tests, the demo and the benchmark need a real server they fully control (superuser, RLS, WAL
settings, restarts) without touching whatever PostgreSQL the machine already runs.

``initdb`` and ``postgres`` refuse to run as root, and CI runs as root: then every server-side
command runs as the unprivileged ``postgres`` OS user (``runuser -u postgres --``), and the
cluster's directories are created under ``/tmp`` (which that user can traverse) with mode 0700,
owned by it. Configuration goes into ``postgresql.conf`` rather than ``pg_ctl -o``, because
``pg_ctl`` hands ``-o`` to a shell; every command here is an argv list.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from strongroom.errors import PostgresError
from strongroom.sandbox.ports import HOST, free_port

#: The OS user that runs the server when we are root (Debian's packages create it).
SERVER_OS_USER = "postgres"
SUPERUSER = "postgres"
_NOT_FOUND = "PostgreSQL server binaries not found: apt-get install postgresql"
#: Where Debian/Ubuntu install each major version (``<root>/<major>/bin``).
VERSIONED_ROOT = Path("/usr/lib/postgresql")

#: Fast and unsafe on purpose (the cluster is thrown away), but WAL-archiving capable.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "shared_buffers": "256MB",
    "max_connections": "100",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "timezone": "UTC",
}


def archive_settings(
    archive_command: str, *, archive_timeout: int = 60, restore_command: str | None = None
) -> dict[str, str]:
    """The settings of a cluster that archives its WAL: ``PgCluster(settings=...)``.

    ``archive_command`` runs as the server's OS user (see :mod:`strongroom.sandbox.launcher`
    for a ``strongroom`` that user can run); ``archive_timeout`` (seconds) bounds how long a
    quiet server keeps a segment open.
    """
    settings = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": archive_command,
        "archive_timeout": str(archive_timeout),
    }
    if restore_command is not None:
        settings["restore_command"] = restore_command
    return settings


def find_server_bindir() -> str:
    """Directory holding ``initdb``/``pg_ctl``/``postgres``: ``pg_config --bindir``, else newest.

    Debian's ``pg_config`` (libpq-dev) may name a bindir with only client tools, so the answer
    is accepted only when ``initdb`` is really there.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    versioned = [p for p in VERSIONED_ROOT.glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versioned, key=lambda p: int(p.parent.name), reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return str(bindir)
    raise PostgresError(_NOT_FOUND)


def give_tree_to_server(path: Path) -> None:
    """Hand ``path`` and everything under it to the server's OS user when we are root.

    What the server reads or writes (its data directory, a config file ``archive_command``
    reads) must be its own; as another user nothing needs to change.
    """
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise PostgresError(
            f"running as root, but there is no {SERVER_OS_USER!r} OS user to run PostgreSQL as"
        ) from None
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _clean_env() -> dict[str, str]:
    """Our environment minus libpq variables, which would redirect the tools elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PgCluster:
    """A private PostgreSQL server on 127.0.0.1 with trust auth; a context manager.

    ``with PgCluster() as pg:`` runs ``initdb`` and starts it; leaving the block stops it and
    deletes its files. ``stop()``/``start()`` restart the same data directory on the same port.
    """

    def __init__(
        self,
        *,
        bindir: str | None = None,
        settings: Mapping[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        """``settings`` go into ``postgresql.conf`` over :data:`DEFAULT_SETTINGS` (for WAL
        archiving: :func:`archive_settings`); :meth:`configure` adds more later."""
        self.bindir = bindir or find_server_bindir()
        self.host = HOST
        self.port = 0
        self.keep = keep
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._as_root = os.geteuid() == 0
        self._base: Path | None = None
        self._running = False

    # -- paths -----------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise PostgresError("the cluster is not initialised: use it as a context manager")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def wal_dir(self) -> Path:
        """``pg_wal``: the segments, and ``archive_status`` with their ``.ready`` markers."""
        return self.data_dir / "pg_wal"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def os_user(self) -> str | None:
        """The OS user the server runs as when it is not us (we are root), else ``None``."""
        return SERVER_OS_USER if self._as_root else None

    @property
    def running(self) -> bool:
        return self._running

    def binary(self, name: str) -> str:
        """Path of a tool of this server's version (``pg_dump``, ``pg_basebackup``, ...)."""
        return str(Path(self.bindir) / name)

    def server_dir(self, name: str) -> Path:
        """A fresh directory inside the cluster's base the server can write (WAL archive...)."""
        path = self.base_dir / name
        path.mkdir(mode=0o700)
        self._give_to_server(path)
        return path

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def adopt(
        cls, base_dir: Path, *, bindir: str | None = None, settings: Mapping[str, str] | None = None
    ) -> PgCluster:
        """A data directory made elsewhere (a restored base backup) in ``base_dir/data``.

        It gets its own free port and socket directory, ``settings`` on top of its own
        ``postgresql.conf``, and is handed to the server's OS user; ``start()`` it, and
        ``close()`` stops it and removes ``base_dir``, as for a cluster made here.
        """
        cluster = cls(bindir=bindir, settings=settings)
        cluster._base = base_dir
        atexit.register(cluster.close)
        cluster.socket_dir.mkdir(mode=0o700, exist_ok=True)
        cluster.log_file.touch(mode=0o600)
        cluster.port = free_port()
        cluster._write_settings({**(settings or {}), **cluster._listen_settings()})
        give_tree_to_server(base_dir)
        return cluster

    def __enter__(self) -> PgCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def init(self) -> None:
        """``initdb`` a new data directory (superuser ``postgres``, trust auth) and configure it."""
        if self._base is not None:
            raise PostgresError("the cluster is already initialised")
        self._base = Path(tempfile.mkdtemp(prefix="strongroom-pg-", dir=self._temp_root()))
        atexit.register(self.close)
        self.data_dir.mkdir(mode=0o700)
        self.socket_dir.mkdir(mode=0o700)
        self.log_file.touch(mode=0o600)
        for path in (self.base_dir, self.data_dir, self.socket_dir, self.log_file):
            self._give_to_server(path)
        self._server_cmd(
            [
                self.binary("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            what="initdb",
            timeout=120,
        )
        self.port = free_port()
        self._write_settings({**self._settings, **self._listen_settings()})

    def start(self, timeout: float = 60) -> None:
        """Start the server (again) and wait until it accepts connections.

        On the first start a port someone took meanwhile is replaced by a new free one.
        """
        if self._running:
            return
        for attempt in range(3):
            try:
                self._pg_ctl(["start", "-l", str(self.log_file), "-t", str(int(timeout))], timeout)
            except PostgresError:
                if attempt < 2 and "Address already in use" in self._log_tail():
                    self.port = free_port()
                    self._write_settings(self._listen_settings())
                    continue
                raise PostgresError(
                    f"PostgreSQL did not start on port {self.port}; server log:\n{self._log_tail()}"
                ) from None
            self._running = True
            return

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server; ``mode="immediate"`` is a crash as far as PostgreSQL can tell."""
        if not self._running:
            return
        self._pg_ctl(["stop", "-m", mode, "-t", str(int(timeout))], timeout)
        self._running = False

    def close(self) -> None:
        """Stop (forcefully if need be) and delete every file; with ``keep``, leave both be.

        ``keep`` is for handing a running server over to someone (``strongroom demo --keep``):
        the server stays up and its files stay in place after this process exits.
        """
        atexit.unregister(self.close)
        if self._base is None or self.keep:
            return
        if self._running:
            try:
                self.stop()
            except PostgresError:
                with contextlib.suppress(PostgresError):
                    self.stop(mode="immediate", timeout=30)
            self._running = False
        shutil.rmtree(self._base, ignore_errors=True)
        self._base = None

    # -- SQL -------------------------------------------------------------------------------

    def url(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """A ``postgresql://`` URL over TCP to this server."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit psycopg connection (the caller closes it)."""
        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                dbname=dbname,
                user=user,
                password=password,
                autocommit=True,
                connect_timeout=10,
            )
        except psycopg.OperationalError as exc:
            raise PostgresError(
                f"cannot connect to the sandbox cluster on {self.port}: {exc}"
            ) from None

    def execute(
        self,
        query: str | sql.SQL | sql.Composed,
        params: Sequence[Any] | None = None,
        *,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; returns its rows (empty when it returns none)."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(query.encode() if isinstance(query, str) else query, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str, owner: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            query = sql.SQL("{} OWNER {}").format(query, sql.Identifier(owner))
        self.execute(query)

    def drop_database(self, name: str) -> None:
        """Drop it even while sessions are connected (they are terminated)."""
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    @property
    def server_version(self) -> int:
        """``server_version_num``, e.g. 150008."""
        return int(self.execute("SHOW server_version_num")[0][0])

    # -- internals -------------------------------------------------------------------------

    def _temp_root(self) -> str | None:
        """Root's TMPDIR may sit where the postgres user cannot go: use /tmp then."""
        return "/tmp" if self._as_root else None

    def _give_to_server(self, path: Path) -> None:
        if not self._as_root:
            return
        try:
            entry = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            raise PostgresError(
                f"running as root, but there is no {SERVER_OS_USER!r} OS user to run PostgreSQL "
                "as: apt-get install postgresql (or useradd --system postgres)"
            ) from None
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def _listen_settings(self) -> dict[str, str]:
        return {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }

    def _write_settings(self, settings: Mapping[str, str]) -> None:
        """Append to ``postgresql.conf``: the last occurrence of a setting wins."""
        lines = [
            f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in settings.items()
        ]
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# strongroom sandbox\n" + "\n".join(lines) + "\n")

    def configure(self, **settings: str) -> None:
        """Add server settings; they apply on the next ``start`` (or reload, where allowed)."""
        self._write_settings(settings)

    def _pg_ctl(self, args: list[str], timeout: float) -> None:
        argv = [self.binary("pg_ctl"), "-D", str(self.data_dir), "-w", *args]
        self._server_cmd(argv, what=f"pg_ctl {args[0]}", timeout=timeout + 10)

    def _server_cmd(self, argv: list[str], *, what: str, timeout: float) -> str:
        if self._as_root:
            argv = ["runuser", "-u", SERVER_OS_USER, "--", *argv]
        try:
            out = subprocess.run(
                argv,
                cwd=self.base_dir,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{what} did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise PostgresError(f"{what} could not run: {exc}") from None
        if out.returncode != 0:
            detail = (out.stderr.strip() or out.stdout.strip())[-2000:]
            raise PostgresError(f"{what} failed (exit {out.returncode}): {detail}")
        return out.stdout

    def _log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll until a connection succeeds (after a crash-restart, for instance)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect():
                    return
            except PostgresError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
