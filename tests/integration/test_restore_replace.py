"""``restore --replace`` cannot half-happen, and a busy target is a bounded wait that names names.

The command runs as a subprocess configured only through its environment. The source is one
small demo shop backed up once for the module; each test gets its own target holding other data
(and owner, grants, settings of its own), compared by per-table digests before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from clisupport import CLI, Cli, clean_environ, command, require_cli
from psycopg import sql

from strongroom.core.crypto import generate_key
from strongroom.sandbox.demo_data import DemoDatabase, create_demo_database, table_digests
from strongroom.sandbox.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SIZES = {"tenants": 2, "customers_per_tenant": 10, "items_per_tenant": 10, "sales_per_tenant": 10}
#: A non-superuser that may create databases: it can restore and replace, not everything.
RESTORER = "sr_restorer"
OWNER, READER = "sr_target_owner", "sr_target_reader"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(pg_cluster: PgCluster, app_password: str) -> Iterator[DemoDatabase]:
    name = f"shop_{uuid.uuid4().hex[:10]}"
    try:
        yield create_demo_database(pg_cluster.url(), name, app_password=app_password, **SIZES)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, shop: DemoDatabase) -> dict[str, str]:
    """Local disk only, a new key, a SQLite catalog: one store for the module's backups."""
    require_cli()
    root = tmp_path_factory.mktemp("replace")
    for sub in ("local", "home", "scratch"):
        (root / sub).mkdir()
    return {
        **clean_environ(),
        "HOME": str(root / "home"),
        "DATABASE_URL": shop.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(root / "local"),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{root / 'catalog.sqlite3'}",
        "BACKUP_RESTORE_SCRATCH_DIR": str(root / "scratch"),
    }


@pytest.fixture(scope="module")
def cli(env: dict[str, str]) -> Cli:
    return command(env, timeout=180)


@pytest.fixture(scope="module")
def backup_id(cli: Cli) -> str:
    return _backup(cli)


@pytest.fixture(scope="module")
def roles(pg_cluster: PgCluster) -> Iterator[None]:
    for role, options in ((RESTORER, "LOGIN CREATEDB"), (OWNER, "NOLOGIN"), (READER, "LOGIN")):
        pg_cluster.execute(
            sql.SQL(
                "DO $$BEGIN CREATE ROLE {} {}; EXCEPTION WHEN duplicate_object THEN END$$"
            ).format(sql.Identifier(role), sql.SQL(options))
        )
    yield


@pytest.fixture
def make_target(pg_cluster: PgCluster, roles: None) -> Iterator[Callable[..., str]]:
    """``make_target(owner=...)``: a database holding other data than the shop; its name."""
    names: list[str] = []

    def make(owner: str = OWNER) -> str:
        name = f"target_{uuid.uuid4().hex[:10]}"
        names.append(name)
        pg_cluster.create_database(name, owner=owner)
        pg_cluster.execute(
            "CREATE TABLE old_data (id int PRIMARY KEY, note text);"
            " INSERT INTO old_data SELECT g, 'before ' || g FROM generate_series(1, 50) g",
            dbname=name,
        )
        return name

    yield make
    for name in names:
        pg_cluster.drop_database(name)


# -- helpers -----------------------------------------------------------------------------------


def _backup(cli: Cli, **overrides: str) -> str:
    done = cli("backup", "--json", **overrides)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    assert doc["status"] == "COMPLETED", doc["error"]
    return str(doc["id"])


