"""Restore drills, end to end: ``strongroom drill`` restores into a throwaway database and drops it.

The command runs as a subprocess configured only through the environment, against the session's
real PostgreSQL cluster, with the demo shop as the backed-up database and local disk as the
only location. The drill server is the shop's own (the default). Nothing is mocked: a mismatch
is a manifest re-signed with the key, as the backup itself signs it; a killed drill is a real
SIGKILL while pg_restore runs (a ``pg_restore`` that waits, so the kill lands in that stage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from clisupport import CLI, Cli, clean_environ, command, require_cli

from strongroom.core.crypto import Keyring, generate_key
from strongroom.core.manifest import Manifest
from strongroom.sandbox.demo_data import DemoDatabase, create_demo_database
from strongroom.sandbox.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SIZES = {"tenants": 2, "customers_per_tenant": 10, "items_per_tenant": 10, "sales_per_tenant": 20}
TABLES = 5


@pytest.fixture(scope="module")
def shop(pg_cluster: PgCluster, app_password: str) -> Iterator[DemoDatabase]:
    name = f"drillshop_{uuid.uuid4().hex[:10]}"
    try:
        yield create_demo_database(pg_cluster.url(), name, app_password=app_password, **SIZES)
    finally:
        pg_cluster.drop_database(name)


@dataclasses.dataclass
class Webhook:
    url: str
    posts: list[dict[str, Any]]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A real local HTTP server that keeps every JSON body POSTed to it."""
    posts: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Webhook(f"http://127.0.0.1:{server.server_address[1]}/hook", posts)
    server.shutdown()
    server.server_close()


@pytest.fixture
def env(tmp_path: Path, shop: DemoDatabase, webhook: Webhook) -> dict[str, str]:
    require_cli()
    (tmp_path / "local").mkdir()
    return {
        **clean_environ(),
        "DATABASE_URL": shop.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite3'}",
        "BACKUP_NOTIFY_WEBHOOK_URL": webhook.url,
    }


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    return command(env, timeout=180)


