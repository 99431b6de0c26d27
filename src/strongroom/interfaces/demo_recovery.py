"""The demo's two recoveries past the full restore: one tenant in place, and a point in time.

* **One tenant**: a tenant backup of one tenant, that tenant damaged (half its sales deleted,
  customers changed), then the one-tenant restore in place with ``--replace``, as
  ``strongroom tenant restore ID --target URL --replace`` runs it; the proof is per tenant and
  per table: that tenant's digests equal the ones before the damage, every other tenant's are
  the same before and after the restore.
* **A point in time**: a second, small cluster (the main one does not archive, so the other
  steps keep their speed) archiving its WAL with this tool's ``wal-push``, run by the server's
  OS user from a config file as in production; a base backup, batch A, a noted time, batch B
  (a tenant's inventory deleted by mistake), ``pitr-restore --target-time`` into a new
  directory, that server started on its own port: batch A is there, B's damage is not.

Both call the services the CLI calls; the caller hands in its step renderer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from strongroom.config import Config, load_config
from strongroom.core.postgres.recovery import target_time
from strongroom.errors import PostgresError
from strongroom.sandbox.demo_data import create_demo_database, table_digests, tenant_digests
from strongroom.sandbox.launcher import write_launcher
from strongroom.sandbox.pgcluster import PgCluster, archive_settings, give_tree_to_server

Step = Callable[[str], AbstractContextManager[None]]
Digests = dict[tuple[str, str], tuple[int, str]]

#: Rows of batch A in the PITR cluster (new customers of its first tenant).
BATCH_A = 25
_POLL = 0.1


@dataclass
class TenantDemo:
    """What the one-tenant restore showed."""

    tenant_id: str = ""
    backup_id: str = ""
    damaged_tables: list[str] = field(default_factory=list)
    restored_equal: bool = False
    other_tenants: int = 0
    others_unchanged: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.damaged_tables) and self.restored_equal and self.others_unchanged


@dataclass
class PitrDemo:
    """What the point-in-time recovery showed."""

    target: str = ""
    backup_id: str = ""
    batch_a_rows: int = 0
    items_before_b: int = 0
    items_after_b: int = 0
    items_recovered: int = 0
    tables_equal_at_target: bool = False
    seconds: float = 0.0

    @property
    def batch_a_present(self) -> bool:
        return self.batch_a_rows == BATCH_A

    @property
    def batch_b_absent(self) -> bool:
        return self.items_after_b == 0 < self.items_before_b == self.items_recovered

    @property
    def ok(self) -> bool:
        return self.batch_a_present and self.batch_b_absent and self.tables_equal_at_target


# -- one tenant ---------------------------------------------------------------------------------


def tenant_restore_in_place(config: Config, admin_url: str, tenant: str, step: Step) -> TenantDemo:
    """Back up ``tenant``, damage it, restore it in place; compare every tenant's digests."""
    from strongroom.services.tenant_backup import run_tenant_backup
    from strongroom.services.tenant_restore import restore_tenant

    began = time.monotonic()
    result = TenantDemo(tenant_id=tenant)
    with step(f"Tenant backup of tenant {tenant}"):
        report = run_tenant_backup(config, tenant)
        result.backup_id = report.id
    before = tenant_digests(admin_url)
    with step("Damaging that tenant (half its sales deleted, customers changed)"):
        _damage_tenant(admin_url, tenant)
        damaged = tenant_digests(admin_url)
        result.damaged_tables = sorted(
            t for t, who in before if who == tenant and before[(t, who)] != damaged.get((t, who))
        )
    with step("Restoring that tenant alone, in place (tenant restore --replace)"):
        restore_tenant(config, report.id, admin_url, replace=True)
    after = tenant_digests(admin_url)
    result.restored_equal = _of(after, tenant) == _of(before, tenant)
    others = _others(damaged, tenant)
    result.other_tenants = len({who for _, who in others})
    result.others_unchanged = bool(others) and _others(after, tenant) == others
    result.seconds = time.monotonic() - began
    return result