def _error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith("strongroom: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[-1]


def _leftovers(pg_cluster: PgCluster) -> list[str]:
    """Databases a replace would leave behind if it cleaned up badly."""
    rows = pg_cluster.execute("SELECT datname FROM pg_database WHERE datname LIKE '%%\\_sr\\_%%'")
    return [str(r[0]) for r in rows]


def _database_props(pg_cluster: PgCluster, name: str) -> dict[str, Any]:
    """What belongs to the database itself: owner, ACL, settings, comment."""
    row = pg_cluster.execute(
        "SELECT pg_get_userbyid(d.datdba), d.datacl::text[],"
        " (SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s, unnest(s.setconfig) c"
        "   WHERE s.setdatabase = d.oid AND s.setrole = 0),"
        " shobj_description(d.oid, 'pg_database')"
        " FROM pg_database d WHERE d.datname = %s",
        (name,),
    )[0]
    return {"owner": row[0], "acl": sorted(row[1] or []), "settings": row[2], "comment": row[3]}


def _url(pg_cluster: PgCluster, name: str, user: str = "postgres") -> str:
    return pg_cluster.url(name, user=user)


# -- tests -------------------------------------------------------------------------------------


def test_replace_swaps_in_the_backup_and_keeps_owner_grants_and_settings(
    cli: Cli, backup_id: str, shop: DemoDatabase, pg_cluster: PgCluster, make_target: Any
) -> None:
    name = make_target()
    db = sql.Identifier(name)
    pg_cluster.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
    pg_cluster.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(READER))
    )
    pg_cluster.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '12MB'").format(db))
    pg_cluster.execute(
        sql.SQL('ALTER DATABASE {} SET search_path = "$user", public, "Odd, name"').format(db)
    )
    pg_cluster.execute(sql.SQL("COMMENT ON DATABASE {} IS 'the shop''s live data'").format(db))
    before = _database_props(pg_cluster, name)
    assert f"{READER}=c/{OWNER}" in before["acl"] and len(before["settings"]) == 2

    done = cli("restore", backup_id, "--target", _url(pg_cluster, name), "--replace", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "RESTORED"
    assert list(doc["stages"]) == ["fetch", "pg_restore", "row counts", "swap"]
    assert table_digests(_url(pg_cluster, name)) == table_digests(shop.admin_url)
    assert _database_props(pg_cluster, name) == before
    assert _leftovers(pg_cluster) == []


def test_a_restore_failing_inside_pg_restore_leaves_every_target_as_it_was(
    cli: Cli, env: dict[str, str], pg_cluster: PgCluster, make_target: Any
) -> None:
    """An event trigger restores only as superuser: pg_restore fails after the data went in."""
    source = f"evt_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(source)
    try:
        pg_cluster.execute(
            "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 500);"
            " CREATE FUNCTION noop() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;"
            " CREATE EVENT TRIGGER sr_noop ON ddl_command_start EXECUTE FUNCTION noop()",
            dbname=source,
        )
        failing = _backup(cli, DATABASE_URL=_url(pg_cluster, source))
    finally:
        pg_cluster.drop_database(source)

    name = make_target(owner=RESTORER)
    before = table_digests(_url(pg_cluster, name))
    target = _url(pg_cluster, name, RESTORER)
    line = _error_line(cli("restore", failing, "--target", target, "--replace"), 1)
    assert line.startswith("strongroom: error: pg_restore failed (exit 1): "), line
    assert line.endswith("; nothing was replaced: the target was left as it was"), line
    assert table_digests(_url(pg_cluster, name)) == before
    assert _leftovers(pg_cluster) == []

    # without --replace: a database this run created is dropped, an empty one emptied again
    missing = f"fresh_{uuid.uuid4().hex[:10]}"
    line = _error_line(cli("restore", failing, "--target", _url(pg_cluster, missing, RESTORER)), 1)
    assert line.endswith("; the target database was dropped again"), line
    assert not pg_cluster.execute("SELECT 1 FROM pg_database WHERE datname = %s", (missing,))
    empty = make_target(owner=RESTORER)
    pg_cluster.execute("DROP TABLE old_data", dbname=empty)
    line = _error_line(cli("restore", failing, "--target", _url(pg_cluster, empty, RESTORER)), 1)
    assert line.endswith("; the target database was emptied again"), line
    assert table_digests(_url(pg_cluster, empty)) == {}
    assert cli("restore", failing, "--target", _url(pg_cluster, empty)).returncode == 0  # retry


def test_a_session_on_the_target_is_a_bounded_wait_that_names_it(
    cli: Cli, backup_id: str, shop: DemoDatabase, pg_cluster: PgCluster, make_target: Any
) -> None:
    name = make_target()
    target = _url(pg_cluster, name)
    for bad in ("-1", "inf", "nan"):
        line = _error_line(
            cli(
                "restore",
                backup_id,
                "--target",
                target,
                "--replace",
                BACKUP_RESTORE_LOCK_TIMEOUT=bad,
            ),
            2,
        )
        assert line.startswith("strongroom: error: BACKUP_RESTORE_LOCK_TIMEOUT must be "), line
        assert "between 0 and" in line or "a finite number" in line, line
    line = _error_line(cli("restore", backup_id, "--target", target, "--terminate-sessions"), 2)
    assert "--terminate-sessions applies only with --replace" in line
    before = table_digests(_url(pg_cluster, name))
    with psycopg.connect(_url(pg_cluster, name), application_name="sr-blocker") as blocker:
        blocker.execute("SELECT * FROM old_data FOR UPDATE")  # an open transaction, row locks
        pid = blocker.info.backend_pid
        started = time.monotonic()
        done = cli(
            "restore",
            backup_id,
            "--target",
            _url(pg_cluster, name),
            "--replace",
            BACKUP_RESTORE_LOCK_TIMEOUT="2",
        )
        waited = time.monotonic() - started
        line = _error_line(done, 5)
        assert f"pid {pid} (user postgres, application 'sr-blocker', state " in line, line
        assert "--terminate-sessions" in line and "after 2 s" in line, line
        assert len(done.stderr.splitlines()) == 1
        assert 2 <= waited < 20, waited
        assert table_digests(_url(pg_cluster, name)) == before

        done = cli(
            "restore",
            backup_id,
            "--target",
            _url(pg_cluster, name),
            "--replace",
            "--terminate-sessions",
            BACKUP_RESTORE_LOCK_TIMEOUT="2",
        )
        assert done.returncode == 0, done.stderr
        with pytest.raises(psycopg.OperationalError):
            blocker.execute("SELECT 1")
    assert table_digests(_url(pg_cluster, name)) == table_digests(shop.admin_url)
    assert _leftovers(pg_cluster) == []
    allowed = pg_cluster.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (name,))
    assert allowed == [(True,)]


