"""Which tenant the current connection acts for: the ``app.current_tenant`` the policies read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from django.db import connections


@contextmanager
def tenant_context(tenant_id: UUID | str, using: str = "default") -> Iterator[None]:
    """Act for ``tenant_id`` inside the block; outside it the app role sees no tenant rows."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT set_config('app.current_tenant', %s, false)", [str(tenant_id)])
    try:
        yield
    finally:
        with connections[using].cursor() as cursor:
            cursor.execute("RESET app.current_tenant")