def _damage_tenant(admin_url: str, tenant: str) -> None:
    """An operator's bad day for one tenant: half its sales gone (their items with them)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM sales WHERE id IN (SELECT id FROM sales WHERE tenant_id = %(t)s "
            "ORDER BY id LIMIT (SELECT count(*) / 2 FROM sales WHERE tenant_id = %(t)s))",
            {"t": tenant},
        )
        conn.execute(
            "UPDATE customers SET name = 'overwritten', loyalty_points = 0 WHERE id IN "
            "(SELECT id FROM customers WHERE tenant_id = %s ORDER BY id LIMIT 50)",
            (tenant,),
        )


def _of(found: Digests, tenant: str) -> Digests:
    return {k: v for k, v in found.items() if k[1] == tenant}


def _others(found: Digests, tenant: str) -> Digests:
    return {k: v for k, v in found.items() if k[1] != tenant}


# -- a point in time ----------------------------------------------------------------------------


def point_in_time_recovery(settings: Mapping[str, str], step: Step) -> PitrDemo:
    """The whole PITR scene on its own archiving cluster; every file it made is gone after.

    ``settings`` are the demo's (key, locations, catalog): the new cluster archives into the
    same R2 and B2, under its own system identifier."""
    began = time.monotonic()
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="strongroom-demo-pitr-", dir="/tmp" if as_root else None))
    try:
        result = _Pitr(base, settings, step).run()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result.seconds = time.monotonic() - began
    return result


class _Pitr:
    """The archiving cluster's files: its launcher, its config file, its local location."""

    def __init__(self, base: Path, settings: Mapping[str, str], step: Step) -> None:
        self.base = base
        self.step = step
        self.launcher = write_launcher(base / "strongroom")
        for name in ("local", "spool"):
            (base / name).mkdir()
        # What the server's OS user reads: the key, the locations, a catalog of its own.
        self.file_settings = {
            "BACKUP_ENCRYPTION_KEY": settings["BACKUP_ENCRYPTION_KEY"],
            "STRONGROOM_LOCATIONS": settings["STRONGROOM_LOCATIONS"],
            "BACKUP_LOCAL_PATH": str(base / "local"),
            "BACKUP_WAL_SPOOL_DIR": str(base / "spool"),
            "STRONGROOM_CATALOG_URL": f"sqlite:///{base / 'wal-catalog.sqlite3'}",
            **{k: v for k, v in settings.items() if k.startswith(("R2_", "B2_"))},
        }
        self.config_file = base / "strongroom.conf"
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f"{k}={v}\n" for k, v in self.file_settings.items()))
        os.chmod(base, 0o700)
        give_tree_to_server(base)
        self.catalog_url = settings["STRONGROOM_CATALOG_URL"]  # ours, not the server's

    @property
    def tool(self) -> list[str]:
        return [str(self.launcher), "--config", str(self.config_file)]

    def run(self) -> PitrDemo:
        result = PitrDemo()
        command = " ".join([*self.tool, "wal-push", "%p"])
        with self.step("Starting a second, small cluster archiving its WAL with wal-push"):
            cluster = PgCluster(settings=archive_settings(command, archive_timeout=60))
            cluster.__enter__()
        try:
            self._scene(cluster, result)
        finally:
            cluster.close()
        return result

    def _scene(self, cluster: PgCluster, result: PitrDemo) -> None:
        from strongroom.services.base_backup import run_base_backup

        with self.step("Filling it with a small shop of 2 tenants"):
            demo = create_demo_database(
                cluster.url(),
                "shop",
                tenants=2,
                customers_per_tenant=40,
                items_per_tenant=60,
                sales_per_tenant=100,
            )
        self._wal_directory(cluster)
        config = load_config(
            {
                **self.file_settings,
                "DATABASE_URL": demo.admin_url,
                "STRONGROOM_CATALOG_URL": self.catalog_url,
            }
        )
        tenant = demo.tenants[0].id
        with self.step("Base backup (pg_basebackup, its WAL confirmed in every location)"):
            report = run_base_backup(config)
            result.backup_id = report.id
        with self.step(f"Batch A ({BATCH_A} new customers), the time noted, batch B (a mistake)"):
            at, expected = self._batches(demo.admin_url, tenant, result)
            _switch_and_wait(cluster)  # the segment holding batch B is archived
        result.target = at.isoformat()
        restored_base = self.base / "restored"
        restored_base.mkdir(mode=0o700)
        with self.step("pitr-restore --target-time into a new directory"):
            from strongroom.services.pitr import pitr_restore

            pitr_restore(config, str(restored_base / "data"), target_time(at), tool=self.tool)
        with self.step("Starting the recovered server on its own port (replays to the time)"):
            restored = PgCluster.adopt(restored_base, settings={"archive_mode": "off"})
            try:
                restored.start()
                _wait_promoted(restored)
                self._check(restored, tenant, result, expected)
            finally:
                restored.close()

    def _wal_directory(self, cluster: PgCluster) -> None:
        """The local location's ``<system identifier>/wal`` made now, the server's user's.

        ``wal-push`` runs as that user and the base backup as us: whoever writes first makes
        the cluster's directory, and the other must still be able to write below it.
        """
        scope = str(cluster.execute("SELECT system_identifier FROM pg_control_system()")[0][0])
        (self.base / "local" / scope / "wal").mkdir(mode=0o700, parents=True)
        give_tree_to_server(self.base / "local")

    def _batches(
        self, admin_url: str, tenant: str, result: PitrDemo
    ) -> tuple[datetime, dict[str, tuple[int, str]]]:
        """Batch A, the time to recover to, batch B (the tenant's inventory deleted); returns
        the time and every table's digest as it was then."""
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO customers (tenant_id, name) "
                "SELECT %s, 'batch A ' || g FROM generate_series(1, %s) g",
                (tenant, BATCH_A),
            )
            at_a = table_digests(admin_url)
            result.items_before_b = _items(conn, tenant)
            time.sleep(0.1)  # commit times are microseconds; keep the target clearly between
            at = datetime.now(UTC)
            time.sleep(0.1)
            conn.execute("DELETE FROM sale_items WHERE tenant_id = %s", (tenant,))
            conn.execute("DELETE FROM inventory_items WHERE tenant_id = %s", (tenant,))
            result.items_after_b = _items(conn, tenant)
        return at, at_a

    def _check(
        self,
        restored: PgCluster,
        tenant: str,
        result: PitrDemo,
        expected: dict[str, tuple[int, str]],
    ) -> None:
        with psycopg.connect(restored.url("shop"), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM customers WHERE name LIKE 'batch A %%'"
            ).fetchone()
            result.batch_a_rows = int(row[0]) if row else 0
            result.items_recovered = _items(conn, tenant)
        result.tables_equal_at_target = table_digests(restored.url("shop")) == expected


def _items(conn: psycopg.Connection[tuple[object, ...]], tenant: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM inventory_items WHERE tenant_id = %s", (tenant,)
    ).fetchone()
    return int(str(row[0])) if row else 0


def _switch_and_wait(cluster: PgCluster, timeout: float = 60) -> None:
    """Close the current WAL segment and wait until the server has seen it archived."""
    name = str(cluster.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    deadline = time.monotonic() + timeout
    while True:
        last = cluster.execute("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last is not None and str(last)[:24] >= name:
            return
        if time.monotonic() > deadline:
            raise PostgresError(f"WAL segment {name} not archived within {timeout:g} s")
        time.sleep(_POLL)


def _wait_promoted(cluster: PgCluster, timeout: float = 120) -> None:
    """Wait until replay reached the target and the server took writes (promoted)."""
    deadline = time.monotonic() + timeout
    while cluster.execute("SELECT pg_is_in_recovery()")[0][0]:
        if time.monotonic() > deadline:
            raise PostgresError(f"the recovered server did not finish recovery in {timeout:g} s")
        time.sleep(_POLL)
