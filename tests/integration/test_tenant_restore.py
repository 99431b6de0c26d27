"""One-tenant restore end to end: ``strongroom tenant restore`` against real servers.

Every test compares per-table, per-tenant digests (the rows' text, sorted, hashed) of the
tenant restored and of every other tenant, before and after, read as a superuser.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from clisupport import CLI, Cli, clean_environ, command, ok_json
from dbsupport import owned_database
from psycopg import sql

from strongroom.core.crypto import generate_key
from strongroom.core.postgres import ConnInfo
from strongroom.core.postgres.tenant_export import TenantScope
from strongroom.core.postgres.tenant_load import load_tenant
from strongroom.core.postgres.tenant_rows import TableRows
from strongroom.core.postgres.tenant_write import Staged, TargetTable, insert_orders
from strongroom.core.postgres.tenants import discover
from strongroom.errors import RestoreError, TenantRowsMismatch
from strongroom.sandbox.demo_data import DemoDatabase, url_as
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

#: The demo's tenant tables and the column that says whose a row is.
SHOP = {
    "public.tenants": "id",
    "public.customers": "tenant_id",
    "public.inventory_items": "tenant_id",
    "public.sales": "tenant_id",
    "public.sale_items": "tenant_id",
}
APP_NAME = "strongroom-tenant-restore-test"

Digests = dict[tuple[str, str], tuple[int, str]]


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
        "PGAPPNAME": APP_NAME,
    }


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    return command(env, timeout=300)


def _one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("strongroom: error: "), done.stderr
    return lines[0]


def digests(url: str, tables: dict[str, str] = SHOP) -> Digests:
    """``{(table, tenant): (rows, md5)}``: each tenant's rows of each table, as text, sorted."""
    found: Digests = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        for name, column in tables.items():
            schema, table = name.split(".")
            query = sql.SQL(
                "SELECT {}::text, count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text"
                ' COLLATE "C")) FROM {}.{} t GROUP BY 1'
            ).format(sql.Identifier(column), sql.Identifier(schema), sql.Identifier(table))
            for tenant, rows, digest in conn.execute(query).fetchall():
                found[(name, tenant)] = (rows, digest)
    return found


def _of(found: Digests, tenant: str) -> Digests:
    return {k: v for k, v in found.items() if k[1] == tenant}


def _others(found: Digests, tenant: str) -> Digests:
    return {k: v for k, v in found.items() if k[1] != tenant}


def _damage(url: str, tenant: str) -> None:
    """What an operator restores from: half the inventory gone, rows changed, rows added."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        doomed = (
            "SELECT id FROM inventory_items WHERE tenant_id = %(t)s ORDER BY id"
            " LIMIT (SELECT count(*) / 2 FROM inventory_items WHERE tenant_id = %(t)s)"
        )
        conn.execute(f"DELETE FROM sale_items WHERE item_id IN ({doomed})", {"t": tenant})
        conn.execute(f"DELETE FROM inventory_items WHERE id IN ({doomed})", {"t": tenant})
        conn.execute("UPDATE customers SET name = 'changed' WHERE tenant_id = %s", (tenant,))
        conn.execute("UPDATE tenants SET name = 'Renamed' WHERE id = %s", (tenant,))
        conn.execute("INSERT INTO customers (tenant_id, name) VALUES (%s, 'new')", (tenant,))


def _row_versions(url: str, tenant: str) -> dict[tuple[str, str], str]:
    """(table, key) -> the row version's ``xmin``: a row any statement rewrote has a new one."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        rows = conn.execute(
            "SELECT 'customers', id::text, xmin::text FROM customers WHERE tenant_id = %(t)s"
            " UNION ALL SELECT 'sales', id::text, xmin::text FROM sales WHERE tenant_id = %(t)s"
            " UNION ALL SELECT 'sale_items', id::text, xmin::text FROM sale_items"
            " WHERE tenant_id = %(t)s",
            {"t": tenant},
        ).fetchall()
    return {(str(t), str(k)): str(x) for t, k, x in rows}


def _app_target(demo_db: DemoDatabase) -> str:
    """The app role's URL without its password (that goes in PGPASSWORD)."""
    return url_as(demo_db.admin_url, user="shop_app")


# -- in place ----------------------------------------------------------------------------------


