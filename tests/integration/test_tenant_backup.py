"""Tenant backups end to end, through the ``strongroom tenant`` command and real servers.

Every export is decoded the way a restore will read it: the object read back and proven by
``read_copy``, split by the tenant framing, each table's COPY binary stream loaded into a
temporary table by PostgreSQL itself, then compared with the source rows.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from clisupport import Cli, clean_environ, command, ok_json
from dbsupport import owned_database
from psycopg import sql

from strongroom.config import load_config
from strongroom.core import tenant_format
from strongroom.core.crypto import generate_key
from strongroom.core.manifest import MANIFEST_SUFFIX, manifest_key_for
from strongroom.core.postgres import ConnInfo
from strongroom.core.postgres.tenant_schema import (
    create_post_data,
    create_pre_data,
    schema_from_header,
)
from strongroom.core.readback import read_copy
from strongroom.sandbox.demo_data import DemoDatabase
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.services.runtime import Runtime

pytestmark = pytest.mark.integration

SHOP_TENANT_TABLES = (
    "public.tenants",
    "public.customers",
    "public.inventory_items",
    "public.sales",
    "public.sale_items",
)


@pytest.fixture
def env(tmp_path: Path, demo_db: DemoDatabase) -> dict[str, str]:
    (tmp_path / "local").mkdir()
    return {
        **clean_environ(),
        "HOME": str(tmp_path),
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite3'}",
    }


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    return command(env, timeout=180)


def _one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("strongroom: error: "), done.stderr
    return lines[0]


def _stored(env: dict[str, str]) -> list[str]:
    root = Path(env["BACKUP_LOCAL_PATH"])
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _real_counts(url: str, tenant: str, tables: tuple[str, ...] = SHOP_TENANT_TABLES) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        counts = {}
        for name in tables:
            schema, table = name.split(".")
            column = "id" if name == "public.tenants" else "tenant_id"
            query = sql.SQL("SELECT count(*) FROM {}.{} WHERE {}::text = %s").format(
                sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column)
            )
            row = conn.execute(query, (tenant,)).fetchone()
            counts[name] = row[0] if row else 0
        return counts


def _decode(env: dict[str, str], doc: dict[str, Any]) -> tuple[dict[str, Any], dict[int, bytes]]:
    """The export of backup ``doc``, read back whole: its header and each table's COPY stream."""
    runtime = Runtime.build(load_config(env))
    (copy,) = doc["copies"]
    plain = io.BytesIO()
    read_copy(
        runtime.location("local"),
        copy["key"],
        manifest_key_for(copy["key"]),
        runtime.keyring,
        sink=plain.write,
    )
    plain.seek(0)
    header = tenant_format.read_header(plain)
    streams: dict[int, bytes] = {}
    for chunk in tenant_format.read_chunks(plain, len(header["tables"])):
        streams[chunk.index] = streams.get(chunk.index, b"") + chunk.data
    assert plain.read() == b""
    return header, streams


def _stage(
    conn: psycopg.Connection[Any], header: dict[str, Any], streams: dict[int, bytes]
) -> dict[str, list[Any]]:
    """Each table's export loaded by PostgreSQL into a temp table, read back as sorted text."""
    rows: dict[str, list[Any]] = {}
    for index, table in enumerate(header["tables"]):
        schema, name = table["name"].split(".")
        temp = sql.Identifier(f"staged_{uuid.uuid4().hex[:8]}")
        columns = sql.SQL(", ").join(sql.Identifier(c["name"]) for c in table["columns"])
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {}.{} WITH NO DATA").format(
                temp, columns, sql.Identifier(schema), sql.Identifier(name)
            )
        )
        with conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(temp, columns)
        ) as copy:
            copy.write(streams.get(index, b""))
        query = sql.SQL('SELECT t::text FROM {} t ORDER BY t::text COLLATE "C"').format(temp)
        rows[table["name"]] = [r[0] for r in conn.execute(query).fetchall()]
    return rows


@pytest.fixture
def staged(demo_db: DemoDatabase) -> Iterator[Callable[..., Any]]:
    """``staged(header, streams)``: :func:`_stage` in the demo database."""
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        yield lambda header, streams: _stage(conn, header, streams)


def _source_rows(url: str, table: dict[str, Any], tenant: str) -> list[str]:
    schema, name = table["name"].split(".")
    columns = sql.SQL(", ").join(sql.Identifier(c["name"]) for c in table["columns"])
    query = sql.SQL(
        "SELECT t::text FROM (SELECT {} FROM {}.{} WHERE {}::text = %s) t"
        ' ORDER BY t::text COLLATE "C"'
    ).format(columns, sql.Identifier(schema), sql.Identifier(name), sql.Identifier(table["filter"]))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        return [r[0] for r in conn.execute(query, (tenant,)).fetchall()]