def _json(done: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    assert done.returncode == code, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    return json.loads(done.stdout)


def _backup(cli: Cli) -> str:
    doc = _json(cli("backup", "--json", "--no-progress"))
    assert doc["status"] == "COMPLETED", doc["error"]
    return str(doc["id"])


def _drill_databases(pg_cluster: PgCluster) -> list[str]:
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        rows = conn.execute(
            r"SELECT datname FROM pg_database WHERE datname LIKE 'strongroom\_drill\_%'"
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _probe(done: subprocess.CompletedProcess[str], name: str = "drill") -> dict[str, Any]:
    (probe,) = [p for p in json.loads(done.stdout)["checks"] if p["name"] == name]
    return dict(probe)


def _catalog(env: dict[str, str], query: str, *params: Any) -> list[tuple[Any, ...]]:
    path = env["STRONGROOM_CATALOG_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return list(db.execute(query, params).fetchall())


def _table_rows(cli: Cli, backup_id: str) -> dict[str, int]:
    doc = _json(cli("show", backup_id, "--json"))
    return dict(doc["metadata"]["table_rows"])


# -- tests -------------------------------------------------------------------------------------


def test_a_good_backup_passes_its_drill_with_an_rto_is_marked_and_its_database_is_dropped(
    cli: Cli, pg_cluster: PgCluster, webhook: Webhook
) -> None:
    backup_id = _backup(cli)
    fresh = cli("check", "--json")
    assert fresh.returncode == 0, fresh.stdout
    assert "none due" in _probe(fresh)["detail"]
    assert "never" in cli("show", backup_id).stdout

    doc = _json(cli("drill", backup_id, "--json"))
    assert doc["status"] == "PASSED" and doc["ok"] is True and doc["backup_id"] == backup_id
    assert doc["kind"] == "full" and doc["mismatches"] == [] and doc["error"] == ""
    assert 0 < doc["rto_seconds"] < 120
    assert doc["target"].startswith("strongroom_drill_" + backup_id.rsplit("-", 1)[-1])
    assert doc["data"]["dropped"] is True and doc["data"]["tables"] == TABLES
    assert doc["data"]["source"] == "local"
    assert _drill_databases(pg_cluster) == []

    shown = _json(cli("show", backup_id, "--json"))
    assert shown["last_drill_ok"] is True
    assert shown["last_drill_at"] == doc["finished_at"]
    assert [d["id"] for d in shown["drills"]] == [doc["id"]]
    assert f"passed {doc['finished_at']} (drill {doc['id']}, RTO" in cli("show", backup_id).stdout
    listed = cli("list")
    assert listed.returncode == 0 and " ok " in listed.stdout.splitlines()[-2]
    done = cli("check", "--json")
    assert done.returncode == 0, done.stdout
    assert _probe(done)["ok"] is True
    assert f"drill {doc['id']} of backup {backup_id} passed" in _probe(done)["detail"]
    assert webhook.posts == []


def test_a_tenant_backup_drills_into_a_new_database_and_a_base_drill_needs_a_base_backup(
    cli: Cli, shop: DemoDatabase, pg_cluster: PgCluster
) -> None:
    tenant = str(shop.tenants[0].id)
    made = _json(cli("tenant", "backup", tenant, "--json", "--no-progress"))
    assert made["status"] == "COMPLETED", made["error"]
    rows = _table_rows(cli, made["id"])
    assert rows["public.tenants"] == 1 and rows["public.sales"] > 0

    doc = _json(cli("drill", "--latest", "--kind", "tenant", "--json"))
    assert doc["ok"] is True and doc["kind"] == "tenant" and doc["backup_id"] == made["id"]
    assert doc["data"]["tenant_id"] == tenant and doc["data"]["tables"] == len(rows)
    assert doc["rto_seconds"] > 0 and doc["data"]["dropped"] is True
    assert _drill_databases(pg_cluster) == []
    assert _json(cli("show", made["id"], "--json"))["last_drill_ok"] is True
    refused = cli("drill", made["id"], BACKUP_DRILL_TARGET_URL=shop.app_url)
    assert (
        refused.returncode == 2 and "(no CREATEDB): set BACKUP_DRILL_TARGET_URL" in refused.stderr
    )
    assert shop.app_url not in refused.stderr
    assert len(_json(cli("show", made["id"], "--json"))["drills"]) == 1  # refused: no record
    wrong = cli("drill", made["id"], "--kind", "full")
    assert wrong.returncode == 2 and "is a tenant backup, not full" in wrong.stderr

    done = cli("drill", "--latest", "--kind", "base")
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr
    assert errors[0] == (
        "strongroom: error: no restorable base backup in the catalog: run "
        "`strongroom base-backup` first"
    )


def test_rows_that_differ_from_the_manifest_fail_the_drill_name_the_table_notify_and_fail_check(
    cli: Cli, env: dict[str, str], pg_cluster: PgCluster, webhook: Webhook
) -> None:
    backup_id = _backup(cli)
    rows = _table_rows(cli, backup_id)
    (copy,) = _json(cli("show", backup_id, "--json"))["copies"]
    # The manifest now claims one more sale than the dump holds, signed with the key as the
    # backup signs it: to the drill this is exactly a dump that lost a row.
    path = Path(env["BACKUP_LOCAL_PATH"]) / copy["manifest_key"]
    ring = Keyring.from_strings(env["BACKUP_ENCRYPTION_KEY"])
    manifest = Manifest.from_document(path.read_bytes(), ring)
    claimed = {**manifest.table_rows, "public.sales": rows["public.sales"] + 1}
    path.write_bytes(dataclasses.replace(manifest, table_rows=claimed).to_document(ring))

    done = cli("drill", backup_id, "--json")
    doc = _json(done, code=14)
    assert doc["status"] == "FAILED" and doc["ok"] is False and doc["rto_seconds"] is None
    assert doc["mismatches"] == [
        {
            "table": "public.sales",
            "expected": rows["public.sales"] + 1,
            "found": rows["public.sales"],
        }
    ]
    assert "public.sales" in doc["error"]
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"strongroom: error: drill {doc['id']} of backup {backup_id} failed")
    assert "public.sales (expected" in last
    assert doc["data"]["dropped"] is True and _drill_databases(pg_cluster) == []

    (post,) = webhook.posts
    assert post["status"] == "DRILL_FAILED" and post["backup_id"] == backup_id
    assert "public.sales" in post["reason"] and post["database"].startswith("drillshop_")
    assert _json(cli("show", backup_id, "--json"))["last_drill_ok"] is False
    check = cli("check", "--json")
    assert check.returncode == 8
    assert _probe(check)["ok"] is False and "public.sales" in _probe(check)["detail"]
    assert _probe(check, "freshness")["ok"] is True  # the drill alone fails it


def _stopped_in_pg_restore(env: dict[str, str], backup_id: str, tmp: Path, sig: int) -> int:
    """Run a drill whose pg_restore waits, so its database exists; send ``sig``; its exit."""
    bindir, marker = tmp / "slow-bin", tmp / "pg_restore.pid"
    bindir.mkdir()
    shim = bindir / "pg_restore"
    shim.write_text(
        f"#!/bin/sh\necho $$ > {marker}.tmp && mv {marker}.tmp {marker}\nexec sleep 120\n"
    )
    shim.chmod(0o755)
    drill = subprocess.Popen(
        [str(CLI), "drill", backup_id],
        env={**env, "BACKUP_PG_BINDIR": str(bindir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and drill.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"pg_restore never started (drill exit {drill.poll()})"
        drill.send_signal(sig)
        return drill.wait(30)
    finally:
        drill.kill()
        drill.wait(10)
        if marker.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(marker.read_text()), signal.SIGKILL)


def test_a_drill_killed_by_sigkill_leaves_a_database_the_next_drill_drops(
    cli: Cli, env: dict[str, str], pg_cluster: PgCluster, tmp_path: Path
) -> None:
    backup_id = _backup(cli)
    assert _stopped_in_pg_restore(env, backup_id, tmp_path, signal.SIGKILL) == -signal.SIGKILL
    (left,) = _drill_databases(pg_cluster)
    ((killed_id, ok),) = _catalog(env, "SELECT id, ok FROM strongroom_drill WHERE target = ?", left)
    assert ok is None  # the killed drill never finished its record

    doc = _json(cli("drill", "--latest", "--json"))
    assert doc["ok"] is True and doc["data"]["swept"] == [left]
    assert _drill_databases(pg_cluster) == []
    ((ok, error),) = _catalog(env, "SELECT ok, error FROM strongroom_drill WHERE id = ?", killed_id)
    assert ok == 0 and f"drill {killed_id} was killed" in error and "is gone" in error


def test_a_drill_stopped_by_sigterm_drops_its_database_and_records_why(
    cli: Cli, env: dict[str, str], pg_cluster: PgCluster, tmp_path: Path
) -> None:
    backup_id = _backup(cli)
    assert _stopped_in_pg_restore(env, backup_id, tmp_path, signal.SIGTERM) == 143
    assert _drill_databases(pg_cluster) == []
    ((ok, error),) = _catalog(env, "SELECT ok, error FROM strongroom_drill")
    assert ok == 0 and error == "interrupted by SIGTERM"


def test_check_fails_when_no_drill_passed_within_the_max_age(cli: Cli, env: dict[str, str]) -> None:
    old = _backup(cli)
    first = _json(cli("drill", old, "--json"))
    assert first["ok"] is True
    _backup(cli)  # a fresh backup: freshness passes, only the drill rule can fail

    def ago(days: float) -> str:
        return (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.%f")

    with sqlite3.connect(env["STRONGROOM_CATALOG_URL"].removeprefix("sqlite:///")) as db:
        db.execute(
            "UPDATE strongroom_backup SET created_at = ?, finished_at = ? WHERE id = ?",
            (ago(10), ago(10), old),
        )
        db.execute(
            "UPDATE strongroom_drill SET started_at = ?, finished_at = ? WHERE id = ?",
            (ago(9), ago(9), first["id"]),
        )
    done = cli("check", "--json")
    assert done.returncode == 8
    assert _probe(done, "freshness")["ok"] is True
    detail = _probe(done)["detail"]
    assert _probe(done)["ok"] is False
    assert "no restore drill passed in the last 8 d (the last passed 9.0 d ago" in detail
    assert "strongroom drill --latest" in detail

    assert cli("check", BACKUP_DRILL_MAX_AGE_DAYS="10").returncode == 0
    assert cli("check", BACKUP_DRILL_MAX_AGE_DAYS="0").returncode == 2  # more than 0

    again = cli("drill", "--latest")
    assert again.returncode == 0, again.stderr
    assert " PASSED" in again.stdout.splitlines()[0]
    assert "s to a usable database" in again.stdout
    assert cli("check").returncode == 0