def test_tenant_backup_restored_in_place_as_the_app_role(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase
) -> None:
    tenant = demo_db.tenants[1].id
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    before = digests(demo_db.admin_url)
    _damage(demo_db.admin_url, tenant)
    damaged = digests(demo_db.admin_url)
    assert _of(damaged, tenant) != _of(before, tenant)
    untouched = {
        key: xmin
        for key, xmin in _row_versions(demo_db.admin_url, tenant).items()
        if key[0] != "customers"  # every customer was changed: each is rewritten
    }
    assert untouched
    target, password = _app_target(demo_db), {"PGPASSWORD": demo_db.app_password}

    refused = cli("tenant", "restore", backup["id"], "--target", target, **password)
    line = _one_error_line(refused, 2)
    assert f"tenant {tenant} still has" in line and "add --replace" in line
    assert "in public.inventory_items" in line
    assert digests(demo_db.admin_url) == damaged

    done = cli(
        "tenant", "restore", backup["id"], "--target", target, "--replace", "--json", **password
    )
    report = ok_json(done)
    assert demo_db.app_password not in done.stdout + done.stderr
    assert (report["status"], report["kind"], report["mode"]) == ("RESTORED", "tenant", "in place")
    assert report["tenant_id"] == tenant
    assert {t: v["restored"] for t, v in report["tables"].items()} == {
        name: before[(name, tenant)][0] for name in SHOP
    }
    after = digests(demo_db.admin_url)
    assert _of(after, tenant) == _of(before, tenant)
    assert _others(after, tenant) == _others(before, tenant)
    # only the changes were written: the rows the damage left alone kept their row versions
    now = _row_versions(demo_db.admin_url, tenant)
    assert {key: now.get(key) for key in untouched} == untouched


def test_latest_needs_the_tenant_and_human_output_lists_tables(
    cli: Cli, demo_db: DemoDatabase
) -> None:
    tenant = demo_db.tenants[0].id
    ok_json(cli("tenant", "backup", tenant, "--json"))
    line = _one_error_line(cli("tenant", "restore", "--latest", "--target", demo_db.admin_url), 2)
    assert "--tenant" in line
    before = digests(demo_db.admin_url)
    _damage(demo_db.admin_url, tenant)
    done = cli(
        "tenant", "restore", "--latest", "--tenant", tenant, "--target", demo_db.admin_url,
        "--replace", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"restored tenant {tenant} from tenant backup" in done.stdout
    assert "ok   public.inventory_items" in done.stdout
    assert digests(demo_db.admin_url) == before
    other = demo_db.tenants[1].id
    line = _one_error_line(
        cli("tenant", "restore", "--latest", "--tenant", other, "--target", demo_db.admin_url), 2
    )
    assert other in line and "strongroom tenant backup" in line
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:  # the tenant is gone whole
        conn.execute("DELETE FROM tenants WHERE id = %s", (tenant,))
    (backup_id,) = {b["id"] for b in ok_json(cli("list", "--tenant", tenant, "--json"))}
    wrong = cli("tenant", "restore", backup_id, "--tenant", other, "--target", demo_db.admin_url)
    assert f"tenant {tenant}'s, not {other}'s" in _one_error_line(wrong, 2)
    done = cli("tenant", "restore", backup_id, "--target", demo_db.admin_url, "--json")
    assert ok_json(done)["status"] == "RESTORED"  # nothing left to replace: no --replace needed
    assert digests(demo_db.admin_url) == before


def test_changes_that_trip_a_constraint_fall_back_to_every_row(
    cli: Cli, demo_db: DemoDatabase
) -> None:
    """Two items swapped their skus and a sale line moved to a new item: written row by row,
    the first update would break the unique sku and the new item's delete its reference."""
    tenant = demo_db.tenants[0].id
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    before = digests(demo_db.admin_url)
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        (a, sku_a), (b, sku_b) = conn.execute(
            "SELECT id, sku FROM inventory_items WHERE tenant_id = %s ORDER BY id LIMIT 2",
            (tenant,),
        ).fetchall()
        conn.execute("UPDATE inventory_items SET sku = 'swap' WHERE id = %s", (a,))
        conn.execute("UPDATE inventory_items SET sku = %s WHERE id = %s", (sku_a, b))
        conn.execute("UPDATE inventory_items SET sku = %s WHERE id = %s", (sku_b, a))
        (new,) = conn.execute(
            "INSERT INTO inventory_items (tenant_id, sku, name, weight_grams, cost_price,"
            " sale_price) VALUES (%s, 'new', 'New', 1, 1, 1) RETURNING id",
            (tenant,),
        ).fetchone() or (None,)
        conn.execute(
            "UPDATE sale_items SET item_id = %s WHERE id ="
            " (SELECT id FROM sale_items WHERE tenant_id = %s ORDER BY id LIMIT 1)",
            (new, tenant),
        )
    done = cli("-v", "tenant", "restore", backup["id"], "--target", demo_db.admin_url, "--replace")
    assert done.returncode == 0, done.stderr
    assert "writing every row" in done.stderr
    assert digests(demo_db.admin_url) == before


def test_a_trigger_that_rewrites_updated_rows_is_caught_and_every_row_written(
    cli: Cli, demo_db: DemoDatabase
) -> None:
    """Writes to a table with a trigger are proven row by row, not by their counts: the
    updated customers come out upper-cased, so the changes are undone and every row written."""
    tenant = demo_db.tenants[1].id
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    before = digests(demo_db.admin_url)
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER shout BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION shout()"
        )
    _damage(demo_db.admin_url, tenant)
    done = cli("-v", "tenant", "restore", backup["id"], "--target", demo_db.admin_url, "--replace")
    assert done.returncode == 0, done.stderr
    assert "public.customers" in done.stderr and "writing every row" in done.stderr
    assert digests(demo_db.admin_url) == before