def test_an_interrupted_replace_leaves_the_target_unchanged(
    cli: Cli, env: dict[str, str], pg_cluster: PgCluster, make_target: Any
) -> None:
    """Ctrl-C while pg_restore runs in the new database: it is dropped, the target untouched."""
    source = f"ballast_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(source)
    try:
        with pg_cluster.connect(source) as conn:
            conn.execute("CREATE TABLE ballast (id int, b bytea)")
            conn.execute("ALTER TABLE ballast ALTER b SET STORAGE EXTERNAL")  # no compression
            for i in range(40):  # ~40 MB that neither zstd nor PostgreSQL can shrink
                conn.execute("INSERT INTO ballast VALUES (%s, %s)", (i, os.urandom(1 << 20)))
        big = _backup(cli, DATABASE_URL=_url(pg_cluster, source))
    finally:
        pg_cluster.drop_database(source)

    name = make_target()
    before = table_digests(_url(pg_cluster, name))
    proc = subprocess.Popen(
        [str(CLI), "restore", big, "--target", _url(pg_cluster, name), "--replace"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_pg_restore(pg_cluster, name, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "strongroom: error: interrupted by SIGINT" in stderr
    assert table_digests(_url(pg_cluster, name)) == before
    assert _leftovers(pg_cluster) == []


def _wait_for_pg_restore(pg_cluster: PgCluster, target: str, proc: subprocess.Popen[str]) -> None:
    """Until pg_restore is connected to the new database beside ``target``."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        rows = pg_cluster.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_restore'"
            " AND datname LIKE %s",
            (f"{target}\\_sr\\_%",),
        )
        if rows:
            return
        time.sleep(0.02)
    pytest.fail("pg_restore never connected to the new database")