# -- the tests ---------------------------------------------------------------------------------


def test_one_tenant_holds_exactly_its_rows(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase, staged: Callable[..., Any]
) -> None:
    tenant = demo_db.tenants[1].id
    doc = ok_json(cli("tenant", "backup", tenant, "--json"))
    assert doc["status"] == "COMPLETED" and doc["backup_type"] == "TENANT_BACKUP"
    assert doc["tenant_id"] == tenant
    assert doc["copies"][0]["key"].startswith(f"{demo_db.name}/tenant/")
    manifest = json.loads(
        (Path(env["BACKUP_LOCAL_PATH"]) / manifest_key_for(doc["copies"][0]["key"])).read_text()
    )["manifest"]
    assert manifest["kind"] == "tenant" and manifest["tenant_id"] == tenant
    assert manifest["table_rows"] == _real_counts(demo_db.admin_url, tenant)
    order = [t["name"] for t in manifest["extra"]["tables"]]
    assert sorted(order) == sorted(SHOP_TENANT_TABLES) and order[0] == "public.tenants"
    assert order.index("public.customers") < order.index("public.sales")
    assert order.index("public.sales") < order.index("public.sale_items")
    assert manifest["extra"]["shared_tables"] == []
    header, streams = _decode(env, doc)
    assert header["tenant_id"] == tenant
    rows = staged(header, streams)
    for table in header["tables"]:
        assert rows[table["name"]] == _source_rows(demo_db.admin_url, table, tenant)
    listed = ok_json(cli("list", "--tenant", tenant, "--json"))
    assert [b["id"] for b in listed] == [doc["id"]]


def test_a_policy_that_shows_everything_leaks_nothing(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase, staged: Callable[..., Any]
) -> None:
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        for table in ("customers", "sales", "sale_items"):
            conn.execute(
                sql.SQL("ALTER POLICY tenant_isolation ON {} USING (true)").format(
                    sql.Identifier(table)
                )
            )
    tenant = demo_db.tenants[0].id
    doc = ok_json(cli("tenant", "backup", tenant, "--json"))
    header, streams = _decode(env, doc)
    rows = staged(header, streams)
    assert {n: len(r) for n, r in rows.items()} == _real_counts(demo_db.admin_url, tenant)
    for table in header["tables"]:
        assert rows[table["name"]] == _source_rows(demo_db.admin_url, table, tenant)


def test_all_tenants_one_object_each_then_verify_and_list(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase
) -> None:
    result = ok_json(cli("tenant", "backup", "--all", "--json"))
    assert result["ok"] is True
    assert sorted(r["tenant_id"] for r in result["tenants"]) == sorted(
        t.id for t in demo_db.tenants
    )
    objects = [f for f in _stored(env) if not f.endswith(MANIFEST_SUFFIX)]
    assert len(objects) == len(demo_db.tenants)
    first = result["tenants"][0]
    verified = ok_json(cli("verify", first["id"], "--json"))
    assert verified["status"] == "VERIFIED"
    listed = ok_json(cli("tenant", "list", "--json"))
    for entry in listed:
        assert entry["rows"] == sum(_real_counts(demo_db.admin_url, entry["tenant_id"]).values())
        assert entry["newest_backup"]["status"] in ("COMPLETED", "VERIFIED")


