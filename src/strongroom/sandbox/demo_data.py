"""The seed's multi-tenant jewelry shop, installed and filled with realistic data, fast.

Everything is generated server-side (``INSERT ... SELECT generate_series``) by the application
role itself, one tenant at a time under ``app.current_tenant``: RLS is forced, so this is also a
continuous check that the schema lets the app write its own tenant's rows. Primary keys are
``md5(<tenant>:<batch>:<kind><n>)::uuid`` so children can reference parents without lookups.

The data is meant to look like a shop's to a compressor: names, e-mails and notes drawn from
small vocabularies (compressible, not constant), random phone numbers and prices (not), jsonb
attributes, some NULLs, and a few incompressible "JPEG" photos.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from strongroom.errors import PostgresError

APP_ROLE = "shop_app"
TABLES = ("tenants", "customers", "inventory_items", "sales", "sale_items")

Conn = psycopg.Connection[tuple[Any, ...]]


def schema_sql() -> str:
    """The DDL of ``demo_schema.sql`` (tables, indexes, RLS and policies; no roles)."""
    return resources.files("strongroom.sandbox").joinpath("demo_schema.sql").read_text("utf-8")


def url_as(
    url: str, *, user: str | None = None, password: str | None = None, dbname: str | None = None
) -> str:
    """``url`` (URL or conninfo) with another user, password or database, as a postgresql:// URL."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    if user is not None:
        params["user"] = user
        params.pop("password", None)
    if password is not None:
        params["password"] = password
    if dbname is not None:
        params["dbname"] = dbname
    db = quote(params.pop("dbname", ""), safe="")
    auth = quote(params.pop("user", ""), safe="")
    if "password" in params:
        auth += ":" + quote(params.pop("password"), safe="")
    host = params.pop("host", "")
    port = params.pop("port", "")
    netloc = (auth + "@" if auth else "") + (f"[{host}]" if ":" in host else host)
    netloc += f":{port}" if port else ""
    query = urlencode(params)
    return f"postgresql://{netloc}/{db}" + (f"?{query}" if query else "")


def install_schema(admin_url: str, dbname: str, app_password: str, *, role: str = APP_ROLE) -> str:
    """Create the app role (if absent) and the database it owns, then its tables, as that role.

    ``admin_url`` must be a superuser. Returns the app role's URL for ``dbname``.
    """
    role_sql = sql.SQL("LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}").format(
        sql.Literal(app_password)
    )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} ").format(sql.Identifier(role)) + role_sql)
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(role)
                )
            )
    app_url = url_as(admin_url, user=role, password=app_password, dbname=dbname)
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute(schema_sql().encode())
    return app_url


def new_app_password() -> str:
    """A fresh random password for the demo's app role (never a fixed secret)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Tenant:
    id: str
    slug: str
    name: str


@dataclass(frozen=True)
class DemoDatabase:
    """A demo database: superuser and app-role URLs to it, and the tenants it holds."""

    name: str
    admin_url: str
    app_url: str
    app_password: str
    tenants: tuple[Tenant, ...]


def create_demo_database(
    admin_url: str,
    name: str,
    *,
    app_password: str | None = None,
    **sizes: int,
) -> DemoDatabase:
    """Install the schema in a new database ``name`` and populate it (``sizes``: see populate)."""
    password = app_password or new_app_password()
    app_url = install_schema(admin_url, name, password)
    tenants = populate(app_url, **sizes)
    return DemoDatabase(
        name=name,
        admin_url=url_as(admin_url, dbname=name),
        app_url=app_url,
        app_password=password,
        tenants=tuple(tenants),
    )


# -- data ------------------------------------------------------------------------------------

_SHOP_NAMES = (
    "Golden Crown Jewelers", "Nile Pearl", "Cairo Gold House", "Silver Moon Atelier",
    "Royal Karat", "Desert Rose Gems", "Alexandria Fine Jewelry", "Luxor Goldsmiths",
    "Sapphire & Sons", "The Diamond Loft", "Aurora Bijoux", "Emerald Bay Jewels",
)  # fmt: skip
_PLANS = ("basic", "professional", "professional", "enterprise")

_CUSTOMERS_SQL = """
INSERT INTO customers (id, tenant_id, name, email, phone, loyalty_points, created_at)
SELECT md5(%(pre)s::text || 'c' || i)::uuid, %(tid)s::uuid,
       f || ' ' || l,
       CASE WHEN i %% 9 = 0 THEN NULL
            ELSE lower(f) || '.' || lower(l) || i || '@'
                 || (ARRAY['gmail.com', 'yahoo.com', 'outlook.com', 'hotmail.com',
                           'icloud.com'])[1 + i %% 5]
       END,
       CASE WHEN i %% 7 = 0 THEN NULL
            ELSE '+20 1' || (i %% 3) || ' ' || lpad(floor(random() * 1e8)::bigint::text, 8, '0')
       END,
       floor(random() * random() * 5000)::int,
       timestamptz '2021-01-01' + random() * interval '1000 days'
