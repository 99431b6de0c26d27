"""Retention, self-healing and the catalog rebuilt from storage, against real servers.

A throwaway PostgreSQL cluster (the RLS-forced demo shop), one SeaweedFS standing in for R2 and
B2 (each test under its own prefix), local disk in a temp dir and a fresh SQLite catalog per test.
Real backups are taken; only the retention clock is moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from strongroom.catalog import bootstrap
from strongroom.config import Config, load_config
from strongroom.core import crypto
from strongroom.core.manifest import MANIFEST_SUFFIX
from strongroom.sandbox.demo_data import DemoDatabase, table_digests, url_as
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    bootstrap.ensure_django(url)
    yield url


@pytest.fixture
def settings(
    tmp_path: Path, seaweed: SeaweedServer, demo_db: DemoDatabase, catalog: str
) -> dict[str, str]:
    """Environment-style settings: local disk, R2 and B2 (SeaweedFS), a new key."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    (tmp_path / "local").mkdir()
    return {
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local,r2,b2",
        **seaweed.settings("r2", "r2-backups"),
        "R2_PREFIX": prefix,
        **seaweed.settings("b2", "b2-backups"),
        "B2_PREFIX": prefix,
        "STRONGROOM_CATALOG_URL": catalog,
    }


@pytest.fixture
def config(settings: dict[str, str]) -> Config:
    return load_config(settings)


def _backup(config: Config, verify: bool = True) -> str:
    from strongroom.services.backup import run_full_backup
    from strongroom.services.verify import verify_backup

    report = run_full_backup(config)
    assert report.status == "COMPLETED", report.error
    if verify:
        assert verify_backup(config, report.id).ok
    return report.id


def _keys(config: Config, name: str) -> set[str]:
    from strongroom.services.runtime import build_locations

    locations, problems = build_locations(config.locations)
    assert not problems
    (loc,) = [loc for loc in locations if loc.name == name]
    return {info.key for info in loc.list("")}


def _ids_in(config: Config, name: str) -> set[str]:
    """Backup ids with both object and manifest in ``name``."""
    keys = _keys(config, name)
    manifests = {
        k.rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX)
        for k in keys
        if k.endswith(MANIFEST_SUFFIX)
    }
    objects = {
        k.rsplit("/", 1)[-1].split(".", 1)[0] for k in keys if not k.endswith(MANIFEST_SUFFIX)
    }
    assert manifests == objects, f"{name}: half-deleted copies {manifests ^ objects}"
    return objects


def _copy_status(backup_id: str) -> dict[str, str]:
    from strongroom.catalog import store

    return {c.location: c.status for c in store.copies_of(backup_id)}


def _later(days: float) -> Any:
    at = datetime.now(UTC) + timedelta(days=days)
    return lambda: at


# -- prune -------------------------------------------------------------------------------------


def test_prune_with_a_moved_clock_deletes_exactly_the_expected_objects(
    settings: dict[str, str],
) -> None:
    from strongroom.services.prune import prune_backups

    settings["B2_RETENTION_DAYS"] = "90"  # local 30, b2 90, r2 365: three different horizons
    config = load_config(settings)
    old, middle, newest = (_backup(config) for _ in range(3))
    everything = {old, middle, newest}
    for name in ("local", "r2", "b2"):
        assert _ids_in(config, name) == everything

    dry = prune_backups(config, dry_run=True, clock=_later(31))
    assert {(c.backup_id, c.location) for c in dry.deleted} == {(old, "local"), (middle, "local")}
    assert _ids_in(config, "local") == everything  # a dry run touches nothing

    report = prune_backups(config, clock=_later(31))
    assert report.ok, report.problems()
    assert {c.reason for c in report.deleted} == {"EXPIRED_VERIFIED_ELSEWHERE"}
    assert _ids_in(config, "local") == {newest}  # the newest verified backup stays everywhere
    assert _ids_in(config, "r2") == _ids_in(config, "b2") == everything
    assert _copy_status(old) == {"local": "DELETED", "r2": "VERIFIED", "b2": "VERIFIED"}

    assert prune_backups(config, clock=_later(91)).ok
    assert _ids_in(config, "b2") == {newest}
    assert _ids_in(config, "r2") == everything

    report = prune_backups(config, clock=_later(366))
    assert {(c.backup_id, c.location, c.reason) for c in report.deleted} == {
        (old, "r2", "EXPIRED_EVERYWHERE"),
        (middle, "r2", "EXPIRED_EVERYWHERE"),
    }
    for name in ("local", "r2", "b2"):
        assert _ids_in(config, name) == {newest}
    assert _copy_status(newest) == {"local": "VERIFIED", "r2": "VERIFIED", "b2": "VERIFIED"}
    assert not prune_backups(config, clock=_later(3000)).deleted


