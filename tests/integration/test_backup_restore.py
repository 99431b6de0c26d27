"""Streaming full backup and verified restore, end to end, through the ``strongroom`` command.

A throwaway PostgreSQL cluster holds the RLS-forced demo shop (one database shared by the tests
that only read it); every test gets its own local backup directory, SQLite catalog and key. The
command runs as a subprocess configured only through the environment, as an operator runs it;
a few checks call the services in-process where the question is about this process (its logs).
Every failure case asserts the message, a non-zero exit, nothing that looks complete in storage,
no partial file left behind, and the catalog's status.
"""

from __future__ import annotations

import json
import os
import pty
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from clisupport import CLI, Cli, clean_environ, command, require_cli
from psycopg import sql

from strongroom.core.crypto import generate_key, key_id_of, parse_key
from strongroom.core.manifest import MANIFEST_SUFFIX, read_unverified
from strongroom.errors import PostgresError
from strongroom.sandbox.demo_data import (
    DemoDatabase,
    create_demo_database,
    table_digests,
    url_as,
)
from strongroom.sandbox.pgcluster import PgCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
EXAMPLE = ROOT / "example"
#: As ``demo_db``: joins, NULLs, photos and several pages per table, still well under a second.
SHOP_SIZES = {
    "tenants": 3,
    "customers_per_tenant": 40,
    "items_per_tenant": 60,
    "sales_per_tenant": 100,
}
SHOP_TABLES = (
    "public.customers",
    "public.inventory_items",
    "public.sale_items",
    "public.sales",
    "public.tenants",
)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(pg_cluster: PgCluster, app_password: str) -> Iterator[DemoDatabase]:
    """The source database for every test here; no test changes its data."""
    name = f"shop_{uuid.uuid4().hex[:10]}"
    try:
        yield create_demo_database(pg_cluster.url(), name, app_password=app_password, **SHOP_SIZES)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def shop_digests(shop: DemoDatabase) -> dict[str, tuple[int, str]]:
    digests = table_digests(shop.admin_url)
    assert sorted(digests) == list(SHOP_TABLES)
    assert all(rows > 0 for rows, _ in digests.values())
    return digests


@pytest.fixture
def env(tmp_path: Path, shop: DemoDatabase) -> dict[str, str]:
    """The command's whole configuration: the shop as superuser, local disk only, a new key."""
    require_cli()
    (tmp_path / "local").mkdir()
    (tmp_path / "home").mkdir()
    return {
        **clean_environ(),
        "HOME": str(tmp_path / "home"),
        "DATABASE_URL": shop.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite3'}",
        "BACKUP_RESTORE_SCRATCH_DIR": str(_scratch(tmp_path)),
    }


def _scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    return command(env, timeout=180)


@pytest.fixture
def new_db(pg_cluster: PgCluster) -> Iterator[Callable[[], str]]:
    """``new_db()``: the superuser URL of a database name nobody uses (dropped afterwards)."""
    names: list[str] = []

    def make() -> str:
        names.append(f"restored_{uuid.uuid4().hex[:10]}")
        return pg_cluster.url(names[-1])

    yield make
    for name in names:
        pg_cluster.drop_database(name)


# -- helpers -----------------------------------------------------------------------------------


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


