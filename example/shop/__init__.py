"""The seed's multi-tenant jewelry shop: tenants, customers, inventory and sales, RLS-isolated."""