def test_all_goes_on_past_a_failing_tenant_and_reports_each(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase
) -> None:
    """One tenant's export fails in PostgreSQL (its policy raises); every other tenant is
    backed up, the failure is named, the exit is non-zero and nothing of it is stored."""
    broken = demo_db.tenants[1].id
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute(  # an error for that one tenant only, when the row filter is evaluated
            sql.SQL(
                "ALTER POLICY tenant_isolation ON sales USING (tenant_id ="
                " NULLIF(current_setting('app.current_tenant', true), '')::uuid AND CASE WHEN"
                " current_setting('app.current_tenant', true) = {} THEN"
                " current_setting('app.current_tenant', true)::int = 0 ELSE true END)"
            ).format(sql.Literal(broken))
        )
    done = cli("tenant", "backup", "--all", "--json")
    assert done.returncode == 6, done.stderr  # BACKUP_INCOMPLETE
    assert f"1 of {len(demo_db.tenants)} tenant backup(s) did not complete: {broken}" in (
        done.stderr
    )
    result = json.loads(done.stdout)
    assert result["ok"] is False
    by_tenant = {r["tenant_id"]: r for r in result["tenants"]}
    assert sorted(by_tenant) == sorted(t.id for t in demo_db.tenants)
    why = by_tenant[broken]["error"]
    assert "public.sales" in why and "invalid input syntax for type integer" in why
    assert by_tenant[broken]["status"] == "FAILED"
    good = [r for t, r in by_tenant.items() if t != broken]
    assert {r["status"] for r in good} == {"COMPLETED"}
    objects = [f for f in _stored(env) if not f.endswith(MANIFEST_SUFFIX)]
    assert len(objects) == len(good) and not any(".partial" in f for f in _stored(env))
    line = _one_error_line(cli("tenant", "backup", broken), 1)  # alone: the same one line
    assert "public.sales" in line and "invalid input syntax for type integer" in line
    listed = ok_json(cli("list", "--tenant", broken, "--json"))
    assert [b["status"] for b in listed] == ["FAILED", "FAILED"]


def test_restore_refuses_a_tenant_backup_before_touching_the_target(
    cli: Cli, demo_db: DemoDatabase, pg_cluster: PgCluster
) -> None:
    """A tenant export is not a pg_dump archive: the full restore says so, creates nothing."""
    backup = ok_json(cli("tenant", "backup", demo_db.tenants[0].id, "--json"))
    name = f"restored_{uuid.uuid4().hex[:10]}"
    line = _one_error_line(cli("restore", backup["id"], "--target", pg_cluster.url(name)), 2)
    assert f"tenant {demo_db.tenants[0].id}" in line and "full backup" in line
    assert not pg_cluster.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))


def test_unknown_tenant_is_one_line_and_nothing_stored(cli: Cli, env: dict[str, str]) -> None:
    for wrong in (str(uuid.uuid4()), "not-a-uuid"):
        line = _one_error_line(cli("tenant", "backup", wrong), 2)
        assert wrong in line and "strongroom tenant list" in line
    assert _stored(env) == []
    assert ok_json(cli("list", "--json")) == []


def test_rls_table_reaching_no_tenant_is_refused_by_name(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase
) -> None:
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit_log (id bigint PRIMARY KEY, body text)")
        conn.execute("ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY")
    line = _one_error_line(cli("tenant", "backup", demo_db.tenants[0].id), 2)
    assert "public.audit_log" in line
    assert _stored(env) == []
    assert ok_json(cli("list", "--json")) == []


def test_a_role_that_may_not_take_the_owner_is_told_what_to_grant(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase, pg_cluster: PgCluster
) -> None:
    role = f"bk_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(role)
            )
        )
    try:
        url = pg_cluster.url(demo_db.name).replace("postgres@", f"{role}@", 1)
        line = _one_error_line(cli("tenant", "backup", demo_db.tenants[0].id, DATABASE_URL=url), 2)
        assert f"GRANT shop_app TO {role}" in line
        assert _stored(env) == []
    finally:
        with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


_OWN_SCHEMA = """
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE accounts (account_key text PRIMARY KEY, name text NOT NULL);
CREATE TABLE currencies (code text PRIMARY KEY);
CREATE TABLE events (
    id    bigint GENERATED ALWAYS AS IDENTITY,
    acct  text NOT NULL REFERENCES accounts,
    at    date NOT NULL,
    tags  text[],
    blob  bytea,
    m     mood,
    span  int4range,
    doc   jsonb,
    big   text,
    size  integer GENERATED ALWAYS AS (length(big)) STORED,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO accounts VALUES ('a', 'Alpha'), ('b', 'Beta');
INSERT INTO currencies VALUES ('EUR');
INSERT INTO events (acct, at, tags, blob, m, span, doc, big)
SELECT CASE WHEN g % 3 = 0 THEN 'b' ELSE 'a' END,
       date '2024-06-01' + g * 7,
       ARRAY['x' || g, NULL, 'qu"ote'],
       decode(md5(g::text), 'hex') || '\\x00ff'::bytea,
       CASE WHEN g % 2 = 0 THEN 'calm' ELSE 'busy' END::mood,
       int4range(g, g + 10),
       jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'two', NULL)),
       CASE WHEN g = 1 THEN (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 20000) i)
            ELSE 'short ' || g END
FROM generate_series(1, 60) g;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY own ON accounts USING (account_key = current_setting('app.acct', true));
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY own ON events USING (acct = current_setting('app.acct', true));
"""


