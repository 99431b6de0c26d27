"""``strongroom demo``: the whole job on embedded defaults, with nothing configured.

A throwaway PostgreSQL cluster holding the multi-tenant shop (RLS forced, tables owned by the
application role), SeaweedFS standing in for Cloudflare R2 and Backblaze B2, a fresh key, a
SQLite catalog and a temporary local location. It then does what an operator would: sees the
application role refused by the RLS preflight, creates the backup role, backs up to all three
locations, verifies every copy, restores into a new database and proves it equal, row for row.
Then two recoveries (``demo_recovery.py``): one tenant damaged and restored in place while every
other tenant's rows stay the same, and a point-in-time recovery on a second, archiving cluster.

The flow lives with the interfaces because it is one: it calls the same services the CLI does
and renders a summary; ``strongroom.sandbox`` only provides the servers and the shop's data.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from strongroom.config import load_config
from strongroom.core import crypto, postgres
from strongroom.errors import ExitCode, PreflightError, StrongroomError
from strongroom.interfaces import render
from strongroom.interfaces.demo_recovery import (
    PitrDemo,
    TenantDemo,
    point_in_time_recovery,
    tenant_restore_in_place,
)
from strongroom.sandbox.demo_data import (
    DemoDatabase,
    create_demo_database,
    table_digests,
    url_as,
)
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.seaweed import SeaweedServer

BACKUP_ROLE = "strongroom_backup"
SOURCE_DB = "shop"
RESTORED_DB = "shop_restored"

out = Console(highlight=False)


@dataclass
class DemoResult:
    """What the demo measured, for the summary (and for the tests that run the demo)."""

    preflight_refused: str = ""
    backup: dict[str, Any] = field(default_factory=dict)
    verify: list[tuple[str, bool, str]] = field(default_factory=list)
    restore_source: str = ""
    restore_seconds: float = 0.0
    tables: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    digests_equal: bool = False
    differing: list[str] = field(default_factory=list)
    tenant: TenantDemo = field(default_factory=TenantDemo)
    pitr: PitrDemo = field(default_factory=PitrDemo)
    #: The servers, handed over (and stopped by ``stop.sh``) with ``--keep``.
    cluster: PgCluster | None = None
    s3: SeaweedServer | None = None

    @property
    def ok(self) -> bool:
        return (
            self.backup.get("status") == "VERIFIED"
            and bool(self.verify)
            and all(ok for _, ok, _ in self.verify)
            and self.digests_equal
            and self.tenant.ok
            and self.pitr.ok
        )


def run_demo(scale: int = 1, keep: bool = False) -> int:
    """Run the demo; exit 0 when the restored database equals the source, row for row."""
    if scale < 1:
        render.err.print("strongroom: error: --scale must be 1 or more")
        return ExitCode.CONFIG
    base = Path(tempfile.mkdtemp(prefix="strongroom-demo-"))
    kept = False
    try:
        with ExitStack() as servers:
            result = _run(base, scale, servers)
            if keep:  # only a demo that ran to the end is handed over; a failed one is cleaned
                _hand_over(servers, base, result)
                kept = True
    except StrongroomError as exc:
        render.err.print(f"strongroom: error: demo failed: {exc}")
        return exc.exit_code
    finally:
        if not kept:
            shutil.rmtree(base, ignore_errors=True)
    _summary(result)
    if keep:
        out.print(
            f"\nServers left running; settings in {base / 'strongroom.env'} (mode 0600): "
            f"[bold]set -a; . {base / 'strongroom.env'}; set +a[/] then try "
            f"[bold]strongroom list[/]. Stop them and remove their files with "
            f"[bold]sh {base / 'stop.sh'}[/]."
        )
    return ExitCode.OK if result.ok else ExitCode.FAILED


def _hand_over(servers: ExitStack, base: Path, result: DemoResult) -> None:
    """Leave the servers running past this process, with a script that stops them."""
    assert result.cluster is not None and result.s3 is not None
    result.cluster.keep = True  # not stopped by its atexit hook either
    servers.pop_all()
    _write_stop_script(base, result.cluster, result.s3)


def _write_stop_script(base: Path, cluster: PgCluster, s3: SeaweedServer) -> None:
    """``stop.sh``: stop the servers ``--keep`` left running and remove every file they used."""
    sockets = " ".join(f"/tmp/seaweedfs-*-{port}.sock" for port in s3.ports.all())
    lines = [
        "#!/bin/sh",
        "# Stops the servers of `strongroom demo --keep`, removes their files.",
        f"kill -INT \"$(head -n 1 '{cluster.data_dir}/postmaster.pid')\" 2>/dev/null",  # fast
        f"kill -KILL -{s3.pid} 2>/dev/null",  # its process group
        f"rm -f {sockets}",  # weed puts its unix sockets in /tmp
        "sleep 2",
        f"rm -rf '{cluster.base_dir}' '{base}'",
        "",
    ]
    script = base / "stop.sh"
    script.write_text("\n".join(lines))
    script.chmod(0o700)


def _run(base: Path, scale: int, servers: ExitStack) -> DemoResult:
    result = DemoResult()
    with _step("Starting a throwaway PostgreSQL cluster"):
        cluster = servers.enter_context(PgCluster())
        result.cluster = cluster
    with _step(f"Creating the multi-tenant shop (RLS forced), scale {scale}"):
        demo = create_demo_database(
            cluster.url(),
            SOURCE_DB,
            tenants=5,
            customers_per_tenant=400 * scale,
            items_per_tenant=600 * scale,
            sales_per_tenant=2000 * scale,
        )
    with _step("Starting SeaweedFS as Cloudflare R2 and Backblaze B2"):
        s3 = servers.enter_context(
            SeaweedServer(base / "seaweed", buckets=("r2-backups", "b2-backups"))
        )
        result.s3 = s3
    result.preflight_refused = _preflight_as_app(demo)
    settings = _settings(base, demo, s3)
    config = load_config(settings)
    _write_env(base / "strongroom.env", settings)

    from strongroom.catalog import store
    from strongroom.catalog.bootstrap import ensure_django
    from strongroom.services.backup import run_full_backup
    from strongroom.services.restore import restore_backup
    from strongroom.services.verify import verify_backup

    ensure_django(config.catalog_url)
    with _step("Backing up to local + r2 + b2 (one pg_dump stream)"):
        report = run_full_backup(config)
    with _step("Verifying every copy (SHA-256 + authentication)"):
        checked = verify_backup(config, report.id)
        result.verify = [(c.location, c.ok, c.detail) for c in checked.copies]
    result.backup = store.backup_to_dict(store.get_backup(report.id))
    with _step("Restoring into a new database (pg_restore -j 2)"):
        restored = restore_backup(config, report.id, cluster.url(RESTORED_DB), jobs=2)
        result.restore_source = restored.source
        result.restore_seconds = restored.seconds
        result.tables = restored.table_rows
    with _step("Comparing every table's rows with the source"):
        source = table_digests(demo.admin_url)
        copy = table_digests(cluster.url(RESTORED_DB))
        result.differing = sorted(
            t for t in source.keys() | copy.keys() if source.get(t) != copy.get(t)
        )
        result.digests_equal = not result.differing
    # The tenant steps run as the superuser: an export reads each table as its owner.
    as_admin = load_config({**settings, "DATABASE_URL": demo.admin_url})
    result.tenant = tenant_restore_in_place(as_admin, demo.admin_url, demo.tenants[1].id, _step)
    result.pitr = point_in_time_recovery(settings, _step)
    return result


def _preflight_as_app(demo: DemoDatabase) -> str:
    """The seed's failure, reproduced: the application role cannot dump RLS-forced tables."""
    with _step("Preflight as the application role (expected to be refused)"):
        try:
            postgres.preflight(postgres.ConnInfo.parse(demo.app_url))
        except PreflightError as exc:
            return str(exc)
    return ""


