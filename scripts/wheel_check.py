"""Drive an installed ``strongroom`` command the way an operator does (see scripts/wheel-check).

Runs with the dev venv's interpreter, which starts the throwaway PostgreSQL and compares tables;
every ``strongroom`` command runs from the installed wheel, outside the source tree, with nothing
but the variables set here. Any failure prints the command's stderr and exits non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from strongroom.sandbox.demo_data import create_demo_database, table_digests  # noqa: E402
from strongroom.sandbox.pgcluster import PgCluster  # noqa: E402

SIZES = {"tenants": 2, "customers_per_tenant": 20, "items_per_tenant": 20, "sales_per_tenant": 30}


class CheckFailed(Exception):
    """One step of the check did not do what an operator expects."""


def run(cli: Path, work: Path, env: dict[str, str], *args: str, expect: int = 0) -> str:
    """Run ``strongroom ARGS`` from ``work``; its stdout, or ``CheckFailed`` with its stderr."""
    done = subprocess.run(
        [str(cli), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != expect:
        raise CheckFailed(f"strongroom {args[0]} exited {done.returncode}:\n{done.stderr.strip()}")
    print(f"wheel-check: strongroom {' '.join(args)}: ok", file=sys.stderr)
    return done.stdout


def base_env(work: Path) -> dict[str, str]:
    """Only what a shell needs: no PYTHONPATH, no strongroom or libpq variables of the caller."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    (work / "home").mkdir(parents=True)
    env["HOME"] = str(work / "home")
    return env


def exercise(cli: Path, work: Path, cluster: PgCluster) -> None:
    """keygen, check, backup, metrics, verify, restore, a tenant's backup and restore, a drill,
    wal-fetch, an asynchronous wal-push; the restored tables equal the source's."""
    env = base_env(work)
    key = run(cli, work, env, "keygen").strip()
    if len(key) < 40:
        raise CheckFailed("strongroom keygen printed no key")
    shop = create_demo_database(cluster.url(), "wheel_shop", **SIZES)
    (work / "local").mkdir()
    env.update(
        DATABASE_URL=shop.admin_url,
        BACKUP_ENCRYPTION_KEY=key,
        BACKUP_LOCAL_PATH=str(work / "local"),
        STRONGROOM_LOCATIONS="local",
        STRONGROOM_CATALOG_URL=f"sqlite:///{work / 'catalog.sqlite3'}",
    )
    backup: dict[str, Any] = json.loads(run(cli, work, env, "backup", "--json", "--no-progress"))
    if backup.get("status") != "COMPLETED":
        raise CheckFailed(f"backup status {backup.get('status')}: {backup.get('error')}")
    run(cli, work, env, "check")
    textfile = work / "strongroom.prom"
    run(cli, work, env, "metrics", "--textfile", str(textfile))
    if f'database="{shop.name}"' not in textfile.read_text():
        raise CheckFailed("strongroom metrics --textfile wrote no metric of the backed-up database")
    venv = cli.parent.parent  # package data, not code: the admin's dashboard template
    if not list(venv.glob("lib/python*/site-packages/strongroom/templates/admin/*/dashboard.html")):
        raise CheckFailed("the wheel does not install the admin dashboard's template")
    run(cli, work, env, "verify", "--latest", "--no-progress")
    target = cluster.url("wheel_restored")
    run(cli, work, env, "restore", "--latest", "--target", target, "--no-progress")
    if table_digests(target) != table_digests(shop.admin_url):
        raise CheckFailed("the restored database differs from the source")
    exercise_tenant(cli, work, env, cluster, shop.admin_url)
    drilled = json.loads(run(cli, work, env, "drill", "--latest", "--json"))
    if drilled.get("ok") is not True:
        raise CheckFailed(f"the drill of the latest backup did not pass: {drilled}")
    # WAL: nothing is archived, so every location answers "not found": exit 1, as PostgreSQL wants
    wal_env = {**env, "STRONGROOM_PGDATA": str(cluster.data_dir)}
    run(cli, work, wal_env, "wal-fetch", "000000010000000000000001", str(work / "seg"), expect=1)
    exercise_uploader(cli, work, wal_env, cluster)


def exercise_uploader(cli: Path, work: Path, env: dict[str, str], cluster: PgCluster) -> None:
    """``wal-push`` with ``BACKUP_WAL_ASYNC`` on starts the installed ``wal-uploader``, which
    pushes the ``.ready`` segment; ``wal-fetch`` then gives back the same bytes."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    name = str(row[0])
    wal = work / "cluster" / "pg_wal"  # a copy: the uploader watches its archive_status
    (wal / "archive_status").mkdir(parents=True)
    (wal / name).write_bytes((cluster.data_dir / "pg_wal" / name).read_bytes())
    (wal / "archive_status" / f"{name}.ready").touch()
    spool = work / "spool"
    env = {**env, "BACKUP_WAL_SPOOL_DIR": str(spool), "BACKUP_WAL_ASYNC": "true"}
    env |= {"BACKUP_WAL_ASYNC_IDLE_SECONDS": "1", "BACKUP_WAL_ASYNC_WAIT_SECONDS": "60"}
    run(cli, work, env, "wal-push", str(wal / name))
    if not list((work / "local").glob(f"*/wal/*/{name}.manifest.json")):
        raise CheckFailed(f"wal-push returned before {name} was archived")
    run(cli, work, env, "wal-fetch", name, str(work / "fetched"))
    if (work / "fetched").read_bytes() != (wal / name).read_bytes():
        raise CheckFailed(f"wal-fetch gave back other bytes than the uploader pushed for {name}")
    log = spool / "uploader.log"
    if not log.exists() or log.read_text().strip():
        raise CheckFailed(f"the uploader did not start, or said: {log.read_text()[:500]}")


def exercise_tenant(
    cli: Path, work: Path, env: dict[str, str], cluster: PgCluster, source: str
) -> None:
    """One tenant backed up, then exported into a new database that holds that tenant only."""
    with psycopg.connect(source) as conn:
        row = conn.execute("SELECT id::text FROM tenants ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    tenant = str(row[0])
    run(cli, work, env, "tenant", "backup", tenant, "--json", "--no-progress")
    target = cluster.url("wheel_tenant")
    args = ("tenant", "restore", "--latest", "--tenant", tenant, "--target", target, "--json")
    restored = json.loads(run(cli, work, env, *args, "--no-progress"))
    with psycopg.connect(target) as conn:
        found = [str(r[0]) for r in conn.execute("SELECT id FROM tenants")]
    if restored.get("status") != "RESTORED" or found != [tenant]:
        raise CheckFailed(f"the tenant export holds {found}, not [{tenant!r}]: {restored}")


def main(argv: list[str]) -> int:
    cli, work = Path(argv[0]), Path(argv[1])
    work.mkdir(parents=True)
    try:
        with PgCluster() as cluster:
            exercise(cli, work, cluster)
    except CheckFailed as exc:
        print(f"wheel-check: FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        "wheel-check: the installed wheel backs up, verifies, restores, restores a tenant, "
        "drills, pushes WAL through its background uploader and fetches it",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