def _error(done: subprocess.CompletedProcess[str], expected_code: int | None = None) -> str:
    """The command failed the operator's way: non-zero, no traceback, an error line last."""
    assert done.returncode != 0, done.stdout
    if expected_code is not None:
        assert done.returncode == expected_code, done.stderr
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith("strongroom: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert all(line.startswith("strongroom: ") for line in lines), done.stderr
    return lines[-1]


def _backup(cli: Cli, **overrides: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_ok(cli("backup", "--json", **overrides)))
    assert doc["status"] == "COMPLETED", doc["error"]
    return doc


def _files(env: dict[str, str]) -> list[str]:
    """Every file under the local location, partials and probes included."""
    root = Path(env["BACKUP_LOCAL_PATH"])
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _object_path(env: dict[str, str], doc: dict[str, Any]) -> Path:
    (copy,) = doc["copies"]
    return Path(env["BACKUP_LOCAL_PATH"]) / copy["key"]


def _catalog(env: dict[str, str]) -> list[tuple[str, str, str]]:
    """(id, status, error) of every backup in the command's SQLite catalog."""
    path = env["STRONGROOM_CATALOG_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, status, error FROM strongroom_backup ORDER BY id")
        return [(str(i), str(s), str(e)) for i, s, e in rows.fetchall()]


def _metadata(env: dict[str, str], backup_id: str) -> dict[str, Any]:
    """The catalog's metadata of one backup (manifest, pg_dump log, ...)."""
    path = env["STRONGROOM_CATALOG_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT metadata FROM strongroom_backup WHERE id = ?", (backup_id,))
        (metadata,) = row.fetchone()
    document: dict[str, Any] = json.loads(metadata or "{}")
    return document


def _copy_status(env: dict[str, str], backup_id: str) -> dict[str, str]:
    path = env["STRONGROOM_CATALOG_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT location, status FROM strongroom_backupcopy WHERE backup_id = ?", (backup_id,)
        )
        return {str(loc): str(status) for loc, status in rows.fetchall()}


def _user_tables(pg_cluster: PgCluster, url: str) -> int | None:
    """Tables in the database of ``url``; ``None`` when it does not exist."""
    name = url.rsplit("/", 1)[-1]
    if not pg_cluster.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
        return None
    rows = pg_cluster.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
        "'information_schema')",
        dbname=name,
    )
    return int(rows[0][0])


def _scram_only(pg_cluster: PgCluster, role: str) -> None:
    """Make the server demand ``role``'s password (the cluster trusts everyone else)."""
    hba = pg_cluster.data_dir / "pg_hba.conf"
    line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    hba.write_text(line + hba.read_text())
    pg_cluster.execute("SELECT pg_reload_conf()")


def _role(pg_cluster: PgCluster, name: str) -> tuple[bool, bool] | None:
    """(superuser, bypassrls) of role ``name``, or ``None`` when it does not exist."""
    rows = pg_cluster.execute(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (name,)
    )
    return (bool(rows[0][0]), bool(rows[0][1])) if rows else None


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "level", "extension"),
    [("zstd", "", ".dump.zst.enc"), ("gzip", "9", ".dump.gz.enc")],
    ids=["zstd-default", "gzip-9"],
)
def test_backup_then_restore_into_a_new_database_gives_equal_tables(
    cli: Cli,
    env: dict[str, str],
    new_db: Callable[[], str],
    shop_digests: dict[str, tuple[int, str]],
    codec: str,
    level: str,
    extension: str,
) -> None:
    settings = {"BACKUP_COMPRESSION": codec, "BACKUP_COMPRESSION_LEVEL": level}
    doc = _backup(cli, **settings)
    assert doc["filename"] == doc["id"] + extension
    assert doc["metadata"]["codec"] == codec
    assert doc["metadata"]["codec_level"] == (int(level) if level else 3)
    levels = doc["metadata"]["codec_levels"]
    manifest_path = _object_path(env, doc).with_name(doc["id"] + MANIFEST_SUFFIX)
    assert read_unverified(manifest_path.read_bytes()).codec_levels == levels
    if codec == "zstd":  # adaptive by default: every byte counted under a level in 1-3
        assert levels and {int(n) for n in levels} <= {1, 2, 3}
        assert sum(v["raw_bytes"] for v in levels.values()) == doc["raw_size_bytes"]
        assert sum(v["compressed_bytes"] for v in levels.values()) == doc["compressed_size_bytes"]
    else:
        assert levels == {}  # a fixed level records none, as before
    assert doc["metadata"]["table_rows"] == {t: n for t, (n, _) in shop_digests.items()}
    assert doc["size_bytes"] < doc["raw_size_bytes"]  # compressed once, in the stream
    assert _files(env) == sorted(
        f"{doc['copies'][0]['key'].rsplit('.', 3)[0]}{suffix}"
        for suffix in (extension, MANIFEST_SUFFIX)
    )

    target = new_db()
    restored = json.loads(_ok(cli("restore", doc["id"], "--target", target, "--json")))
    assert restored["status"] == "RESTORED"
    assert restored["tables"] == {
        t: {"expected": n, "restored": n} for t, (n, _) in shop_digests.items()
    }
    assert table_digests(target) == shop_digests
    assert list(Path(env["BACKUP_RESTORE_SCRATCH_DIR"]).iterdir()) == []