FROM (
    SELECT i,
           (ARRAY['Amira','Youssef','Layla','Omar','Nour','Karim','Salma','Hassan','Mariam','Ali',
                  'Fatma','Mostafa','Hana','Tarek','Yasmin','Ahmed','Dina','Khaled','Rania','Sara',
                  'John','Emma','Lucas','Sofia','Noah','Mia','Adam','Lina','Ziad','Farida']
           )[1 + floor(random() * 30)::int] AS f,
           (ARRAY['Hassan','Mahmoud','Ibrahim','Saleh','Farouk','Nasser','Youssef','Kamal','Fahmy',
                  'Mansour','Said','Gamal','Adel','Zaki','Hamdy','Smith','Garcia','Müller','Rossi',
                  'Dubois','Haddad','Khalil','Aziz','Badawi','Sharif']
           )[1 + floor(random() * 25)::int] AS l
    FROM generate_series(1::bigint, %(n)s::bigint) AS i
) AS s
"""

_ITEMS_SQL = """
INSERT INTO inventory_items (id, tenant_id, sku, name, karat, weight_grams, cost_price,
                             sale_price, quantity, attributes, photo, created_at)
SELECT md5(%(pre)s::text || 'i' || i)::uuid, %(tid)s::uuid,
       upper(left(kind, 3)) || '-' || %(batch)s::text || '-' || lpad(i::text, 6, '0'),
       metal || ' ' || kind || ' ' || style || coalesce(' with ' || stone, ''),
       CASE metal WHEN 'Gold' THEN (ARRAY[14, 18, 21, 21, 22, 24])[1 + i %% 6]
                  WHEN 'Rose Gold' THEN 18 WHEN 'White Gold' THEN 18 END,
       round(w, 3),
       round(w * rate * (0.9 + random() * 0.2)::numeric, 2),
       round(w * rate * (1.25 + random() * 0.6)::numeric, 2),
       CASE WHEN i %% 13 = 0 THEN 0 ELSE 1 + floor(random() * random() * 40)::int END,
       jsonb_strip_nulls(jsonb_build_object(
           'stone', stone,
           'size', CASE kind WHEN 'Ring' THEN to_jsonb(4 + i %% 10)
                             WHEN 'Bracelet' THEN to_jsonb(16 + i %% 6) END,
           'finish', (ARRAY['polished', 'matte', 'brushed', 'hammered'])[1 + i %% 4],
           'hallmarked', i %% 3 <> 0,
           'supplier', 'Supplier ' || (1 + i %% 40),
           'tags', jsonb_build_array(lower(kind), lower(metal), lower(style))
       )),
       CASE WHEN i %% 250 = 1 THEN
           '\\xffd8ffe000104a464946'::bytea
           || (SELECT decode(string_agg(md5(random()::text || g::text), ''), 'hex')
               FROM generate_series(1, 64 + i %% 64) AS g)
       END,
       timestamptz '2020-06-01' + random() * interval '1200 days'