def _settings(base: Path, demo: DemoDatabase, s3: SeaweedServer) -> dict[str, str]:
    """The environment an operator would set, with a dedicated BYPASSRLS role."""
    password = secrets.token_urlsafe(18)
    with _step(f"Creating the backup role {BACKUP_ROLE} (BYPASSRLS, read-only)"):
        postgres.apply_setup_role(postgres.ConnInfo.parse(demo.admin_url), BACKUP_ROLE, password)
    local = base / "local-backups"
    local.mkdir()
    return {
        "DATABASE_URL": url_as(demo.admin_url, user=BACKUP_ROLE, password=password),
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(local),
        "STRONGROOM_LOCATIONS": "local,r2,b2",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{base / 'catalog.sqlite3'}",
        **s3.settings("r2", "r2-backups"),
        **s3.settings("b2", "b2-backups"),
    }


def _write_env(path: Path, settings: dict[str, str]) -> None:
    """Settings for ``--keep``, readable by the owner only (they hold the key and passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        for name, value in settings.items():
            fh.write(f"{name}='{value}'\n")


@contextmanager
def _step(title: str) -> Iterator[None]:
    began = time.monotonic()
    with out.status(title):
        yield
    out.print(f"[green]✓[/] {title} [dim]({time.monotonic() - began:.1f}s)[/]")


def _summary(result: DemoResult) -> None:
    b = result.backup
    out.print()
    if result.preflight_refused:
        first = result.preflight_refused.split(". ")[0]
        out.print(
            f"[yellow]Application role refused, as expected:[/] {escape(first)}.", soft_wrap=True
        )
    out.print(
        f"[bold]Backup {b.get('id')}[/]: {b.get('status')}, "
        f"{render.size(b.get('raw_size_bytes'))} dumped → {render.size(b.get('size_bytes'))} "
        f"stored ({float(b.get('compression_ratio') or 0) * 100:.0f}% saved) "
        f"in {float(b.get('backup_duration_seconds') or 0):.1f}s"
    )
    checks = {location: (ok, detail) for location, ok, detail in result.verify}
    copies = Table("location", "object", "stored", "upload", "verify")
    order = ["local", "r2", "b2"]
    for copy in sorted(b.get("copies", []), key=lambda c: order.index(c["location"])):
        ok, detail = checks.get(copy["location"], (False, "not checked"))
        copies.add_row(
            copy["location"],
            copy["key"],
            render.size(copy["size_bytes"]),
            f"{float(copy['duration_seconds'] or 0):.1f}s",
            ("[green]ok[/] " if ok else "[red]FAIL[/] ") + escape(detail),
        )
    out.print(copies)
    rows = Table("table", "rows in backup", "rows restored", "digest")
    for table, (expected, actual) in sorted(result.tables.items()):
        same = table not in result.differing
        rows.add_row(
            table, str(expected), str(actual), "[green]equal[/]" if same else "[red]DIFFERENT[/]"
        )
    out.print(rows)
    verdict = "[green]PASS[/]" if result.ok else "[red]FAIL[/]"
    out.print(
        f"Restored from {result.restore_source} in {result.restore_seconds:.1f}s; "
        f"every table equal to the source: {'yes' if result.digests_equal else 'NO'}."
    )
    _tenant_summary(result.tenant)
    _pitr_summary(result.pitr)
    out.print(f"Every step: {verdict}")


def _yes(ok: bool) -> str:
    return "yes" if ok else "[red]NO[/]"


def _tenant_summary(t: TenantDemo) -> None:
    out.print(
        f"[bold]Tenant restore[/] of {t.tenant_id} in place from tenant backup {t.backup_id} "
        f"in {t.seconds:.1f}s (damaged: {', '.join(t.damaged_tables) or 'nothing'}): "
        f"its tables equal to before the damage: {_yes(t.restored_equal)}; "
        f"the other {t.other_tenants} tenants unchanged: {_yes(t.others_unchanged)}.",
        soft_wrap=True,
    )


def _pitr_summary(p: PitrDemo) -> None:
    out.print(
        f"[bold]Point-in-time recovery[/] to {p.target} from base backup {p.backup_id} "
        f"in {p.seconds:.1f}s: batch A present ({p.batch_a_rows} rows): {_yes(p.batch_a_present)}; "
        f"batch B's damage absent ({p.items_recovered} of {p.items_before_b} inventory items back, "
        f"{p.items_after_b} left in the source): {_yes(p.batch_b_absent)}; "
        f"every table equal to the source at that time: {_yes(p.tables_equal_at_target)}.",
        soft_wrap=True,
    )