def test_prune_finishes_a_deletion_that_died_halfway(config: Config) -> None:
    """Intent recorded and manifest deleted, then the process died: the next prune rolls forward."""
    from strongroom.catalog import store
    from strongroom.services import prune
    from strongroom.services.runtime import build_locations

    old, newest = _backup(config), _backup(config)
    locations, _ = build_locations(config.locations)
    local = next(loc for loc in locations if loc.name == "local")
    row = store.get_copy(old, "local")
    store.record_event(old, prune.INTENT_EVENT, location="local", message="test: died here")
    local.delete(row.manifest_key)
    assert prune.pending_deletions() == [(old, "local", "test: died here")]

    # no retention is due at all now, yet the half-done deletion is finished first
    report = prune.prune_backups(config)
    assert [(c.backup_id, c.location, c.ok) for c in report.resumed] == [(old, "local", True)]
    assert not report.deleted
    assert _ids_in(config, "local") == {newest}
    assert _copy_status(old)["local"] == "DELETED"
    assert prune.pending_deletions() == []
    kinds = [e.kind for e in store.events_of(old) if e.location == "local"]
    assert kinds[-2:] == [prune.INTENT_EVENT, prune.DONE_EVENT]


def test_prune_keeps_an_expired_local_copy_until_a_cloud_copy_is_verified(config: Config) -> None:
    from strongroom.services.prune import prune_backups

    unverified = _backup(config, verify=False)
    newest = _backup(config)
    report = prune_backups(config, clock=_later(31))
    assert report.plan.decision(unverified, "local").reason == "NO_VERIFIED_ELSEWHERE"
    assert _ids_in(config, "local") == {unverified, newest}


# -- heal --------------------------------------------------------------------------------------


def test_a_deleted_cloud_copy_is_healed_from_local_and_verifies(
    config: Config, settings: dict[str, str], seaweed: SeaweedServer
) -> None:
    from strongroom.catalog import store
    from strongroom.services.heal import heal_backups
    from strongroom.services.verify import verify_backup

    backup_id = _backup(config)
    row = store.get_copy(backup_id, "r2")
    client = seaweed.client()
    for key in (row.key, row.manifest_key):  # lost behind strongroom's back
        client.delete_object(Bucket="r2-backups", Key=f"{settings['R2_PREFIX']}/{key}")
    assert backup_id not in _ids_in(config, "r2")

    report = heal_backups(config, backup_id)
    assert report.ok, report.problems()
    assert [(r.location, r.source, r.problem) for r in report.healed] == [
        ("r2", "local", "object missing from storage")
    ]
    assert backup_id in _ids_in(config, "r2")
    assert _copy_status(backup_id)["r2"] == "VERIFIED"
    assert [e.location for e in store.events_of(backup_id, "healed")] == ["r2"]

    check = verify_backup(config, backup_id)
    assert check.ok and check.status == "VERIFIED", check.problems()
    assert heal_backups(config).repairs == []  # --all: nothing left to heal


def test_heal_all_replaces_a_corrupt_copy_found_by_verify(
    config: Config, settings: dict[str, str]
) -> None:
    from strongroom.catalog import store
    from strongroom.services.heal import heal_backups
    from strongroom.services.verify import verify_backup

    backup_id = _backup(config)
    path = Path(settings["BACKUP_LOCAL_PATH"]) / store.get_copy(backup_id, "local").key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not verify_backup(config, backup_id).ok
    assert _copy_status(backup_id)["local"] == "CORRUPT"

    report = heal_backups(config)
    assert [(r.location, r.source, r.ok) for r in report.repairs] == [("local", "r2", True)]
    assert verify_backup(config, backup_id).status == "VERIFIED"
    assert store.get_backup(backup_id).status == "VERIFIED"


# -- catalog rebuild and the no-catalog restore -------------------------------------------------


def _listing() -> dict[str, tuple[str, str, int | None, dict[str, str]]]:
    from strongroom.catalog import store

    return {
        b.id: (b.database, b.checksum, b.size_bytes, {c.location: c.key for c in b.copies.all()})
        for b in store.list_backups(None, None)
    }


