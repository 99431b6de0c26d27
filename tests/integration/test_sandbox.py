"""The sandbox reproduces the seed: a real server, RLS forced, pg_dump failing as the app."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from strongroom.errors import PostgresError, StrongroomError
from strongroom.sandbox import demo_data, pgcluster
from strongroom.sandbox.demo_data import DemoDatabase, table_digests, url_as
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.ports import free_port
from strongroom.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration

SEED_ERROR = 'query would be affected by row-level security policy for table "tenants"'


def test_cluster_runs_with_the_settings_backups_need(pg_cluster: PgCluster) -> None:
    settings = dict(
        pg_cluster.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (["wal_level", "max_wal_senders", "listen_addresses", "port", "fsync"],),
        )
    )
    assert settings == {
        "wal_level": "replica",
        "max_wal_senders": "4",
        "listen_addresses": "127.0.0.1",
        "port": str(pg_cluster.port),
        "fsync": "off",
    }
    assert pg_cluster.server_version >= 150000
    assert pg_cluster.url("x y", password="p@ss").endswith(f"@127.0.0.1:{pg_cluster.port}/x%20y")
    if os.geteuid() == 0:  # initdb refuses root: the server must run as the postgres OS user
        assert pg_cluster.data_dir.stat().st_uid != 0
        assert pg_cluster.execute("SHOW data_directory")[0][0] == str(pg_cluster.data_dir)


def test_missing_server_binaries_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a client-only install: no initdb
    monkeypatch.setattr(pgcluster, "VERSIONED_ROOT", tmp_path)
    monkeypatch.setattr(pgcluster.shutil, "which", lambda name: None)
    with pytest.raises(StrongroomError, match="apt-get install postgresql"):
        PgCluster()


def test_restart_keeps_the_data_and_the_port() -> None:
    with PgCluster() as pg:
        pg.create_database("keep")
        pg.execute("CREATE TABLE t AS SELECT 42 AS answer", dbname="keep")
        port = pg.port
        pg.stop()
        with pytest.raises(PostgresError):
            pg.connect()
        pg.start()
        assert pg.port == port
        assert pg.execute("SELECT answer FROM t", dbname="keep") == [(42,)]
        pg.drop_database("keep")
        base = pg.base_dir
    assert not base.exists()


def _tenant_rows(admin_url: str, table: str, tenant_id: str) -> int:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE tenant_id = %s",  # table: a constant of ours
            (tenant_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_app_role_sees_only_its_tenant(demo_db: DemoDatabase) -> None:
    tenant = demo_db.tenants[1]
    with psycopg.connect(demo_db.app_url, autocommit=True) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert role == (False, False)
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (0,)

        conn.execute("SELECT set_config('app.current_tenant', %s, false)", (tenant.id,))
        seen = conn.execute("SELECT count(*), count(DISTINCT tenant_id) FROM customers").fetchone()
        assert seen == (_tenant_rows(demo_db.admin_url, "customers", tenant.id), 1)
        assert seen[0] > 0
        assert conn.execute("SELECT slug FROM tenants").fetchall() == [(tenant.slug,)]

        conn.execute("RESET app.current_tenant")  # reads back as '': no rows, not an error
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (0,)

        other = demo_db.tenants[0].id  # writing another tenant's rows is refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO customers (tenant_id, name) VALUES (%s, 'intruder')", (other,)
            )


def test_app_role_owns_every_table_with_rls_forced(demo_db: DemoDatabase) -> None:
    with psycopg.connect(demo_db.admin_url) as conn:
        rows = conn.execute(
            "SELECT relname, pg_get_userbyid(relowner), relrowsecurity, relforcerowsecurity "
            "FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' "
            "ORDER BY 1"
        ).fetchall()
    assert rows == [(t, "shop_app", True, True) for t in sorted(demo_data.TABLES)]


def _pg_dump_as_app(
    pg_cluster: PgCluster, demo_db: DemoDatabase, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The seed's pg_dump invocation, as the application role."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = demo_db.app_password  # never on argv
    argv = [
        pg_cluster.binary("pg_dump"),
        *("-Fc", "-v", "--no-owner", "--no-acl", "-f", str(out), *extra),
        *("-d", url_as(demo_db.app_url, user="shop_app")),  # the URL without the password
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_pg_dump_as_the_app_role_fails_like_the_seed(
    pg_cluster: PgCluster, demo_db: DemoDatabase, tmp_path: Path
) -> None:
    # A whole-database dump stops at the first table it copies (pg_dump goes by name, so here
    # customers); every one of them is refused for the same reason.
    whole = _pg_dump_as_app(pg_cluster, demo_db, tmp_path / "all.pgc")
    assert whole.returncode != 0
    assert "pg_dump: error:" in whole.stderr
    assert "query would be affected by row-level security policy for table" in whole.stderr
    # The seed's error, for its table (pg_dump 15 words it "error: query failed: ERROR:  ...").
    tenants = _pg_dump_as_app(pg_cluster, demo_db, tmp_path / "t.pgc", "-t", "public.tenants")
    assert tenants.returncode != 0
    assert "pg_dump: error:" in tenants.stderr
    assert SEED_ERROR in tenants.stderr
    assert "HINT:  To disable the policy for the table's owner" in tenants.stderr


def test_pg_dump_as_superuser_succeeds(
    pg_cluster: PgCluster, demo_db: DemoDatabase, tmp_path: Path
) -> None:
    argv = [pg_cluster.binary("pg_dump"), "-Fc", "-f", str(tmp_path / "d.pgc"), "-d"]
    out = subprocess.run(
        [*argv, demo_db.admin_url], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr


def test_table_digests_are_stable_and_detect_a_changed_row(demo_db: DemoDatabase) -> None:
    first = table_digests(demo_db.admin_url)
    assert sorted(first) == [f"public.{t}" for t in sorted(demo_data.TABLES)]
    assert first == table_digests(demo_db.admin_url)
    with psycopg.connect(demo_db.admin_url) as conn:
        for table, (rows, _) in first.items():
            counted = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert counted == (rows,), table
        conn.execute(
            "UPDATE inventory_items SET quantity = quantity + 1 "
            "WHERE id = (SELECT min(id::text)::uuid FROM inventory_items)"
        )
    after = table_digests(demo_db.admin_url)
    changed = {t for t in first if first[t] != after[t]}
    assert changed == {"public.inventory_items"}
    assert after["public.inventory_items"][0] == first["public.inventory_items"][0]


def test_table_digests_refuse_a_role_that_sees_only_part(demo_db: DemoDatabase) -> None:
    with pytest.raises(PostgresError, match="row-level security"):
        table_digests(demo_db.app_url)


def test_demo_data_is_varied(demo_db: DemoDatabase) -> None:
    with psycopg.connect(demo_db.admin_url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE email IS NULL), count(*) FILTER (WHERE phone IS NULL),"
            " count(DISTINCT name) FROM customers"
        ).fetchone()
        photos = conn.execute(
            "SELECT count(photo), min(length(photo)) FROM inventory_items"
        ).fetchone()
        mismatched = conn.execute(
            "SELECT count(*) FROM sales s WHERE total <> "
            "(SELECT sum(quantity * unit_price) FROM sale_items i WHERE i.sale_id = s.id)"
        ).fetchone()
        notes = conn.execute("SELECT count(DISTINCT notes), count(notes) FROM sales").fetchone()
    assert row is not None and row[0] > 0 and row[1] > 0 and row[2] > 20
    assert photos is not None and photos[0] >= 1 and photos[1] > 1000
    assert mismatched == (0,)
    assert notes is not None and 5 < notes[0] < notes[1]


def test_populate_to_size_reaches_the_target(pg_cluster: PgCluster, app_password: str) -> None:
    name = f"size_{uuid.uuid4().hex[:8]}"
    try:
        app_url = demo_data.install_schema(pg_cluster.url(), name, app_password)
        target = demo_data.database_size(app_url) + 24 * 2**20
        seen: list[int] = []
        size = demo_data.populate_to_size(app_url, target, tenants=2, progress=seen.append)
        assert size >= target
        assert size < target + 24 * 2**20  # the last round is scaled down
        assert seen == sorted(seen) and len(seen) >= 2
    finally:
        pg_cluster.drop_database(name)


def test_free_ports_are_distinct() -> None:
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    import redis

    assert redis_server.ping()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url_for(3))
    assert client.ping() is True
    client.set("strongroom-sandbox", "ok")
    assert client.get("strongroom-sandbox") == b"ok"
    client.delete("strongroom-sandbox")


# -- the example Django project ---------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "example"
SRC = Path(__file__).resolve().parents[2] / "src"

_SCHEMA_SQL = """
SELECT 'column', c.relname, a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relname = ANY(%(t)s) AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index', tablename, indexdef FROM pg_indexes WHERE tablename = ANY(%(t)s)
UNION ALL
SELECT 'constraint', conrelid::regclass::text, pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid::regclass::text = ANY(%(t)s)
UNION ALL
SELECT 'policy', tablename, policyname || ' ' || qual FROM pg_policies WHERE tablename = ANY(%(t)s)
UNION ALL
SELECT 'table', relname, pg_get_userbyid(relowner) || ' ' || relrowsecurity || relforcerowsecurity
FROM pg_class WHERE relname = ANY(%(t)s) AND relkind = 'r'
ORDER BY 1, 2, 3
"""


def _schema(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(_SCHEMA_SQL, {"t": list(demo_data.TABLES)}).fetchall()


def _manage(tmp_path: Path, database_url: str, password: str, *args: str) -> str:
    """Run example/manage.py without the strongroom app (its models are not ours to test)."""
    (tmp_path / "sandbox_test_settings.py").write_text(
        "from config.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if a != 'strongroom']  # noqa: F405\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        DJANGO_SETTINGS_MODULE="sandbox_test_settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(EXAMPLE), str(SRC)]),
        DATABASE_URL=database_url,
        PGPASSWORD=password,
    )
    argv = [sys.executable, str(EXAMPLE / "manage.py"), *args]
    out = subprocess.run(
        argv, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_example_migrate_reproduces_the_demo_schema(
    pg_cluster: PgCluster, demo_db: DemoDatabase, tmp_path: Path
) -> None:
    name = f"django_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name, owner="shop_app")
    try:
        app_url = url_as(demo_db.app_url, user="shop_app", dbname=name)  # no password in it
        _manage(tmp_path, app_url, demo_db.app_password, "migrate", "shop", "--noinput")
        migrated = _schema(pg_cluster.url(name))
        assert len(migrated) > 60  # columns, indexes, constraints, policies, owners
        assert migrated == _schema(demo_db.admin_url)

        # The generator writes through the migrated schema; the ORM sees one tenant at a time.
        password_url = url_as(app_url, password=demo_db.app_password)
        tenant = demo_data.populate(password_url, tenants=2, customers_per_tenant=7)[1]
        script = (
            "from shop.models import Customer, Tenant\n"
            "from shop.tenancy import tenant_context\n"
            "print(Customer.objects.count())\n"
            f"with tenant_context('{tenant.id}'):\n"
            "    print(Customer.objects.count(), Tenant.objects.get().slug)\n"
        )
        out = _manage(
            tmp_path, app_url, demo_db.app_password, "shell", "--no-imports", "-c", script
        )
        assert out.split() == ["0", "7", tenant.slug]
    finally:
        pg_cluster.drop_database(name)
