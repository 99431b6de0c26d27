"""The shop's tables, indexes and forced Row-Level Security, from the sandbox's demo_schema.sql.

Run ``manage.py migrate`` as the application role (``shop_app``: not superuser, no BYPASSRLS) on
a database it owns, so that it owns the tables: that reproduces the seed's database, including
``pg_dump`` as that role failing on row-level security. On other databases than PostgreSQL the
tables are not created (``manage.py check`` and tests on SQLite still work).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from strongroom.sandbox.demo_data import TABLES, schema_sql


def create_schema(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(schema_sql())


def drop_schema(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for table in reversed(TABLES):
            cursor.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')


def _unmanaged(name: str, table: str, fields: list[tuple[str, Any]]) -> migrations.CreateModel:
    return migrations.CreateModel(
        name=name, fields=fields, options={"managed": False, "db_table": table}
    )


def _uuid_pk() -> tuple[str, Any]:
    return ("id", models.UUIDField(primary_key=True, serialize=False))


def _tenant_fk() -> tuple[str, Any]:
    return (
        "tenant",
        models.ForeignKey(db_column="tenant_id", on_delete=models.DO_NOTHING, to="shop.tenant"),
    )


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunPython(create_schema, drop_schema),
        _unmanaged(
            "Tenant",
            "tenants",
            [
                _uuid_pk(),
                ("name", models.TextField()),
                ("slug", models.TextField(unique=True)),
                ("plan", models.TextField(default="basic")),
                ("created_at", models.DateTimeField()),
                ("settings", models.JSONField(default=dict)),
            ],
        ),
        _unmanaged(
            "Customer",
            "customers",
            [
                _uuid_pk(),
                _tenant_fk(),
                ("name", models.TextField()),
                ("email", models.TextField(null=True)),
                ("phone", models.TextField(null=True)),
                ("loyalty_points", models.IntegerField(default=0)),
                ("created_at", models.DateTimeField()),
            ],
        ),
        _unmanaged(
            "InventoryItem",
            "inventory_items",
            [
                _uuid_pk(),
                _tenant_fk(),
                ("sku", models.TextField()),
                ("name", models.TextField()),
                ("karat", models.SmallIntegerField(null=True)),
                ("weight_grams", models.DecimalField(decimal_places=3, max_digits=10)),
                ("cost_price", models.DecimalField(decimal_places=2, max_digits=12)),
                ("sale_price", models.DecimalField(decimal_places=2, max_digits=12)),
                ("quantity", models.IntegerField(default=0)),
                ("attributes", models.JSONField(default=dict)),
                ("photo", models.BinaryField(null=True)),
                ("created_at", models.DateTimeField()),
            ],
        ),
        _unmanaged(
            "Sale",
            "sales",
            [
                _uuid_pk(),
                _tenant_fk(),
                (
                    "customer",
                    models.ForeignKey(
                        db_column="customer_id",
                        null=True,
                        on_delete=models.DO_NOTHING,
                        to="shop.customer",
                    ),
                ),
                ("sold_at", models.DateTimeField()),
                ("total", models.DecimalField(decimal_places=2, max_digits=12)),
                ("status", models.TextField(default="completed")),
                ("notes", models.TextField(null=True)),
            ],
        ),
        _unmanaged(
            "SaleItem",
            "sale_items",
            [
                _uuid_pk(),
                _tenant_fk(),
                (
                    "sale",
                    models.ForeignKey(
                        db_column="sale_id", on_delete=models.DO_NOTHING, to="shop.sale"
                    ),
                ),
                (
                    "item",
                    models.ForeignKey(
                        db_column="item_id", on_delete=models.DO_NOTHING, to="shop.inventoryitem"
                    ),
                ),
                ("quantity", models.IntegerField()),
                ("unit_price", models.DecimalField(decimal_places=2, max_digits=12)),
            ],
        ),
    ]
