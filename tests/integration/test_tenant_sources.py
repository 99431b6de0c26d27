"""One tenant's rows out of a full backup's archive, and the schema a tenant is exported into.

Real PostgreSQL, real pg_dump/pg_restore: the archive is the full backup's (``pg_dump -Fc -Z0
--no-owner --no-acl``, the same ``start_dump``); the extracted COPY text is loaded by PostgreSQL
into temporary tables and compared, per table, with the tenant's rows in the source.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbsupport import owned_database
from psycopg import sql

from strongroom.core.postgres import ConnInfo, start_dump
from strongroom.core.postgres.tenant_export import TenantScope
from strongroom.core.postgres.tenant_extract import dump_tenant_rows
from strongroom.core.postgres.tenant_rows import TableRows, TenantRows
from strongroom.core.postgres.tenant_schema import create_post_data, create_pre_data
from strongroom.errors import RestoreError, TenantNotFound
from strongroom.sandbox.demo_data import DemoDatabase
from strongroom.sandbox.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SHOP = TenantScope()
SHOP_TABLES = {
    "public.tenants": "id",
    "public.customers": "tenant_id",
    "public.inventory_items": "tenant_id",
    "public.sales": "tenant_id",
    "public.sale_items": "tenant_id",
}
#: The tenant key is text (with a backslash and a tab in one id); events is partitioned, with a
#: GENERATED ALWAYS identity key and a stored generated column pg_dump leaves out.
OWN_SCHEMA = r"""
CREATE TABLE accounts (account_key text PRIMARY KEY, name text NOT NULL);
CREATE TABLE currencies (code text PRIMARY KEY);
CREATE TABLE events (
    id    bigint GENERATED ALWAYS AS IDENTITY,
    acct  text NOT NULL REFERENCES accounts,
    at    date NOT NULL,
    tags  text[],
    blob  bytea,
    doc   jsonb,
    note  text,
    size  integer GENERATED ALWAYS AS (length(note)) STORED,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO accounts VALUES ('a', 'Alpha'), ('b', 'Beta'), (E'c\\d\te', 'Odd');
INSERT INTO currencies VALUES ('EUR');
INSERT INTO events (acct, at, tags, blob, doc, note)
SELECT CASE g % 3 WHEN 0 THEN 'b' WHEN 1 THEN 'a' ELSE E'c\\d\te' END,
       date '2024-06-01' + g * 7, ARRAY['x' || g, NULL, E'tab\there'],
       decode(md5(g::text), 'hex'), jsonb_build_object('g', g),
       CASE WHEN g % 5 = 0 THEN NULL ELSE E'line\nbreak a\tb ' || g END
FROM generate_series(1, 60) g;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY own ON accounts USING (account_key = current_setting('app.acct', true));
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY own ON events USING (acct = current_setting('app.acct', true));
"""
OWN = TenantScope("accounts", "acct", "app.acct")
OWN_TABLES = {"public.accounts": "account_key", "public.events": "acct"}


def _full_dump(url: str, path: Path) -> Path:
    """The full backup's archive: its pg_dump, written to the file a restore verifies into."""
    dump = start_dump(ConnInfo.parse(url), snapshot=None, timeout=120)
    with path.open("wb") as out:
        while data := dump.read(1 << 16):
            out.write(data)
    dump.finish()
    return path


@pytest.fixture
def shop_dump(demo_db: DemoDatabase, tmp_path: Path) -> Path:
    return _full_dump(demo_db.admin_url, tmp_path / "archive.dump")


@pytest.fixture
def own_db(pg_cluster: PgCluster) -> Iterator[str]:
    """A database of the second schema, owned by a non-superuser role; its superuser URL."""
    with owned_database(pg_cluster, OWN_SCHEMA) as (url, _owner):
        yield url


@pytest.fixture
def empty_db(pg_cluster: PgCluster) -> Iterator[str]:
    name = f"empty_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


def _load(conn: psycopg.Connection[Any], rows: TableRows) -> str:
    """The table's rows into a temp table shaped like it, by PostgreSQL's own COPY text."""
    temp = sql.Identifier(f"got_{uuid.uuid4().hex[:8]}")
    schema, name = rows.name.split(".")
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in rows.columns)
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {}.{} WITH NO DATA").format(
            temp, columns, sql.Identifier(schema), sql.Identifier(name)
        )
    )
    with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(temp, columns)) as copy:
        for chunk in rows.chunks:
            copy.write(chunk)
    return temp.as_string(conn)