def test_json_documents_verify_and_restore_with_two_jobs_and_latest(
    cli: Cli,
    env: dict[str, str],
    new_db: Callable[[], str],
    shop_digests: dict[str, tuple[int, str]],
) -> None:
    first = _backup(cli)
    doc = _backup(cli)
    assert first["id"] != doc["id"]
    assert doc["copies"][0]["location"] == "local" and doc["copies"][0]["status"] == "STORED"

    listed = json.loads(_ok(cli("list", "--json")))
    assert [(b["id"], b["status"]) for b in listed] == [
        (doc["id"], "COMPLETED"),
        (first["id"], "COMPLETED"),
    ]
    shown = json.loads(_ok(cli("show", doc["id"], "--json")))
    assert (shown["id"], shown["status"], shown["checksum"]) == (
        doc["id"],
        "COMPLETED",
        doc["checksum"],
    )

    verified = json.loads(_ok(cli("verify", doc["id"], "--json")))
    assert (verified["id"], verified["status"]) == (doc["id"], "VERIFIED")
    assert [(c["location"], c["ok"], c["status"]) for c in verified["checks"]] == [
        ("local", True, "VERIFIED")
    ]
    assert verified["verified_at"]
    assert (doc["id"], "VERIFIED", "") in _catalog(env)
    assert _copy_status(env, doc["id"]) == {"local": "VERIFIED"}
    human = _ok(cli("verify", "--latest"))
    assert f"backup {doc['id']}: VERIFIED" in human
    assert "ok   local" in human

    target = new_db()
    watch = _ArgvWatch([env["BACKUP_ENCRYPTION_KEY"]], marker=env["HOME"])
    watch.start()
    try:
        out = _ok(cli("restore", "--latest", "--target", target, "-j", "2"))
    finally:
        watch.stop()
    restores = [a for a in watch.program("pg_restore") if a[1:] != ("--version",)]
    assert restores, "no pg_restore process was seen"
    for argv in restores:  # two jobs, from the verified archive, the connection in the env
        assert "--jobs=2" in argv and f"--dbname={target.rsplit('/', 1)[-1]}" in argv, argv
        assert argv[-1].endswith("/archive.dump"), argv
    assert f"restored backup {doc['id']} from local into database " in out
    stages = r"\(fetch [\d.]+s, pg_restore [\d.]+s, row counts [\d.]+s\)"
    assert re.search(r"\(-j 2\) in [\d.]+s " + stages, out), out
    for table, (rows, _) in shop_digests.items():  # one line per table, never wrapped
        assert f"ok   {table:<40} {rows:>10} rows in backup, {rows:>10} restored\n" in out
    assert table_digests(target) == shop_digests

    again = json.loads(
        _ok(cli("restore", "--latest", "--target", target, "--replace", "-j", "2", "--json"))
    )
    assert (again["id"], again["status"], again["jobs"], again["source"]) == (
        doc["id"],
        "RESTORED",
        2,
        "local",
    )
    assert list(again["stages"]) == ["fetch", "pg_restore", "row counts", "swap"]
    assert sum(again["stages"].values()) <= again["seconds"]
    assert table_digests(target) == shop_digests


# -- the RLS preflight and the backup role ----------------------------------------------------