FROM (
    SELECT i, metal, kind, style, (0.4 + random() * random() * 60)::numeric AS w,
           CASE metal WHEN 'Silver' THEN 1.2 ELSE 62 END AS rate,
           CASE WHEN random() < 0.45 THEN NULL
                ELSE (ARRAY['Diamond','Ruby','Emerald','Sapphire','Pearl','Topaz','Opal'])
                     [1 + floor(random() * 7)::int] END AS stone
    FROM (
        SELECT i,
               (ARRAY['Gold','Gold','Gold','White Gold','Rose Gold','Silver'])[1 + i %% 6] AS metal,
               (ARRAY['Ring','Necklace','Bracelet','Earrings','Pendant','Anklet','Brooch','Chain'])
               [1 + floor(random() * 8)::int] AS kind,
               (ARRAY['Classic','Vintage','Modern','Pharaonic','Minimal','Twisted','Filigree'])
               [1 + floor(random() * 7)::int] AS style
        FROM generate_series(1::bigint, %(n)s::bigint) AS i
    ) AS a
) AS s
"""

# A sale has 1-3 lines; line prices are a function of (sale, line) so the sale's total can be
# computed in the same pass as the lines, without an UPDATE.
_LINE_QTY = "(1 + (s + l) %% 2)"
_LINE_PRICE = "(((s * 7919 + l * 104729) %% 250000) / 100.0 + 49.99)"

_SALES_SQL = f"""
INSERT INTO sales (id, tenant_id, customer_id, sold_at, total, status, notes)
SELECT md5(%(pre)s::text || 's' || s)::uuid, %(tid)s::uuid,
       CASE WHEN s %% 10 = 0 THEN NULL
            ELSE md5(%(pre)s::text || 'c' || (1 + (s * 7919) %% %(customers)s::bigint))::uuid END,
       timestamptz '2022-01-01' + (s::float8 / %(n)s::bigint) * interval '700 days'
           + random() * interval '10 hours',
       (SELECT sum({_LINE_QTY} * {_LINE_PRICE}) FROM generate_series(1, 1 + s %% 3) AS l),
       CASE WHEN r < 0.85 THEN 'completed' WHEN r < 0.92 THEN 'refunded'
            WHEN r < 0.97 THEN 'pending' ELSE 'cancelled' END,
       CASE WHEN random() < 0.45 THEN NULL
            ELSE (ARRAY['Gift wrapped', 'Engraving requested', 'Resized before pickup',
                        'Paid in three installments', 'Old gold traded in',
                        'Wedding set, matching bands', 'Anniversary gift', 'Repair collected',
                        'Price matched', 'Delivered to hotel'])[1 + floor(random() * 10)::int]
                 || '. ' || (ARRAY['Receipt e-mailed.', 'Customer called to confirm.',
                                   'Certificate included.', 'Follow up in 30 days.', ''])
                            [1 + floor(random() * 5)::int]
       END
FROM (SELECT s, random() AS r FROM generate_series(1::bigint, %(n)s::bigint) AS s) AS x
"""

_SALE_ITEMS_SQL = f"""
INSERT INTO sale_items (id, tenant_id, sale_id, item_id, quantity, unit_price)
SELECT md5(%(pre)s::text || 'l' || s || ':' || l)::uuid, %(tid)s::uuid,
       md5(%(pre)s::text || 's' || s)::uuid,
       md5(%(pre)s::text || 'i' || (1 + (s * 31 + l * 7919) %% %(items)s::bigint))::uuid,
       {_LINE_QTY}, {_LINE_PRICE}
FROM generate_series(1::bigint, %(n)s::bigint) AS s, generate_series(1, 1 + s %% 3) AS l
"""


def _set_tenant(conn: Conn, tenant_id: str) -> None:
    conn.execute("SELECT set_config('app.current_tenant', %s, false)", (tenant_id,))


def _create_tenant(conn: Conn, index: int) -> Tenant:
    name = _SHOP_NAMES[index % len(_SHOP_NAMES)]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + "-" + secrets.token_hex(3)
    tenant = Tenant(str(uuid.uuid4()), slug, name)
    _set_tenant(conn, tenant.id)  # FORCEd RLS: even the new row must be "ours" to be inserted
    conn.execute(
        "INSERT INTO tenants (id, name, slug, plan, created_at, settings) VALUES "
        "(%s, %s, %s, %s, timestamptz '2020-01-01' + random() * interval '1500 days', %s)",
        (
            tenant.id,
            name,
            slug,
            _PLANS[index % len(_PLANS)],
            Jsonb(
                {
                    "currency": "EGP",
                    "timezone": "Africa/Cairo",
                    "gold_price_source": "manual" if index % 2 else "feed",
                    "invoice_footer": f"Thank you for shopping at {name}!",
                }
            ),
        ),
    )
    return tenant


def add_batch(conn: Conn, tenant: Tenant, *, customers: int, items: int, sales: int) -> None:
    """One transaction adding a self-contained batch of rows to one tenant."""
    batch = secrets.token_hex(4)
    base = {"tid": tenant.id, "pre": f"{tenant.id}:{batch}:", "batch": batch}
    with conn.transaction():
        _set_tenant(conn, tenant.id)
        conn.execute(_CUSTOMERS_SQL, {**base, "n": max(customers, 1)})
        conn.execute(_ITEMS_SQL, {**base, "n": max(items, 1)})
        if sales > 0:
            counts = {"customers": max(customers, 1), "items": max(items, 1)}
            conn.execute(_SALES_SQL, {**base, **counts, "n": sales})
            conn.execute(_SALE_ITEMS_SQL, {**base, **counts, "n": sales})


def populate(
    app_url: str,
    *,
    tenants: int = 5,
    customers_per_tenant: int = 40,
    items_per_tenant: int = 60,
    sales_per_tenant: int = 100,
) -> list[Tenant]:
    """Create ``tenants`` new tenants with their customers, inventory and sales, as the app role."""
    created: list[Tenant] = []
    with psycopg.connect(app_url, autocommit=True) as conn:
        for index in range(tenants):
            with conn.transaction():
                tenant = _create_tenant(conn, index)
            add_batch(
                conn,
                tenant,
                customers=customers_per_tenant,
                items=items_per_tenant,
                sales=sales_per_tenant,
            )
            created.append(tenant)
        conn.execute("RESET app.current_tenant")
    return created


def database_size(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def populate_to_size(
    app_url: str,
    target_bytes: int,
    *,
    tenants: int = 5,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Add tenants, then rounds of batches to them, until the database is ``target_bytes``.

    A round adds about 13 MB per tenant, ``workers`` tenants at a time on their own connections;
    the last round is scaled down so the result overshoots the target by little. Returns the
    final ``pg_database_size``.
    """
    customers, items, sales = 2_000, 4_000, 20_000
    created = populate(app_url, tenants=tenants, customers_per_tenant=100, items_per_tenant=100,
                       sales_per_tenant=100)  # fmt: skip
    workers = max(1, min(workers, len(created)))
    conns = [psycopg.connect(app_url, autocommit=True) for _ in range(workers)]
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            size, last_round = _size(conns[0]), 0
            while True:
                if progress:
                    progress(size)
                if size >= target_bytes:
                    break
                scale = 1.0
                if 0 < target_bytes - size < last_round:
                    scale = max((target_bytes - size) / last_round, 0.05)
                counts = {"customers": int(customers * scale), "items": int(items * scale),
                          "sales": int(sales * scale)}  # fmt: skip
                shares = [created[i::workers] for i in range(workers)]
                done = pool.map(_add_batches, conns, shares, [counts] * workers)
                list(done)  # re-raises the first failure
                before, size = size, _size(conns[0])
                last_round = size - before
        conns[0].execute("ANALYZE")
    finally:
        for conn in conns:
            conn.close()
    return size


