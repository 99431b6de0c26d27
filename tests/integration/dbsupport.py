"""Databases integration tests build for themselves, beside the demo's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import sql

from strongroom.sandbox.pgcluster import PgCluster


@contextmanager
def owned_database(cluster: PgCluster, schema: str) -> Iterator[tuple[str, str]]:
    """A new database holding ``schema``, created as a NOLOGIN role of its own: (URL, owner).

    Like an application's tables, they belong to a non-superuser (so RLS holds their owner
    when forced); the database and the role are dropped afterwards.
    """
    name, owner = f"own_{uuid.uuid4().hex[:8]}", f"own_{uuid.uuid4().hex[:8]}"
    with cluster.connect() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
    try:
        with cluster.connect(name) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
            conn.execute(schema)
        yield cluster.url(name), owner
    finally:
        cluster.drop_database(name)
        with cluster.connect() as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner)))