def _extract(archive: Path, url: str, scope: TenantScope, tenant: str) -> dict[str, list[str]]:
    """Every extracted table, loaded; rows per table as sorted text (partitions under parent)."""
    loaded: dict[str, list[str]] = {}
    with (
        psycopg.connect(url, autocommit=True) as conn,
        dump_tenant_rows(archive, ConnInfo.parse(url), scope, tenant) as source,
    ):
        typed: TenantRows = source
        for rows in typed.tables():
            assert rows.format == "text"
            temp = _load(conn, rows)
            query = f"SELECT t::text FROM {temp} t"
            loaded.setdefault(rows.name, []).extend(r[0] for r in conn.execute(query))
        expected = dict(typed.expected_rows)
    for name in loaded:
        loaded[name].sort()
    assert expected == {n: len(r) for n, r in loaded.items()} | {
        n: 0 for n in expected if n not in loaded
    }
    return loaded


def _source(url: str, tables: dict[str, str], tenant: str, columns: dict[str, str]) -> Any:
    """The tenant's rows in the source, as sorted text of the same columns."""
    out: dict[str, list[str]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        for name, column in tables.items():
            schema, table = name.split(".")
            query = sql.SQL("SELECT t::text FROM (SELECT {} FROM {}.{} WHERE {} = %s) t").format(
                sql.SQL(columns[name]),
                sql.Identifier(schema),
                sql.Identifier(table),
                sql.Identifier(column),
            )
            out[name] = sorted(r[0] for r in conn.execute(query, (tenant,)))
    return out


def _column_lists(url: str, tables: dict[str, str]) -> dict[str, str]:
    """Each table's non-generated columns, quoted, in order (what pg_dump's COPY lists)."""
    with psycopg.connect(url, autocommit=True) as conn:
        lists = {}
        for name in tables:
            rows = conn.execute(
                "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
                " AND attgenerated = ''",
                (name,),
            ).fetchone()
            assert rows is not None
            lists[name] = str(rows[0])
        return lists


def test_one_tenant_out_of_the_full_backup_is_exactly_its_rows(
    shop_dump: Path, demo_db: DemoDatabase
) -> None:
    tenant = demo_db.tenants[1].id
    got = _extract(shop_dump, demo_db.admin_url, SHOP, tenant.upper())  # normalised by the type
    want = _source(
        demo_db.admin_url, SHOP_TABLES, tenant, _column_lists(demo_db.admin_url, SHOP_TABLES)
    )
    assert set(got) == set(SHOP_TABLES)
    for name in SHOP_TABLES:
        assert got[name] == want[name] and want[name], name
    others = [t.id for t in demo_db.tenants if t.id != tenant]
    assert not any(other in row for rows in got.values() for row in rows for other in others)


def test_partitions_come_under_their_parent_and_text_ids_with_escapes_match(
    own_db: str, tmp_path: Path
) -> None:
    archive = _full_dump(own_db, tmp_path / "own.dump")
    columns = _column_lists(own_db, OWN_TABLES)
    for tenant, events in (("a", 20), ("c\\d\te", 20)):
        got = _extract(archive, own_db, OWN, tenant)
        assert got == _source(own_db, OWN_TABLES, tenant, columns)
        assert len(got["public.accounts"]) == 1 and len(got["public.events"]) == events


def test_a_tenant_the_backup_does_not_hold_is_one_line(
    shop_dump: Path, demo_db: DemoDatabase
) -> None:
    target = ConnInfo.parse(demo_db.admin_url)
    with (
        pytest.raises(TenantNotFound, match="not a valid uuid"),
        dump_tenant_rows(shop_dump, target, SHOP, "not-a-uuid"),
    ):
        pass
    missing = str(uuid.uuid4())
    names: list[str] = []
    with (
        pytest.raises(TenantNotFound, match=missing),
        dump_tenant_rows(shop_dump, target, SHOP, missing) as source,
    ):
        names.extend(rows.name for rows in source.tables())
    assert names == ["public.tenants"]  # refused after the tenant table, before the rest


def test_stopping_early_ends_pg_restore(shop_dump: Path, demo_db: DemoDatabase) -> None:
    target = ConnInfo.parse(demo_db.admin_url)
    tenant = demo_db.tenants[0].id
    with dump_tenant_rows(shop_dump, target, SHOP, tenant.upper()) as source:
        assert source.tenant_id == tenant  # the uuid's own text form, known before any row
        first = next(iter(source.tables()))
        assert first.name == "public.tenants"
        proc = source.proc
    assert proc is not None and proc.poll() is not None


def test_a_damaged_archive_is_one_line_with_pg_restores_reason(
    shop_dump: Path, demo_db: DemoDatabase
) -> None:
    data = shop_dump.read_bytes()
    shop_dump.write_bytes(data[: len(data) * 2 // 3])
    target = ConnInfo.parse(demo_db.admin_url)
    with (
        pytest.raises(RestoreError) as caught,
        dump_tenant_rows(shop_dump, target, SHOP, demo_db.tenants[0].id) as source,
    ):
        for rows in source.tables():
            for _ in rows.chunks:
                pass
    message = str(caught.value)
    assert "pg_restore" in message and "\n" not in message


def test_pre_data_then_one_tenant_then_post_data_make_a_forced_rls_copy(
    own_db: str, empty_db: str, tmp_path: Path
) -> None:
    """Into a new database as a loader does it: the extraction opened while the target is
    still empty, the tables made, the rows staged and inserted (the tenant table's key taken
    from the archive, the target has no keys yet), then indexes, keys and policies."""
    archive = _full_dump(own_db, tmp_path / "own.dump")
    target = ConnInfo.parse(empty_db)
    with (
        dump_tenant_rows(archive, target, OWN, "a") as source,
        psycopg.connect(empty_db, autocommit=False) as conn,
    ):
        create_pre_data(target, archive)
        forced = conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relname IN ('accounts', 'events') ORDER BY 1"
        ).fetchall()
        assert forced == [("accounts", False, True), ("events", False, True)]
        for rows in source.tables():
            identity = any(c.identity == "a" for c in rows.columns)
            columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in rows.columns)
            schema, name = rows.name.split(".")
            temp = _load(conn, rows)
            conn.execute(
                sql.SQL("INSERT INTO {}.{} ({}) {} SELECT {} FROM {}").format(
                    sql.Identifier(schema),
                    sql.Identifier(name),
                    columns,
                    sql.SQL("OVERRIDING SYSTEM VALUE" if identity else ""),
                    columns,
                    sql.SQL(temp),
                )
            )
        conn.commit()
        assert source.expected_rows == {"public.accounts": 1, "public.events": 20}
    create_post_data(target, archive)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        forced = conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relname IN ('accounts', 'events') ORDER BY 1"
        ).fetchall()
        assert forced == [("accounts", True, True), ("events", True, True)]
        policies = conn.execute("SELECT tablename FROM pg_policies ORDER BY 1").fetchall()
        assert policies == [("accounts",), ("events",)]
        keys = conn.execute(
            "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conparentid = 0"
        ).fetchall()
        assert keys == [("events_acct_fkey",)]
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM events),"
            " (SELECT count(DISTINCT acct) FROM events), (SELECT count(*) FROM currencies)"
        ).fetchone()
        assert counts == (1, 20, 1, 0)
    assert _source(empty_db, OWN_TABLES, "a", _column_lists(empty_db, OWN_TABLES)) == _source(
        own_db, OWN_TABLES, "a", _column_lists(own_db, OWN_TABLES)
    )


def test_a_failing_section_is_one_line(own_db: str, tmp_path: Path) -> None:
    archive = _full_dump(own_db, tmp_path / "own.dump")
    with pytest.raises(RestoreError) as caught:
        create_pre_data(ConnInfo.parse(own_db), archive)  # the tables exist already
    message = str(caught.value)
    assert "--section=pre-data" in message and "already exists" in message
    assert "\n" not in message


def test_tenant_rows_of_a_table_the_target_lacks_are_refused_by_name(
    own_db: str, tmp_path: Path
) -> None:
    """A dropped shared table is passed over; a dropped partition's rows would be lost: refused."""
    archive = _full_dump(own_db, tmp_path / "own.dump")
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute("DROP TABLE currencies")
    assert _extract(archive, own_db, OWN, "b")["public.events"]
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute("DROP TABLE events_2025")
    with pytest.raises(RestoreError, match=r"public\.events_2025, which the target does not have"):
        _extract(archive, own_db, OWN, "b")
