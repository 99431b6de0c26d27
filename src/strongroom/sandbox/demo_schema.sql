-- The seed's application in miniature: a multi-tenant jewelry shop isolated by Row-Level Security.
--
-- Run it connected as the application role (shop_app: LOGIN, not superuser, no BYPASSRLS) so that
-- role owns every table. RLS is ENABLEd *and* FORCEd on every table, tenants included, so even the
-- owner sees only the rows of the tenant named by the `app.current_tenant` setting. That is what
-- makes the seed's `pg_dump` as the app role fail with
--   pg_dump: error: query would be affected by row-level security policy for table "tenants"
--
-- NULLIF(..., '') keeps a session whose setting was RESET (it reads back as '', not NULL) from
-- failing with "invalid input syntax for type uuid": it just sees no rows, like a fresh one.
-- The example Django project's `shop` migration runs this very file.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    plan        text NOT NULL DEFAULT 'basic'
                CHECK (plan IN ('basic', 'professional', 'enterprise')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE customers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL,
    email           text,
    phone           text,
    loyalty_points  integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_tenant_id_idx ON customers (tenant_id);

CREATE TABLE inventory_items (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sku           text NOT NULL,
    name          text NOT NULL,
    karat         smallint CHECK (karat BETWEEN 1 AND 24),
    weight_grams  numeric(10, 3) NOT NULL,
    cost_price    numeric(12, 2) NOT NULL,
    sale_price    numeric(12, 2) NOT NULL,
    quantity      integer NOT NULL DEFAULT 0,
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    photo         bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, sku)
);
CREATE INDEX inventory_items_tenant_id_idx ON inventory_items (tenant_id);

CREATE TABLE sales (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    customer_id  uuid REFERENCES customers (id) ON DELETE SET NULL,
    sold_at      timestamptz NOT NULL DEFAULT now(),
    total        numeric(12, 2) NOT NULL,
    status       text NOT NULL DEFAULT 'completed'
                 CHECK (status IN ('completed', 'pending', 'refunded', 'cancelled')),
    notes        text
);
CREATE INDEX sales_tenant_id_idx ON sales (tenant_id);
CREATE INDEX sales_customer_id_idx ON sales (customer_id);

CREATE TABLE sale_items (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sale_id     uuid NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    item_id     uuid NOT NULL REFERENCES inventory_items (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(12, 2) NOT NULL
);
CREATE INDEX sale_items_tenant_id_idx ON sale_items (tenant_id);
CREATE INDEX sale_items_sale_id_idx ON sale_items (sale_id);
CREATE INDEX sale_items_item_id_idx ON sale_items (item_id);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = NULLIF(current_setting('app.current_tenant', true), '')::uuid);

ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON customers
    USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), '')::uuid);

ALTER TABLE inventory_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE inventory_items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON inventory_items
    USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), '')::uuid);

ALTER TABLE sales ENABLE ROW LEVEL SECURITY;
ALTER TABLE sales FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sales
    USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), '')::uuid);

ALTER TABLE sale_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE sale_items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sale_items
    USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), '')::uuid);