def test_a_policy_that_forbids_updates_and_deletes_is_not_a_silent_no_op(
    cli: Cli, demo_db: DemoDatabase
) -> None:
    """Under RLS an UPDATE or DELETE that no policy allows changes no row and raises nothing:
    the restore must notice, not report success over the tenant's changed rows."""
    tenant = demo_db.tenants[2].id
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    _damage(demo_db.admin_url, tenant)
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        own = "tenant_id = NULLIF(current_setting('app.current_tenant', true), '')::uuid"
        conn.execute("DROP POLICY tenant_isolation ON customers")
        conn.execute(f"CREATE POLICY reads ON customers FOR SELECT USING ({own})")
        conn.execute(f"CREATE POLICY adds ON customers FOR INSERT WITH CHECK ({own})")
    damaged = digests(demo_db.admin_url)
    done = cli(
        "tenant", "restore", backup["id"], "--target", _app_target(demo_db), "--replace",
        PGPASSWORD=demo_db.app_password,
    )  # fmt: skip
    line = _one_error_line(done, 1)
    assert "in public.customers could not be deleted" in line and "nothing was changed" in line
    assert digests(demo_db.admin_url) == damaged


def test_schema_drift_is_refused_naming_table_and_column(cli: Cli, demo_db: DemoDatabase) -> None:
    tenant = demo_db.tenants[0].id
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    _damage(demo_db.admin_url, tenant)
    restore = ("tenant", "restore", backup["id"], "--target", demo_db.admin_url, "--replace")
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE customers ALTER COLUMN loyalty_points TYPE bigint")
    damaged = digests(demo_db.admin_url)
    line = _one_error_line(cli(*restore), 13)
    assert "public.customers.loyalty_points is integer in the backup but bigint" in line
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE customers ALTER COLUMN loyalty_points TYPE integer")
        conn.execute("ALTER TABLE sales DROP COLUMN notes")
    line = _one_error_line(cli(*restore), 13)
    assert "column public.sales.notes (text) of the backup is missing on the target" in line
    after = digests(demo_db.admin_url)
    assert {k: v for k, v in after.items() if k[0] != "public.sales"} == {
        k: v for k, v in damaged.items() if k[0] != "public.sales"
    }
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in damaged.items()}


@dataclass
class _Rows:
    """A hand-made source: what a broken or hostile backup could hold."""

    tenant_id: str
    expected_rows: dict[str, int]
    parts: list[TableRows] = field(default_factory=list)

    def tables(self) -> Iterator[TableRows]:
        yield from self.parts