def test_the_app_role_is_refused_before_any_work_and_setup_role_makes_one_that_backs_up(
    cli: Cli,
    env: dict[str, str],
    shop: DemoDatabase,
    pg_cluster: PgCluster,
    shop_digests: dict[str, tuple[int, str]],
) -> None:
    refused = cli("backup", "--json", DATABASE_URL=shop.app_url)
    line = _error(refused, 2)
    assert "role shop_app cannot bypass row-level security on 5 table(s)" in line
    assert "BYPASSRLS" in line
    assert "`strongroom setup-role strongroom_backup`" in line
    assert "do not grant BYPASSRLS to the application role or to postgres" in line
    assert refused.stdout == ""
    assert _files(env) == []  # not even an empty or partial object
    ((backup_id, status, error),) = _catalog(env)
    assert status == "FAILED" and "row-level security" in error

    role = f"strongroom_backup_{uuid.uuid4().hex[:6]}"
    dry = _ok(cli("setup-role", role, "--dry-run"))
    statements = [s for s in dry.splitlines() if s]
    assert f'ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS;' in (
        statements
    )
    assert f'GRANT pg_read_all_data TO "{role}";' in statements
    assert all(f'"{role}"' in s for s in statements), dry  # every statement is for the role
    assert "postgres" not in dry.replace(f'"{shop.name}"', "")  # nothing for postgres
    assert _role(pg_cluster, role) is None  # a dry run changes nothing

    password = secrets.token_urlsafe(18)
    made = cli(
        "setup-role",
        role,
        "--password-env",
        "BACKUP_ROLE_PASSWORD",
        DATABASE_URL=shop.app_url,  # the application's setting; setup-role needs a superuser
        STRONGROOM_ADMIN_DATABASE_URL=shop.admin_url,
        BACKUP_ROLE_PASSWORD=password,
    )
    assert f"role {role} ready on {shop.name}: LOGIN, BYPASSRLS, read-only" in _ok(made)
    assert password not in made.stdout + made.stderr
    assert _role(pg_cluster, role) == (False, True)
    assert _role(pg_cluster, "shop_app") == (False, False)  # the app role is left alone

    _scram_only(pg_cluster, role)  # the password must really reach pg_dump
    doc = _backup(cli, DATABASE_URL=url_as(shop.admin_url, user=role, password=password))
    assert _metadata(env, doc["id"])["manifest"]["extra"]["role"] == role
    assert doc["metadata"]["table_rows"] == {t: n for t, (n, _) in shop_digests.items()}
    assert _catalog(env)[-1][:2] == (doc["id"], "COMPLETED")
    assert backup_id != doc["id"]

    denied = cli("setup-role", "another_role", DATABASE_URL=shop.app_url)
    assert "run setup-role as a superuser" in _error(denied)
    assert _role(pg_cluster, "another_role") is None


# -- bad input: corruption, truncation, keys --------------------------------------------------


def test_a_flipped_byte_is_refused_by_restore_and_named_by_verify(
    cli: Cli, env: dict[str, str], new_db: Callable[[], str], pg_cluster: PgCluster
) -> None:
    doc = _backup(cli)
    path = _object_path(env, doc)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    target = new_db()
    line = _error(cli("restore", doc["id"], "--target", target))
    assert "no intact copy to restore from (local: stored object failed authentication" in line
    assert "truncated, tampered with or corrupt" in line
    assert _user_tables(pg_cluster, target) is None  # pg_restore never ran; nothing created
    assert list(Path(env["BACKUP_RESTORE_SCRATCH_DIR"]).iterdir()) == []
    assert _catalog(env) == [(doc["id"], "COMPLETED", "")]  # a refusal is not a verdict

    verify = cli("verify", doc["id"], "--json")
    line = _error(verify, 4)
    assert f"backup {doc['id']} failed verification: local: corrupt: stored object failed" in line
    report = json.loads(verify.stdout)
    assert (report["status"], report["checks"][0]["status"]) == ("FAILED", "CORRUPT")
    assert _catalog(env)[0][1] == "FAILED"
    assert _copy_status(env, doc["id"]) == {"local": "CORRUPT"}
    assert _error(cli("restore", "--latest", "--target", new_db()))  # nothing else to restore


