"""Unmanaged models over the tables of ``strongroom/sandbox/demo_schema.sql``.

The tables, their indexes and their Row-Level Security are created by migration 0001 from that
file, so the Django project and the sandbox share one schema. Queries see only the rows of the
tenant set with :func:`shop.tenancy.tenant_context` (RLS is forced, even for the owner).
"""

from __future__ import annotations

import uuid

from django.db import models


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.TextField()
    slug = models.TextField(unique=True)
    plan = models.TextField(default="basic")
    created_at = models.DateTimeField()
    settings = models.JSONField(default=dict)

    class Meta:
        managed = False
        db_table = "tenants"

    def __str__(self) -> str:
        return self.name


class Customer(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    tenant = models.ForeignKey(Tenant, models.DO_NOTHING, db_column="tenant_id")
    name = models.TextField()
    email = models.TextField(null=True)
    phone = models.TextField(null=True)
    loyalty_points = models.IntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "customers"

    def __str__(self) -> str:
        return self.name


class InventoryItem(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    tenant = models.ForeignKey(Tenant, models.DO_NOTHING, db_column="tenant_id")
    sku = models.TextField()
    name = models.TextField()
    karat = models.SmallIntegerField(null=True)
    weight_grams = models.DecimalField(max_digits=10, decimal_places=3)
    cost_price = models.DecimalField(max_digits=12, decimal_places=2)
    sale_price = models.DecimalField(max_digits=12, decimal_places=2)
    quantity = models.IntegerField(default=0)
    attributes = models.JSONField(default=dict)
    photo = models.BinaryField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "inventory_items"

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class Sale(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    tenant = models.ForeignKey(Tenant, models.DO_NOTHING, db_column="tenant_id")
    customer = models.ForeignKey(Customer, models.DO_NOTHING, db_column="customer_id", null=True)
    sold_at = models.DateTimeField()
    total = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.TextField(default="completed")
    notes = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = "sales"


class SaleItem(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    tenant = models.ForeignKey(Tenant, models.DO_NOTHING, db_column="tenant_id")
    sale = models.ForeignKey(Sale, models.DO_NOTHING, db_column="sale_id")
    item = models.ForeignKey(InventoryItem, models.DO_NOTHING, db_column="item_id")
    quantity = models.IntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        managed = False
        db_table = "sale_items"
