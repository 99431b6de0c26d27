"""Root fixtures: a real PostgreSQL cluster and a real Redis, started by the tests themselves.

* ``pg_cluster`` (session): a throwaway :class:`~strongroom.sandbox.pgcluster.PgCluster`.
* ``demo_db`` (function): a fresh database of that cluster with the seed's multi-tenant schema
  (RLS forced, owned by the non-superuser ``shop_app``) and a little data; dropped afterwards.
* ``redis_server`` (session): a :class:`~strongroom.sandbox.redis.RedisServer`.

A server that cannot start fails the test with the reason and what to install; never a skip.
SeaweedFS fixtures live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests run against the source tree even when the package is not installed in the venv.
_SRC = str(Path(__file__).resolve().parents[1] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from strongroom.sandbox.demo_data import (  # noqa: E402
    DemoDatabase,
    create_demo_database,
    new_app_password,
)
from strongroom.sandbox.pgcluster import PgCluster  # noqa: E402
from strongroom.sandbox.redis import RedisServer, ensure_redis  # noqa: E402

#: Per tenant: enough rows for joins, NULLs, photos and several pages, still well under 1 s.
DEMO_SIZES = {
    "tenants": 3,
    "customers_per_tenant": 40,
    "items_per_tenant": 60,
    "sales_per_tenant": 100,
}


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole session (superuser ``postgres``, trust auth)."""
    cluster = PgCluster()
    try:
        cluster.__enter__()
    except Exception as exc:
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def app_password() -> str:
    """The session's password for ``shop_app`` (a role is cluster-wide: one password for all)."""
    return new_app_password()


@pytest.fixture
def demo_db(pg_cluster: PgCluster, app_password: str) -> Iterator[DemoDatabase]:
    """A fresh, populated demo database: ``.name``, ``.admin_url``, ``.app_url``, ``.tenants``."""
    name = f"demo_{uuid.uuid4().hex[:12]}"
    try:
        db = create_demo_database(pg_cluster.url(), name, app_password=app_password, **DEMO_SIZES)
    except BaseException:
        pg_cluster.drop_database(name)
        raise
    yield db
    pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis on 127.0.0.1: ``.url`` (db 0), ``.url_for(n)``, ``.port``."""
    try:
        server = ensure_redis()
    except Exception as exc:
        pytest.fail(f"Redis could not start: {exc}", pytrace=False)
    with server:
        yield server