def test_a_truncated_object_is_refused_by_restore_and_named_by_verify(
    cli: Cli, env: dict[str, str], new_db: Callable[[], str], pg_cluster: PgCluster
) -> None:
    doc = _backup(cli)
    path = _object_path(env, doc)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size * 2 // 3)

    target = new_db()
    line = _error(cli("restore", doc["id"], "--target", target, "-j", "2"))
    assert "no intact copy to restore from (local: " in line
    assert "truncated" in line
    assert _user_tables(pg_cluster, target) is None
    assert list(Path(env["BACKUP_RESTORE_SCRATCH_DIR"]).iterdir()) == []

    line = _error(cli("verify", doc["id"]), 4)
    assert "local: corrupt:" in line and "truncated" in line
    assert _catalog(env)[0][1] == "FAILED"
    assert _copy_status(env, doc["id"]) == {"local": "CORRUPT"}


def test_the_wrong_key_is_named_and_an_old_key_restores_after_rotation(
    cli: Cli,
    env: dict[str, str],
    new_db: Callable[[], str],
    pg_cluster: PgCluster,
    shop_digests: dict[str, tuple[int, str]],
) -> None:
    doc = _backup(cli)
    needed = key_id_of(parse_key(env["BACKUP_ENCRYPTION_KEY"]))
    assert doc["metadata"]["key_id"] == needed
    other = generate_key()

    target = new_db()
    restore = cli("restore", doc["id"], "--target", target, BACKUP_ENCRYPTION_KEY=other)
    line = _error(restore, 3)
    assert f"signed with key id {needed}, which is not configured" in line
    assert f"(configured: {key_id_of(parse_key(other))})" in line
    assert "BACKUP_ENCRYPTION_OLD_KEYS" in line
    assert env["BACKUP_ENCRYPTION_KEY"] not in restore.stderr and other not in restore.stderr
    assert _user_tables(pg_cluster, target) is None

    line = _error(cli("verify", doc["id"], BACKUP_ENCRYPTION_KEY=other), 4)
    assert f"local: unreadable: manifest was signed with key id {needed}" in line
    # a key problem says nothing about the stored bytes: statuses stay as they were
    ((_, status, error),) = _catalog(env)
    assert status == "COMPLETED" and f"key id {needed}" in error
    assert _copy_status(env, doc["id"]) == {"local": "STORED"}

    rotated = {
        "BACKUP_ENCRYPTION_KEY": other,
        "BACKUP_ENCRYPTION_OLD_KEYS": env["BACKUP_ENCRYPTION_KEY"],
    }
    assert json.loads(_ok(cli("verify", doc["id"], "--json", **rotated)))["status"] == "VERIFIED"
    _ok(cli("restore", doc["id"], "--target", target, **rotated))
    assert table_digests(target) == shop_digests


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not a key!", "BACKUP_ENCRYPTION_KEY is not url-safe base64"),
        ("c2l4dGVlbi1ieXRlLWtleQ==", "BACKUP_ENCRYPTION_KEY decodes to 16 bytes"),
    ],
    ids=["not-base64", "16-bytes"],
)
def test_a_malformed_key_is_one_line_before_any_work(
    cli: Cli,
    env: dict[str, str],
    new_db: Callable[[], str],
    pg_cluster: PgCluster,
    key: str,
    message: str,
) -> None:
    target = new_db()
    expected = (
        f"strongroom: error: {message}; a key must be 32 random bytes, url-safe base64, "
        "e.g. from `strongroom keygen`\n"
    )
    for args in (("backup", "--json"), ("restore", "--latest", "--target", target)):
        done = cli(*args, BACKUP_ENCRYPTION_KEY=key)
        assert (done.returncode, done.stderr, done.stdout) == (2, expected, "")
    assert _files(env) == []
    assert _catalog(env) == []  # not even a FAILED record: nothing was started
    assert _user_tables(pg_cluster, target) is None  # no target database created either