def _copy_out(url: str, name: str, columns: list[str], where: str, tenant: str) -> bytes:
    schema, table = name.split(".")
    query = sql.SQL("COPY (SELECT {} FROM {}.{} WHERE {} = {}) TO STDOUT (FORMAT binary)").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(schema),
        sql.Identifier(table),
        sql.Identifier(where),
        sql.Literal(tenant),
    )
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor().copy(query) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def test_the_loader_refuses_another_tenants_row_and_a_short_source(demo_db: DemoDatabase) -> None:
    mine, theirs = demo_db.tenants[0].id, demo_db.tenants[1].id
    url = demo_db.admin_url
    with psycopg.connect(url, autocommit=True) as conn:
        model = discover(conn, "tenants", "tenant_id")
    before = digests(url)

    def source(extra_customers_of: str | None, *, short: bool = False) -> _Rows:
        rows = _Rows(mine, {n: before[(n, mine)][0] for n in SHOP})
        for t in model.tables:
            cols = [c.name for c in t.columns]
            data = _copy_out(url, str(t.ref), cols, t.filter_column, mine)
            rows.parts.append(TableRows(str(t.ref), t.columns, "binary", iter([data])))
            if str(t.ref) == "public.customers" and extra_customers_of:  # a second part: appended
                more = _copy_out(url, str(t.ref), cols, t.filter_column, extra_customers_of)
                rows.parts.append(TableRows(str(t.ref), t.columns, "binary", iter([more])))
                rows.expected_rows[str(t.ref)] += before[(str(t.ref), extra_customers_of)][0]
        if short:
            rows.expected_rows["public.sales"] += 1
        return rows

    target = ConnInfo.parse(url)
    with pytest.raises(RestoreError, match=f"rows of another tenant than {mine}"):
        load_tenant(target, TenantScope(), source(theirs), replace=True)
    with pytest.raises(TenantRowsMismatch, match=r"public\.sales: \d+ read, \d+ expected"):
        load_tenant(target, TenantScope(), source(None, short=True), replace=True)
    assert digests(url) == before
    good = source(None)  # read before the damage: the backup of the tenant as it was
    _damage(url, mine)
    restored = load_tenant(target, TenantScope(), good, replace=True)
    assert restored == {n: before[(n, mine)][0] for n in SHOP}
    assert digests(url) == before


def _insert_orders(url: str, table: str, column: str) -> dict[str, tuple[str, ...]]:
    """What the loader would sort each table's inserted rows by, on the schema at ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        model = discover(conn, table, column)
        staged = [
            Staged(
                TargetTable(t.ref, t.oid, t.filter_column, {c.name: c for c in t.columns},
                            t.partitioned, t.ref == model.tenant_table),
                t.ref.ident(),
                tuple(c.name for c in t.columns),
            )
            for t in model.tables
        ]  # fmt: skip
        keys = {
            int(oid): tuple(cols)
            for oid, cols in conn.execute(
                "SELECT indrelid::int, array_agg(a.attname::text ORDER BY a.attnum) FROM pg_index"
                " JOIN pg_attribute a ON a.attrelid = indrelid AND a.attnum = ANY(indkey)"
                " WHERE indisprimary GROUP BY indrelid"
            ).fetchall()
        }
        by_oid = insert_orders(conn, staged, keys)
        sizes = dict(
            conn.execute(
                "SELECT relname::text, pg_relation_size(oid) FROM pg_class WHERE relname IN"
                " ('sales_pkey', 'inventory_items_pkey')"
            ).fetchall()
        )
    orders = {str(s.table.ref): by_oid[s.table.oid] for s in staged if s.table.oid in by_oid}
    orders["(largest parent of sale_items)"] = (
        ("sale_id",) if sizes.get("sales_pkey", 0) > sizes.get("inventory_items_pkey", 0)
        else ("item_id",)
    )  # fmt: skip
    return orders


def test_rows_are_inserted_in_the_order_of_their_largest_parents_key(
    demo_db: DemoDatabase, own_db: tuple[str, str]
) -> None:
    """Sorted by the key into the largest parent other than the tenant table (whose key is the
    same in every row), else by the table's own key; the tenant table's one row: unsorted."""
    demo = _insert_orders(demo_db.admin_url, "tenants", "tenant_id")
    assert demo.pop("public.sale_items") == demo.pop("(largest parent of sale_items)")
    assert demo == {
        "public.customers": ("id",),
        "public.inventory_items": ("id",),
        "public.sales": ("customer_id",),
    }
    own = _insert_orders(own_db[0], "accounts", "acct")
    own.pop("(largest parent of sale_items)")
    assert own == {"public.events": ("id", "at"), "public.notes": ("n",)}


# -- a schema of its own: another tenant column, a partitioned table, an identity key ---------

_OWN_SCHEMA = """
CREATE TABLE accounts (account_key text PRIMARY KEY, name text NOT NULL);
CREATE TABLE currencies (code text PRIMARY KEY);
CREATE TABLE events (
    id    bigint GENERATED ALWAYS AS IDENTITY,
    acct  text NOT NULL REFERENCES accounts,
    at    date NOT NULL,
    tags  text[],
    doc   jsonb,
    big   text,
    size  integer GENERATED ALWAYS AS (length(big)) STORED,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE notes (
    n     serial PRIMARY KEY,
    acct  text NOT NULL REFERENCES accounts,
    body  text
);
INSERT INTO accounts VALUES ('a', 'Alpha'), ('b', 'Beta');
INSERT INTO currencies VALUES ('EUR');
INSERT INTO events (acct, at, tags, doc, big)
SELECT CASE WHEN g % 3 = 0 THEN 'b' ELSE 'a' END, date '2024-06-01' + g * 7,
       ARRAY['x' || g, NULL], jsonb_build_object('g', g),
       CASE WHEN g = 1 THEN (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 9000) i)
            ELSE 'short ' || g END