def test_catalog_dropped_then_rebuilt_from_r2_lists_the_same_backups(
    config: Config, settings: dict[str, str], tmp_path: Path
) -> None:
    from strongroom.catalog import store
    from strongroom.services.rebuild import rebuild_catalog
    from strongroom.services.runtime import build_locations

    ids = [_backup(config) for _ in range(2)]
    before = _listing()
    assert set(before) == set(ids)
    # a manifest that does not authenticate (made with another key) is reported and skipped
    locations, _ = build_locations(config.locations)
    r2 = next(loc for loc in locations if loc.name == "r2")
    forged_key = store.get_copy(ids[0], "r2").manifest_key.replace(
        ids[0], "19990101T000000Z-f0f0f0"
    )
    document = r2.get_bytes(store.get_copy(ids[0], "r2").manifest_key)
    r2.put_bytes(forged_key, document.replace(ids[0].encode(), b"19990101T000000Z-f0f0f0"))

    Path(str(settings["STRONGROOM_CATALOG_URL"]).removeprefix("sqlite://")).unlink()
    fresh = f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}"
    bootstrap.ensure_django(fresh)  # the old catalog is gone: a new, empty one
    assert store.list_backups(None, None) == []

    report = rebuild_catalog(config, "r2")
    assert [s.key for s in report.skipped] == [forged_key]
    assert "authentication" in report.skipped[0].reason
    assert sorted(report.backups) == sorted(ids)
    assert _listing() == before
    for backup_id in ids:
        assert _copy_status(backup_id) == {"local": "STORED", "r2": "STORED", "b2": "STORED"}
        assert store.get_backup(backup_id).status == "COMPLETED"
    again = rebuild_catalog(config, "r2")  # idempotent
    assert sorted(again.backups) == sorted(ids) and _listing() == before


def test_restore_latest_from_r2_with_no_catalog_at_all(
    settings: dict[str, str], demo_db: DemoDatabase, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """The disaster-recovery path: only the package, the key and R2's credentials."""
    config = load_config(settings)
    _backup(config, verify=False)
    newest = _backup(config, verify=False)
    target = f"dr_{uuid.uuid4().hex[:10]}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),  # a new machine: no catalog anywhere
        "PYTHONPATH": str(SRC),
        "BACKUP_ENCRYPTION_KEY": settings["BACKUP_ENCRYPTION_KEY"],
        "STRONGROOM_LOCATIONS": "r2",
        "STRONGROOM_REQUIRED_LOCATIONS": "r2",
        **{k: v for k, v in settings.items() if k.startswith("R2_")},
    }
    target_url = url_as(pg_cluster.url(), dbname=target)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from strongroom.interfaces.cli import main; sys.exit(main())",
                "restore",
                "--latest",
                "--from",
                "r2",
                "--target",
                target_url,
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f'"id": "{newest}"' in done.stdout
        assert '"source": "r2"' in done.stdout
        assert table_digests(url_as(pg_cluster.url(), dbname=target)) == table_digests(
            demo_db.admin_url
        )
    finally:
        pg_cluster.drop_database(target)


# -- the command line ----------------------------------------------------------------------------


def test_cli_prune_heal_and_catalog_rebuild(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from strongroom.interfaces.cli import main

    first, newest = _backup(config), _backup(config)

    assert main(["prune", "--dry-run", "--json"], config=config) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] is True and doc["deleted"] == []
    assert {(d["backup_id"], d["location"], d["reason"]) for d in doc["decisions"]} == {
        (b, loc, "WITHIN_RETENTION") for b in (first, newest) for loc in ("local", "r2", "b2")
    }

    assert main(["heal", "--all", "--json"], config=config) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "checked": 2,
        "repairs": [],
        "wal": [],  # --all also back-fills WAL files: none archived here
    }

    assert main(["catalog", "rebuild", "--from", "b2", "--json"], config=config) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and set(doc["backups"]) == {first, newest}

    assert main(["heal", "no-such-backup"], config=config) == 2
    assert "no-such-backup is not in the catalog" in capsys.readouterr().err

    # the human forms
    assert main(["prune", "--dry-run"], config=config) == 0
    out = capsys.readouterr().out
    assert f"keep    local    {first}  WITHIN_RETENTION" in out
    assert "would delete 0 copies, kept 6" in out
    assert main(["heal", first], config=config) == 0
    assert "checked 1 backup(s): healed 0, failed 0" in capsys.readouterr().out
    assert main(["catalog", "rebuild", "--from", "local"], config=config) == 0
    assert "catalog rebuilt from local: 2 backup(s), 0 manifest(s) skipped" in (
        capsys.readouterr().out
    )