# -- bad input: storage and database ----------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [("file/backups", "lies under "), ("missing", "does not exist")],
    ids=["parent-is-a-file", "missing-directory"],
)
def test_an_unusable_local_path_fails_before_pg_dump_and_is_named(
    cli: Cli, env: dict[str, str], tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "file").write_text("a regular file, not a directory")
    path = tmp_path / where
    done = cli("backup", "--json", BACKUP_LOCAL_PATH=str(path))
    line = _error(done, 1)
    assert f"local location 'local': {path} {message}" in line
    assert "set BACKUP_LOCAL_PATH" in line
    assert not path.exists()  # a missing backup mount is never quietly created
    assert (tmp_path / "file").read_text() == "a regular file, not a directory"
    ((_, status, error),) = _catalog(env)
    assert status == "FAILED" and message in error


def test_a_missing_database_fails_with_postgres_own_reason(
    cli: Cli, env: dict[str, str], shop: DemoDatabase
) -> None:
    missing = f"gone_{uuid.uuid4().hex[:8]}"
    line = _error(cli("backup", DATABASE_URL=url_as(shop.admin_url, dbname=missing)), 1)
    assert f"cannot connect to database '{missing}'" in line
    assert f'database "{missing}" does not exist' in line
    assert _files(env) == []
    ((_, status, error),) = _catalog(env)
    assert status == "FAILED" and "does not exist" in error


def test_pg_dump_stopped_midway_leaves_no_object_and_no_partial(
    cli: Cli, env: dict[str, str]
) -> None:
    line = _error(cli("backup", "--json", BACKUP_PG_DUMP_TIMEOUT="0.001"), 1)
    assert "pg_dump did not finish within" in line
    assert "raise BACKUP_PG_DUMP_TIMEOUT" in line
    assert _files(env) == []  # the partial object was removed, no manifest was written
    ((backup_id, status, error),) = _catalog(env)
    assert status == "FAILED" and "pg_dump did not finish" in error
    assert _backup(cli)["id"] != backup_id  # and the next run is unaffected


def test_a_non_empty_target_is_refused_unless_replace(
    cli: Cli,
    env: dict[str, str],
    new_db: Callable[[], str],
    pg_cluster: PgCluster,
    shop_digests: dict[str, tuple[int, str]],
) -> None:
    doc = _backup(cli)
    target = new_db()
    _ok(cli("restore", doc["id"], "--target", target))
    name = target.rsplit("/", 1)[-1]
    pg_cluster.execute("SET row_security = off; DELETE FROM sale_items", dbname=name)
    pg_cluster.execute("CREATE TABLE public.leftover (x int)", dbname=name)
    changed = table_digests(target)

    line = _error(cli("restore", doc["id"], "--target", target), 2)
    assert f"restore target database '{name}'" in line
    assert "is not empty (" in line
    assert "restore into a new or empty database, or pass --replace" in line
    assert table_digests(target) == changed  # untouched

    out = _ok(cli("restore", doc["id"], "--target", target, "--replace"))
    assert f"restored backup {doc['id']}" in out
    assert table_digests(target) == shop_digests  # the stray table is gone too
    assert list(Path(env["BACKUP_RESTORE_SCRATCH_DIR"]).iterdir()) == []


# -- secrets -----------------------------------------------------------------------------------