FROM generate_series(1, 60) g;
INSERT INTO notes (acct, body) SELECT CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, 'note ' || g
FROM generate_series(1, 20) g;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY own ON accounts USING (account_key = current_setting('app.acct', true));
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY own ON events USING (acct = current_setting('app.acct', true));
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY own ON notes USING (acct = current_setting('app.acct', true));
"""
OWN = {"public.accounts": "account_key", "public.events": "acct", "public.notes": "acct"}
OWN_SETTINGS = {
    "STRONGROOM_TENANT_TABLE": "accounts",
    "STRONGROOM_TENANT_COLUMN": "acct",
    "STRONGROOM_TENANT_SETTING": "app.acct",
}


@pytest.fixture
def own_db(pg_cluster: PgCluster) -> Iterator[tuple[str, str]]:
    """A database of the schema above, owned by a role of its own: (URL, owner)."""
    with owned_database(pg_cluster, _OWN_SCHEMA) as made:
        yield made


def _sequences(url: str) -> dict[str, int | None]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_sequence_last_value(c.oid) FROM pg_class c WHERE c.relkind = 'S'"
        ).fetchall()
    return {str(r[0]): r[1] for r in rows}


def test_own_schema_partitions_identity_and_sequences(
    cli: Cli, own_db: tuple[str, str], new_db: Callable[[], str]
) -> None:
    url, _ = own_db
    settings = {**OWN_SETTINGS, "DATABASE_URL": url}
    backup = ok_json(cli("tenant", "backup", "a", "--json", **settings))
    before = digests(url, OWN)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM events WHERE acct = 'a' AND at >= '2025-01-01'")
        conn.execute("UPDATE events SET doc = '{}' WHERE acct = 'a'")
        conn.execute(
            "INSERT INTO events (acct, at) VALUES ('a', '2024-02-02'), ('b', '2025-03-03')"
        )
        conn.execute("DELETE FROM notes WHERE acct = 'a'")
        conn.execute("UPDATE accounts SET name = 'Renamed' WHERE account_key = 'a'")
    others = _others(digests(url, OWN), "a")
    moved = _sequences(url)
    report = ok_json(
        cli("tenant", "restore", backup["id"], "--target", url, "--replace", "--json", **settings)
    )
    assert report["tables"]["public.events"] == {"expected": 40, "restored": 40}
    after = digests(url, OWN)
    assert _of(after, "a") == _of(before, "a")
    assert _others(after, "a") == others
    assert _sequences(url) == moved  # ahead of every restored value already: not moved back

    # a sequence behind the restored values (reset by hand) is moved past them
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SEQUENCE notes_n_seq RESTART WITH 1")
        conn.execute("ALTER TABLE events ALTER COLUMN id RESTART WITH 1")
    ok_json(
        cli("tenant", "restore", backup["id"], "--target", url, "--replace", "--json", **settings)
    )
    with psycopg.connect(url, autocommit=True) as conn:
        for table, column, seq in (
            ("notes", "n", "notes_n_seq"),
            ("events", "id", "events_id_seq"),
        ):
            top = conn.execute(
                sql.SQL("SELECT max({}) FROM {} WHERE acct = 'a'").format(
                    sql.Identifier(column), sql.Identifier(table)
                )
            ).fetchone()
            last = conn.execute("SELECT pg_sequence_last_value(%s::regclass)", (seq,)).fetchone()
            assert top and last and last[0] is not None and last[0] >= top[0], (table, last, top)
        conn.execute("INSERT INTO events (acct, at) VALUES ('b', '2025-05-05')")  # no collision

    # into a new database: the tables, the rows straight in, then keys; sequences past the rows
    url_new = new_db()
    report = ok_json(
        cli("tenant", "restore", backup["id"], "--target", url_new, "--json", **settings)
    )
    assert report["mode"] == "new database"
    assert digests(url_new, OWN) == _of(before, "a")
    with psycopg.connect(url_new, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts VALUES ('c', 'Gamma')")
        conn.execute("INSERT INTO events (acct, at) VALUES ('c', '2024-03-03')")
        conn.execute("INSERT INTO notes (acct) VALUES ('c')")


# -- other tenants keep working; a killed restore changes nothing ------------------------------


def _grow(url: str, tenant: str, rows: int) -> None:
    """Make ``tenant`` big enough that its restore takes a while (server-side, fast)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        conn.execute(
            "INSERT INTO inventory_items (tenant_id, sku, name, weight_grams, cost_price,"
            " sale_price, quantity, attributes)"
            " SELECT %s, 'bulk-' || g, 'Bulk ring ' || g, 1.5, 10, 20, g %% 7,"
            " jsonb_build_object('g', g, 'tag', md5(g::text))"
            " FROM generate_series(1, %s) g",
            (tenant, rows),
        )