# -- scheduled tasks ---------------------------------------------------------------------------


def test_the_daily_heal_and_prune_tasks_run_the_services_with_the_environments_settings(
    config: Config,
    settings: dict[str, str],
    seaweed: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What beat runs at 04:00 and 05:00, called as a worker would run its body."""
    from strongroom.catalog import store
    from strongroom.tasks import heal_backups, prune_backups

    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    backup_id = _backup(config)
    row = store.get_copy(backup_id, "b2")
    seaweed.client().delete_object(Bucket="b2-backups", Key=f"{settings['B2_PREFIX']}/{row.key}")

    healed = heal_backups()
    assert healed["ok"] is True
    assert healed["healed"] == [f"b2:{backup_id}"]
    assert backup_id in _ids_in(config, "b2")

    pruned = prune_backups()  # nothing is past retention: everything is kept
    assert pruned == {"ok": True, "dry_run": False, "deleted": [], "kept": 3}
    assert all(backup_id in _ids_in(config, n) for n in ("local", "r2", "b2"))


# -- tenant backups: their own retention, healed, restored with no catalog ----------------------


def test_tenant_backups_pruned_by_their_own_horizon_healed_and_restored_with_no_catalog(
    config: Config,
    settings: dict[str, str],
    seaweed: SeaweedServer,
    demo_db: DemoDatabase,
    tmp_path: Path,
) -> None:
    """Local keeps tenant backups 8 weeks (full ones 30 days); a lost copy is healed; the
    newest one goes back into the live database from storage alone once the catalog is gone."""
    from strongroom.catalog import store
    from strongroom.services.heal import heal_backups
    from strongroom.services.prune import prune_backups
    from strongroom.services.tenant_backup import run_tenant_backup
    from strongroom.services.verify import verify_backup

    tenant = demo_db.tenants[0].id
    full = _backup(config)
    older, newer = (run_tenant_backup(config, tenant).id for _ in range(2))
    for backup_id in (older, newer):
        assert verify_backup(config, backup_id).ok
    assert _ids_in(config, "local") == {full, older, newer}

    report = prune_backups(config, clock=_later(31))  # past the full backup's 30 days only
    assert report.ok and not report.deleted, report.problems()
    report = prune_backups(config, clock=_later(57))  # past the tenant backups' 56 days
    assert {(c.backup_id, c.location) for c in report.deleted} == {(older, "local")}
    assert _ids_in(config, "local") == {full, newer}  # each series keeps its newest
    assert _ids_in(config, "r2") == _ids_in(config, "b2") == {full, older, newer}

    row = store.get_copy(newer, "b2")
    client = seaweed.client()
    for key in (row.key, row.manifest_key):  # lost behind strongroom's back
        client.delete_object(Bucket="b2-backups", Key=f"{settings['B2_PREFIX']}/{key}")
    healed = heal_backups(config)
    assert [(r.backup_id, r.location, r.ok) for r in healed.repairs] == [(newer, "b2", True)]
    assert verify_backup(config, newer).status == "VERIFIED"

    before = table_digests(demo_db.admin_url)
    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute("DELETE FROM sale_items WHERE tenant_id = %s", (tenant,))
    assert table_digests(demo_db.admin_url) != before
    env = {  # a new machine: no catalog anywhere, only the key and B2's credentials
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(SRC),
        "BACKUP_ENCRYPTION_KEY": settings["BACKUP_ENCRYPTION_KEY"],
        "STRONGROOM_LOCATIONS": "b2",
        "STRONGROOM_REQUIRED_LOCATIONS": "b2",
        **{k: v for k, v in settings.items() if k.startswith("B2_")},
    }
    done = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; from strongroom.interfaces.cli import main; sys.exit(main())",
            "tenant", "restore", "--latest", "--tenant", tenant, "--target", demo_db.admin_url,
            "--replace", "--json",
        ],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["id"], report["source"], report["status"]) == (newer, "b2", "RESTORED")
    assert table_digests(demo_db.admin_url) == before