class _ArgvWatch(threading.Thread):
    """Reads every process's argv from /proc until stopped; remembers leaks, never the secret.

    The argv of our own ``strongroom``, ``pg_dump`` and ``pg_restore`` processes (those whose
    environment holds ``marker``, the test's own ``HOME``, which children keep; other work may run
    on the machine) is kept in ``seen``.
    """

    WATCHED = frozenset({"strongroom", "pg_dump", "pg_restore"})

    def __init__(self, secrets_: list[str], marker: str) -> None:
        super().__init__(daemon=True)
        self.secrets = [s.encode() for s in secrets_]
        self.marker = marker.encode()
        self.leaks: list[str] = []
        self.seen: set[tuple[str, ...]] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    self._look(Path(entry.path))
            self._halt.wait(0.002)  # leave the CPU to the processes being watched

    def _look(self, proc: Path) -> None:
        try:
            raw = (proc / "cmdline").read_bytes()
            argv = tuple(os.fsdecode(a) for a in raw.split(b"\0") if a)
            if any(s in raw for s in self.secrets):
                self.leaks.append(f"pid {proc.name}: {argv[0] if argv else '?'}")
            names = {Path(a).name for a in argv[:2]}
            if names & self.WATCHED and self.marker in (proc / "environ").read_bytes():
                self.seen.add(argv)
        except OSError:
            return  # the process ended meanwhile

    def program(self, name: str) -> list[tuple[str, ...]]:
        """Every argv seen whose program (or script) is ``name``."""
        return [a for a in self.seen if name in {Path(x).name for x in a[:2]}]

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def test_no_password_or_key_in_any_argv_output_log_or_catalog(
    cli: Cli,
    env: dict[str, str],
    shop: DemoDatabase,
    pg_cluster: PgCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    role = f"strongroom_backup_{uuid.uuid4().hex[:6]}"
    password = secrets.token_urlsafe(18)
    key = env["BACKUP_ENCRYPTION_KEY"]
    role_url = url_as(shop.admin_url, user=role, password=password)
    watch = _ArgvWatch([password, key], marker=env["HOME"])
    watch.start()
    try:
        runs = [
            cli("-v", "setup-role", role, "--password-env", "SR_PASSWORD", SR_PASSWORD=password),
        ]
        _scram_only(pg_cluster, role)
        runs.append(cli("-v", "backup", "--json", DATABASE_URL=role_url))
        runs.append(cli("-v", "backup", DATABASE_URL=role_url, BACKUP_COMPRESSION="gzip"))
        runs.append(cli("-v", "verify", "--latest", DATABASE_URL=role_url))
        wrong = url_as(shop.admin_url, user=role, password=password + "x")
        runs.append(cli("-v", "backup", DATABASE_URL=wrong))  # the server refuses it
    finally:
        watch.stop()
    for done in runs[:-1]:
        _ok(done)
    assert "password authentication failed" in _error(runs[-1])
    assert watch.leaks == []
    assert {argv[2:] for argv in watch.program("strongroom")} == {
        ("-v", "setup-role", role, "--password-env", "SR_PASSWORD"),
        ("-v", "backup", "--json"),
        ("-v", "backup"),
        ("-v", "verify", "--latest"),
    }
    dumps = [argv for argv in watch.program("pg_dump") if argv[1:] != ("--version",)]
    assert dumps, "no pg_dump process was seen: the scan proved nothing"
    for argv in dumps:  # the seed's flags; the connection comes from the environment only
        assert argv[1:6] == ("-Fc", "-Z0", "--no-owner", "--no-acl", "-v"), argv
        assert len(argv) == 7 and argv[6].startswith("--snapshot="), argv
    for done in runs:
        assert password not in done.stdout + done.stderr
        assert key not in done.stdout + done.stderr

    # in this process: the services' own logs, at every level
    from strongroom.catalog import bootstrap
    from strongroom.config import load_config
    from strongroom.services.backup import run_full_backup

    settings = {**env, "DATABASE_URL": role_url}
    bootstrap.ensure_django(settings["STRONGROOM_CATALOG_URL"])
    with caplog.at_level("DEBUG"):
        report = run_full_backup(load_config(settings))
        with pytest.raises(PostgresError, match="password authentication failed"):
            run_full_backup(load_config({**settings, "DATABASE_URL": wrong}))
    assert report.status == "COMPLETED", report.error
    assert "FAILED: cannot connect to database" in caplog.text  # the failure is logged...
    assert password not in caplog.text and key not in caplog.text  # ...and nothing secret

    # at rest: the catalog (its pg_dump logs and errors included) and every stored file
    catalog = Path(env["STRONGROOM_CATALOG_URL"].removeprefix("sqlite:///"))
    stored = [p for p in catalog.parent.glob(catalog.name + "*")]
    stored += [p for p in Path(env["BACKUP_LOCAL_PATH"]).rglob("*") if p.is_file()]
    for path in stored:
        data = path.read_bytes()
        assert password.encode() not in data, path
        assert key.encode() not in data, path
    statuses = sorted(s for _, s, _ in _catalog(env))
    assert statuses == ["COMPLETED", "COMPLETED", "FAILED", "FAILED", "VERIFIED"]
    logs = [str(_metadata(env, i).get("pg_dump_log", "")) for i, s, _ in _catalog(env)]
    assert sum("pg_dump: dumping contents of table" in log for log in logs) == 3


# -- inside a Django project -------------------------------------------------------------------


def test_manage_py_strongroom_backs_up_and_lists_with_the_catalog_in_the_project_database(
    pg_cluster: PgCluster, shop: DemoDatabase, tmp_path: Path
) -> None:
    project = f"project_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(project, owner="shop_app")
    (tmp_path / "local").mkdir()
    env = {
        **clean_environ(),
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(SRC)]),
        "DATABASE_URL": url_as(shop.app_url, dbname=project),  # the application's database
        "STRONGROOM_DATABASE_URL": shop.admin_url,  # what gets backed up, as a BYPASSRLS role
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local",
    }

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(EXAMPLE / "manage.py"), *args],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    try:
        _ok(manage("migrate", "strongroom", "--noinput"))
        assert json.loads(_ok(manage("strongroom", "list", "--json"))) == []
        doc = json.loads(_ok(manage("strongroom", "backup", "--json")))
        assert (doc["database"], doc["status"]) == (shop.name, "COMPLETED")
        listed = json.loads(_ok(manage("strongroom", "list", "--json")))
        assert [(b["id"], b["status"]) for b in listed] == [(doc["id"], "COMPLETED")]
        with psycopg.connect(pg_cluster.url(project)) as conn:  # the project's own tables
            row = conn.execute(
                sql.SQL("SELECT id, status FROM {}").format(sql.Identifier("strongroom_backup"))
            ).fetchone()
        assert row == (doc["id"], "COMPLETED")
        assert "strongroom exited" not in manage("strongroom", "show", doc["id"]).stderr
    finally:
        pg_cluster.drop_database(project)