def test_own_schema_with_every_awkward_type_round_trips(
    cli: Cli, env: dict[str, str], pg_cluster: PgCluster
) -> None:
    with owned_database(pg_cluster, _OWN_SCHEMA) as (url, _owner):
        settings = {
            "DATABASE_URL": url,
            "STRONGROOM_TENANT_TABLE": "accounts",
            "STRONGROOM_TENANT_COLUMN": "acct",
            "STRONGROOM_TENANT_SETTING": "app.acct",
        }
        doc = ok_json(cli("tenant", "backup", "a", "--json", **settings))
        manifest = json.loads(
            (Path(env["BACKUP_LOCAL_PATH"]) / manifest_key_for(doc["copies"][0]["key"])).read_text()
        )["manifest"]
        assert manifest["table_rows"] == {"public.accounts": 1, "public.events": 40}
        assert manifest["extra"]["shared_tables"] == ["public.currencies"]
        header, streams = _decode({**env, **settings}, doc)
        events = header["tables"][1]
        assert [c["name"] for c in events["columns"]][:2] == ["id", "acct"]
        assert "size" not in [c["name"] for c in events["columns"]]  # generated: recomputed
        assert events["columns"][0]["identity"] == "a"
        with psycopg.connect(url, autocommit=True) as conn:
            loaded = _stage(conn, header, streams)
        for table in header["tables"]:
            source = _source_rows(url, table, "a")
            assert loaded[table["name"]] == source and source
        assert any(len(r) > 600_000 for r in loaded["public.events"])  # the TOASTed value


def test_catalog_rebuild_brings_a_tenant_backup_back(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase
) -> None:
    tenant = demo_db.tenants[2].id
    doc = ok_json(cli("tenant", "backup", tenant, "--json"))
    Path(env["STRONGROOM_CATALOG_URL"].removeprefix("sqlite:///")).unlink()
    done = cli("catalog", "rebuild", "--from", "local", "--json")
    assert done.returncode == 0, done.stderr
    (back,) = ok_json(cli("list", "--tenant", tenant, "--json"))
    assert (back["id"], back["backup_type"], back["tenant_id"]) == (
        doc["id"],
        "TENANT_BACKUP",
        tenant,
    )
    assert ok_json(cli("verify", doc["id"], "--json"))["status"] == "VERIFIED"


def test_the_backup_carries_the_schema_a_new_database_is_made_from(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Pre-data from the header's archive, the tenant's COPY streams, then post-data."""
    tenant = demo_db.tenants[0].id
    doc = ok_json(cli("tenant", "backup", tenant, "--json"))
    manifest_file = Path(env["BACKUP_LOCAL_PATH"]) / manifest_key_for(doc["copies"][0]["key"])
    extra = json.loads(manifest_file.read_text())["manifest"]["extra"]
    header, streams = _decode(env, doc)
    schema = schema_from_header(header)
    assert schema is not None and schema.startswith(b"PGDMP")
    assert extra["schema_included"] is True and extra["schema_bytes"] == len(schema)
    assert schema_from_header({k: v for k, v in header.items() if k != "schema"}) is None
    archive = tmp_path / "schema.dump"
    archive.write_bytes(schema)
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    try:
        target = ConnInfo.parse(pg_cluster.url(name))
        create_pre_data(target, archive)
        with psycopg.connect(pg_cluster.url(name), autocommit=True) as conn:
            for index, table in enumerate(header["tables"]):
                schema_name, table_name = table["name"].split(".")
                columns = sql.SQL(", ").join(sql.Identifier(c["name"]) for c in table["columns"])
                query = sql.SQL("COPY {}.{} ({}) FROM STDIN (FORMAT binary)").format(
                    sql.Identifier(schema_name), sql.Identifier(table_name), columns
                )
                with conn.cursor().copy(query) as copy:
                    copy.write(streams.get(index, b""))
        create_post_data(target, archive)
        assert _real_counts(pg_cluster.url(name), tenant) == _real_counts(demo_db.admin_url, tenant)
        others = demo_db.tenants[1].id
        assert sum(_real_counts(pg_cluster.url(name), others).values()) == 0
        flags = pg_cluster.execute(
            "SELECT bool_and(relrowsecurity), bool_and(relforcerowsecurity), count(*) FROM"
            " pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
            dbname=name,
        )
        assert flags == [(True, True, len(SHOP_TENANT_TABLES))]
        policies = pg_cluster.execute("SELECT count(*) FROM pg_policies", dbname=name)
        assert policies == [(len(SHOP_TENANT_TABLES),)]
    finally:
        pg_cluster.drop_database(name)