def _add_batches(conn: Conn, tenants: list[Tenant], counts: dict[str, int]) -> None:
    for tenant in tenants:
        add_batch(conn, tenant, **counts)


def _size(conn: Conn) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


# -- comparing databases ---------------------------------------------------------------------

_USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def table_digests(url: str) -> dict[str, tuple[int, str]]:
    """``{"schema.table": (rows, sha256)}`` for every user table: equal dicts, equal data.

    Rows are hashed as their text form, sorted bytewise, streamed through COPY so the size of
    the database does not matter. ``row_security = off`` makes a role that would see only part
    of the rows fail loudly instead of producing a digest of a subset: use a superuser.
    """
    digests: dict[str, tuple[int, str]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        tables = conn.execute(_USER_TABLES_SQL).fetchall()
        for schema, name in tables:
            query = sql.SQL(
                'COPY (SELECT t::text FROM ONLY {}.{} AS t ORDER BY t::text COLLATE "C") TO STDOUT'
            ).format(sql.Identifier(schema), sql.Identifier(name))
            digest, rows = hashlib.sha256(), 0
            try:
                with conn.cursor().copy(query) as copy:
                    for chunk in copy:
                        digest.update(chunk)
                        rows += bytes(chunk).count(b"\n")
            except psycopg.errors.InsufficientPrivilege as exc:
                raise PostgresError(
                    f"table_digests needs a role that sees every row of {schema}.{name} "
                    f"(a superuser or BYPASSRLS): {str(exc).splitlines()[0]}"
                ) from None
            digests[f"{schema}.{name}"] = (rows, digest.hexdigest())
    return digests


#: Each demo table's tenant column (``tenants`` is keyed by its own id).
TENANT_COLUMNS = {table: "id" if table == "tenants" else "tenant_id" for table in TABLES}


def tenant_digests(url: str) -> dict[tuple[str, str], tuple[int, str]]:
    """``{(table, tenant): (rows, md5)}``: each tenant's rows of each demo table, as sorted text.

    Per tenant, so a one-tenant restore can be shown to change that tenant and no other. Like
    :func:`table_digests`, it needs a role that sees every row (``row_security = off``).
    """
    found: dict[tuple[str, str], tuple[int, str]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        for table, column in TENANT_COLUMNS.items():
            query = sql.SQL(
                "SELECT {}::text, count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text"
                ' COLLATE "C")) FROM public.{} AS t GROUP BY 1'
            ).format(sql.Identifier(column), sql.Identifier(table))
            for tenant, rows, digest in conn.execute(query).fetchall():
                found[(table, str(tenant))] = (int(rows), str(digest))
    return found