# -- progress on a terminal --------------------------------------------------------------------


def _on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal; return (exit, stdout, terminal text)."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(CLI), *args],
            env={**env, "COLUMNS": "120", "TERM": "xterm"},
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the command closed its end
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read() if proc.stdout else ""
        code = proc.wait(timeout=180)
    finally:
        os.close(controller)
    text = b"".join(chunks).decode(errors="replace")
    return code, stdout, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # colours and cursor moves


def test_long_operations_show_bytes_and_rate_on_a_terminal_and_nothing_when_piped(
    cli: Cli, env: dict[str, str], new_db: Callable[[], str]
) -> None:
    # label, bytes done of the total ("?" for a dump's unknown size), then the rate ("?" until
    # it has a sample)
    amount = r"\s.*[\d.]+/(\?|[\d.]+) (bytes|[KMG]iB)\s+(\?|[\d.]+ [KMG]?B/s)"
    code, _, shown = _on_a_terminal(env, "backup")
    assert code == 0, shown
    assert re.search(r"backup" + amount, shown), shown
    code, _, shown = _on_a_terminal(env, "verify", "--latest")
    assert code == 0, shown
    assert re.search(r"verify local" + amount, shown), shown
    code, _, shown = _on_a_terminal(env, "restore", "--latest", "--target", new_db())
    assert code == 0, shown
    assert re.search(r"download\+verify" + amount, shown), shown
    for args in (("verify", "--latest", "--no-progress"), ("verify", "--latest", "--json")):
        code, _, shown = _on_a_terminal(env, *args)
        assert (code, shown) == (0, ""), shown
    piped = cli("verify", "--latest")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