def _restore_backend(conn: psycopg.Connection[Any], dbname: str) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT state, query FROM pg_stat_activity WHERE application_name = %s"
        " AND datname = %s AND xact_start IS NOT NULL",
        (APP_NAME, dbname),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def test_another_tenant_keeps_committing_during_the_restore(
    cli: Cli, demo_db: DemoDatabase
) -> None:
    tenant, other = demo_db.tenants[0].id, demo_db.tenants[2].id
    _grow(demo_db.admin_url, tenant, 150_000)
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    before = digests(demo_db.admin_url)
    _damage(demo_db.admin_url, tenant)
    stop, commits, errors, window = threading.Event(), [], [], []

    def writer() -> None:
        with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '300ms'")
            while not stop.is_set():
                try:
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO customers (tenant_id, name) VALUES (%s, 'writer')",
                            (other,),
                        )
                        conn.execute(
                            "UPDATE inventory_items SET quantity = quantity + 1 WHERE id ="
                            " (SELECT id FROM inventory_items WHERE tenant_id = %s LIMIT 1)",
                            (other,),
                        )
                    commits.append(time.monotonic())
                except psycopg.Error as exc:
                    errors.append(str(exc))
                time.sleep(0.005)

    def watcher() -> None:
        with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
            while not stop.is_set():
                if _restore_backend(conn, demo_db.name):
                    window.append(time.monotonic())
                time.sleep(0.01)

    threads = [threading.Thread(target=writer), threading.Thread(target=watcher)]
    for thread in threads:
        thread.start()
    try:
        done = cli(
            "tenant", "restore", backup["id"], "--target", demo_db.admin_url, "--replace", "--json"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert ok_json(done)["status"] == "RESTORED"
    assert errors == []
    assert window and window[-1] - window[0] > 0.3, "the restore was too quick to tell"
    during = [t for t in commits if window[0] < t < window[-1]]
    assert len(during) >= 5, (len(during), window[-1] - window[0])
    after = digests(demo_db.admin_url)
    assert _of(after, tenant) == _of(before, tenant)


def test_sigkill_mid_load_leaves_the_tenant_as_it_was(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase
) -> None:
    tenant = demo_db.tenants[1].id
    _grow(demo_db.admin_url, tenant, 150_000)
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    _damage(demo_db.admin_url, tenant)
    damaged = digests(demo_db.admin_url)
    argv = [str(CLI), "tenant", "restore", backup["id"], "--target", demo_db.admin_url, "--replace"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = None
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _restore_backend(conn, demo_db.name)
            if seen and seen[1].startswith(("COPY", "INSERT", "DELETE")):
                break
            time.sleep(0.01)
        assert seen and proc.poll() is None, "the restore finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        while time.monotonic() < deadline and _restore_backend(conn, demo_db.name):
            time.sleep(0.05)
        assert _restore_backend(conn, demo_db.name) is None
    assert digests(demo_db.admin_url) == damaged


# -- a corrupt copy: refused before any row, the next location used ---------------------------


def test_a_corrupt_copy_is_refused_and_the_next_location_used(
    cli: Cli, env: dict[str, str], demo_db: DemoDatabase, seaweed: SeaweedServer
) -> None:
    prefix = f"tr-{uuid.uuid4().hex[:10]}"
    cloud = {
        **seaweed.settings("r2", "r2-backups"),
        "R2_PREFIX": prefix,
        "R2_MAX_ATTEMPTS": "2",
        "STRONGROOM_LOCATIONS": "local,r2",
    }
    tenant = demo_db.tenants[2].id
    backup = ok_json(cli("tenant", "backup", tenant, "--json", **cloud))
    before = digests(demo_db.admin_url)
    _damage(demo_db.admin_url, tenant)
    damaged = digests(demo_db.admin_url)
    local = next(c for c in backup["copies"] if c["location"] == "local")
    stored = Path(env["BACKUP_LOCAL_PATH"]) / local["key"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    restore = ("tenant", "restore", backup["id"], "--target", demo_db.admin_url, "--replace")

    refused = cli(*restore, "--from", "local", **cloud)
    assert refused.returncode == 1, refused.stderr
    line = refused.stderr.splitlines()[-1]
    assert line.startswith("strongroom: error: no intact copy") and "local: " in line
    assert digests(demo_db.admin_url) == damaged

    report = ok_json(cli(*restore, "--json", **cloud))
    assert report["source"] == "r2" and report["skipped"][0].startswith("local: ")
    assert digests(demo_db.admin_url) == before


# -- a full backup's night; a new database --------------------------------------------------


@pytest.fixture
def new_db(pg_cluster: PgCluster) -> Iterator[Callable[[], str]]:
    """``new_db()``: the superuser URL of an unused database name (dropped afterwards)."""
    names: list[str] = []

    def make() -> str:
        names.append(f"export_{uuid.uuid4().hex[:10]}")
        return pg_cluster.url(names[-1])

    yield make
    for name in names:
        pg_cluster.drop_database(name)


def test_a_tenant_rolled_back_to_a_full_backups_night(cli: Cli, demo_db: DemoDatabase) -> None:
    tenant = demo_db.tenants[2].id
    full = ok_json(cli("backup", "--json"))
    before = digests(demo_db.admin_url)
    _damage(demo_db.admin_url, tenant)
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:  # another tenant moves on
        conn.execute(
            "UPDATE customers SET name = 'later' WHERE tenant_id = %s", (demo_db.tenants[0].id,)
        )
    others = _others(digests(demo_db.admin_url), tenant)
    restore = ("tenant", "restore", full["id"], "--target", demo_db.admin_url, "--replace")
    line = _one_error_line(cli(*restore), 2)
    assert "full backup" in line and "--tenant" in line
    report = ok_json(cli(*restore, "--tenant", tenant.upper(), "--json"))
    assert (report["kind"], report["tenant_id"], report["status"]) == ("full", tenant, "RESTORED")
    assert (
        report["tables"]["public.sale_items"]["restored"]
        == before[("public.sale_items", tenant)][0]
    )
    after = digests(demo_db.admin_url)
    assert _of(after, tenant) == _of(before, tenant)
    assert _others(after, tenant) == others


def test_export_into_new_databases_holds_exactly_one_tenant(
    cli: Cli, demo_db: DemoDatabase, new_db: Callable[[], str]
) -> None:
    tenant = demo_db.tenants[1].id
    backup = ok_json(cli("tenant", "backup", tenant, "--json"))
    full = ok_json(cli("backup", "--json"))
    expected = _of(digests(demo_db.admin_url), tenant)
    for source, extra in ((backup["id"], ()), (full["id"], ("--tenant", tenant.upper()))):
        url = new_db()
        report = ok_json(cli("tenant", "restore", source, "--target", url, *extra, "--json"))
        assert (report["mode"], report["status"]) == ("new database", "RESTORED"), source
        assert report["tenant_id"] == tenant
        assert digests(url) == expected, source
        with psycopg.connect(url, autocommit=True) as conn:
            policies = conn.execute("SELECT count(*) FROM pg_policies").fetchone()
            keys = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()
        assert policies == (5,) and keys == (7,), source  # RLS and foreign keys came along
