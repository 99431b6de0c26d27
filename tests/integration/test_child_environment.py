"""pg_dump and pg_restore see the connection and what a process needs, never a secret of ours.

Any process of the same OS user can read a child's environment under /proc, so each test holds
a real child at a point where it is certainly running (pg_dump waiting for a table lock,
pg_restore waiting for its archive to open) and reads ``/proc/<pid>/environ`` there.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from strongroom.core import postgres
from strongroom.core.crypto import generate_key
from strongroom.core.postgres.conninfo import LIBPQ_VARIABLES
from strongroom.errors import RestoreError
from strongroom.sandbox.demo_data import DemoDatabase, url_as

pytestmark = pytest.mark.integration

#: The names a child may hold besides libpq's own (``LC_*`` too).
_PROCESS_NAMES = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR"}
_SECRET_NAMES = (
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_ENCRYPTION_OLD_KEYS",
    "R2_SECRET_ACCESS_KEY",
    "B2_SECRET_ACCESS_KEY",
    "R2_ACCESS_KEY_ID",
    "B2_ACCESS_KEY_ID",
    "DATABASE_URL",
)


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch, demo_db: DemoDatabase) -> dict[str, str]:
    """Every secret strongroom is configured with, set in this process's environment."""
    values = {name: secrets.token_urlsafe(24) for name in _SECRET_NAMES}
    values["BACKUP_ENCRYPTION_KEY"] = generate_key()
    values["BACKUP_ENCRYPTION_OLD_KEYS"] = generate_key()
    values["DATABASE_URL"] = demo_db.admin_url
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    return values


@pytest.fixture
def password_url(demo_db: DemoDatabase) -> str:
    """The superuser's URL with a password in it (trust auth ignores it; the child must get it)."""
    return url_as(demo_db.admin_url, password=secrets.token_urlsafe(12))


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    assert raw, f"process {pid} has already exited: nothing was observed"
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if item)
    return {os.fsdecode(k): os.fsdecode(v) for k, v in pairs}


def _assert_least(env: dict[str, str], planted: dict[str, str], password: str) -> None:
    leaked = [name for name, value in planted.items() if name in env or value in env.values()]
    assert leaked == []
    extra = {k for k in env if k not in _PROCESS_NAMES | LIBPQ_VARIABLES and k[:3] != "LC_"}
    assert extra == set()
    assert env["PGPASSWORD"] == password
    assert env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC"
    assert env["PATH"] == os.environ["PATH"]


@pytest.fixture
def table_locked(demo_db: DemoDatabase) -> Iterator[psycopg.Connection[object]]:
    """A transaction holding ACCESS EXCLUSIVE on a table, so pg_dump waits for it."""
    with psycopg.connect(demo_db.admin_url) as conn:
        conn.execute("LOCK TABLE public.tenants IN ACCESS EXCLUSIVE MODE")
        yield conn


def test_pg_dump_gets_the_connection_and_no_secret(
    planted: dict[str, str],
    password_url: str,
    table_locked: psycopg.Connection[object],
) -> None:
    target = postgres.ConnInfo.parse(password_url)
    dump = postgres.start_dump(target, snapshot=None, timeout=60)
    try:
        env = _environ(dump.proc.pid)
    finally:
        table_locked.rollback()  # let it run to the end: a dump that works, as in a backup
    while dump.read(1 << 16):
        pass
    dump.close()
    assert "dumping contents of table" in dump.finish()
    _assert_least(env, planted, target.params["password"])
    assert env["PGDATABASE"] == target.dbname and env["PGHOST"] == target.params["host"]


def _child(name: str, argument: str, timeout: float = 10.0) -> int:
    """The pid of this process's child running ``name`` with ``argument`` on its command line,
    once it has started (not the short ``name --version`` probe that may run first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.split(") ")[1]
            if (
                comm == name
                and int(fields.split()[1]) == os.getpid()
                and os.fsencode(argument) in argv
            ):
                return int(entry.name)
        time.sleep(0.01)
    raise AssertionError(f"no {name} child appeared within {timeout:g} s")


def test_pg_restore_gets_the_connection_and_no_secret(
    planted: dict[str, str], password_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive.fifo"
    os.mkfifo(archive)  # pg_restore blocks opening it until we do: it is surely running then
    target = postgres.ConnInfo.parse(password_url)
    failure: list[BaseException] = []

    def restore() -> None:
        try:
            postgres.run_restore(archive, target, jobs=1, timeout=60)
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)

    runner = threading.Thread(target=restore, daemon=True)
    runner.start()
    try:
        env = _environ(_child("pg_restore", str(archive)))
    finally:
        with archive.open("wb"):
            pass  # an empty archive: pg_restore ends with an error naming it
        runner.join(timeout=60)
    assert len(failure) == 1 and isinstance(failure[0], RestoreError), failure
    _assert_least(env, planted, target.params["password"])
