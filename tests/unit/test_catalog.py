"""The catalog: ids, the run lifecycle, dead runs, JSON output, rebuild imports and bootstrap.

Runs against a real SQLite catalog in a temp dir, configured through ``ensure_django`` exactly
as the CLI does. Django is configured once per process; ``ensure_django`` re-targets it when
another module (the Celery integration tests) configured a different catalog first.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from strongroom.catalog import bootstrap
from strongroom.errors import BackupNotFound, ConfigError

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module", autouse=True)
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.sqlite3"
    bootstrap.ensure_django(f"sqlite:///{path}")
    return path


@pytest.fixture
def db() -> str:
    """A database name of its own, so tests never see each other's backups."""
    return f"shop_{uuid.uuid4().hex[:10]}"


def _store() -> Any:
    from strongroom.catalog import store

    return store


def _finished(database: str, status: str = "COMPLETED", **fields: Any) -> Any:
    store = _store()
    backup = store.start_backup(backup_type="FULL_DATABASE", database=database)
    return store.finish_backup(backup.id, status=status, **fields)


# -- ids ---------------------------------------------------------------------------------------


def test_backup_id_is_readable_utc_and_sorts_by_time() -> None:
    store = _store()
    at = datetime(2026, 11, 28, 2, 0, 0, tzinfo=UTC)
    backup_id = store.new_backup_id(at)
    assert re.fullmatch(r"20261128T020000Z-[0-9a-f]{6}", backup_id)
    paris = timezone(timedelta(hours=1))
    assert store.new_backup_id(datetime(2026, 11, 28, 3, 0, tzinfo=paris)).startswith(
        "20261128T020000Z-"
    )
    times = [at + timedelta(seconds=s) for s in (0, 1, 59, 3600, 86400 * 40)]
    ids = [store.new_backup_id(t) for t in times]
    assert sorted(ids) == ids
    with pytest.raises(ValueError, match="timezone-aware"):
        store.new_backup_id(datetime(2026, 11, 28, 2, 0))


def test_ids_of_one_second_differ() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert len({_store().new_backup_id(at) for _ in range(200)}) > 190


# -- lifecycle ---------------------------------------------------------------------------------


def test_start_copies_finish_verify_lifecycle(db: str) -> None:
    store = _store()
    started = store.start_backup(backup_type="FULL_DATABASE", database=db, job_id="celery-42")
    assert started.status == "IN_PROGRESS"
    assert (started.host, started.pid) == (socket.gethostname(), os.getpid())
    assert started.started_at is not None and started.started_at.tzinfo is not None
    assert started.heartbeat_at is not None
    assert store.running_backups(db) == [started.id]
    store.heartbeat(started.id)

    key = f"{db}/full/2026/11/28/{started.id}.dump.zst.enc"
    manifest_key = f"{db}/full/2026/11/28/{started.id}.manifest.json"
    for location in ("local", "r2", "b2"):
        store.record_copy(
            started.id,
            location,
            key=key,
            manifest_key=manifest_key,
            status="STORED",
            size_bytes=300,
            checksum="ab" * 32,
            duration_seconds=0.5,
        )
    store.record_copy(
        started.id, "b2", key=key, manifest_key=manifest_key, status="FAILED", error="timeout"
    )
    done = store.finish_backup(
        started.id,
        status="PARTIAL",
        error="b2: timeout",
        filename=key.rsplit("/", 1)[-1],
        size_bytes=300,
        raw_size_bytes=1000,
        compressed_size_bytes=250,
        checksum="ab" * 32,
        metadata={"codec": "zstd"},
    )
    assert done.status == "PARTIAL" and done.is_restorable
    assert done.finished_at is not None and done.backup_duration_seconds is not None
    assert done.backup_duration_seconds >= 0
    assert (done.local_path, done.r2_path, done.b2_path) == (key, key, "")
    assert store.running_backups(db) == []
    assert [c.location for c in store.copies_of(started.id)] == ["b2", "local", "r2"]
    assert [e.kind for e in store.events_of(started.id)] == ["partial"]

    for location in ("local", "r2"):
        store.record_copy_check(started.id, location, status="VERIFIED")
    verified = store.mark_verified(started.id)
    assert verified.status == "VERIFIED" and verified.verified_at is not None
    assert verified.error == ""
    copies = {c.location: c for c in store.copies_of(started.id)}
    assert copies["local"].status == "VERIFIED" and copies["local"].verified_at is not None
    assert copies["b2"].status == "FAILED"
    assert store.get_backup(started.id).backup_job_id == "celery-42"
    assert [e.kind for e in store.events_of(started.id)] == ["partial", "verified"]


def test_finish_rejects_unknown_fields_and_statuses(db: str) -> None:
    store = _store()
    backup = store.start_backup(backup_type="FULL_DATABASE", database=db)
    with pytest.raises(TypeError, match="sizee"):
        store.finish_backup(backup.id, status="COMPLETED", sizee=1)
    with pytest.raises(ValueError, match="DONE"):
        store.finish_backup(backup.id, status="DONE")
    with pytest.raises(ValueError, match="backup type"):
        store.start_backup(backup_type="INCREMENTAL", database=db)


def test_record_copy_of_unknown_backup_is_backup_not_found() -> None:
    with pytest.raises(BackupNotFound, match="nope"):
        _store().record_copy("nope", "local", key="k", manifest_key="m", status="STORED")


def test_copy_check_without_a_row_borrows_the_keys_of_another_location(db: str) -> None:
    store = _store()
    backup = _finished(db)
    store.record_copy(backup.id, "local", key="k.enc", manifest_key="k.json", status="STORED")
    store.record_copy_check(backup.id, "r2", status="CORRUPT", error="sha256 differs")
    row = store.get_copy(backup.id, "r2")
    assert (row.key, row.manifest_key, row.status, row.error) == (
        "k.enc",
        "k.json",
        "CORRUPT",
        "sha256 differs",
    )
    with pytest.raises(BackupNotFound, match="no copy in location b2"):
        store.get_copy(backup.id, "b2")


# -- sizes -------------------------------------------------------------------------------------


def test_compression_ratio_is_the_fraction_saved(db: str) -> None:
    store = _store()
    backup = _finished(db, raw_size_bytes=1000, compressed_size_bytes=250, size_bytes=260)
    assert backup.compression_ratio == pytest.approx(0.75)
    assert f"{backup.compression_ratio * 100:.1f}%" == "75.0%"  # the seed's manual test
    given = _finished(db, raw_size_bytes=1000, compressed_size_bytes=250, compression_ratio=0.5)
    assert given.compression_ratio == 0.5
    assert store.saved_fraction(0, 0) is None
    assert store.saved_fraction(100, 120) == 0.0  # incompressible: nothing saved, never negative


def test_get_size_mb(db: str) -> None:
    backup = _finished(db, size_bytes=5 * 1024 * 1024 + 512 * 1024)
    assert backup.get_size_mb() == 5.5
    assert _finished(db).get_size_mb() == 0.0


# -- reading -----------------------------------------------------------------------------------


def test_backup_to_dict_is_json_ready(db: str) -> None:
    store = _store()
    backup = _finished(
        db, raw_size_bytes=10, compressed_size_bytes=5, metadata={"pg_dump_log": "x" * 10}
    )
    store.record_copy(backup.id, "local", key="a", manifest_key="b", status="STORED")
    doc = store.backup_to_dict(store.get_backup(backup.id))
    text = json.dumps(doc)
    assert json.loads(text)["id"] == backup.id
    assert doc["status"] == "COMPLETED" and doc["restorable"] is True
    assert doc["finished_at"].endswith("Z")
    assert doc["copies"] == [
        {
            "location": "local",
            "key": "a",
            "manifest_key": "b",
            "status": "STORED",
            "size_bytes": None,
            "checksum": "",
            "error": "",
            "duration_seconds": None,
            "verified_at": None,
            "updated_at": doc["copies"][0]["updated_at"],
        }
    ]
    assert "pg_dump_log" not in doc["metadata"]
    assert store.backup_to_dict(backup, with_metadata=True)["metadata"]["pg_dump_log"]


def test_latest_backup_ignores_failed_and_in_progress(db: str) -> None:
    store = _store()
    with pytest.raises(BackupNotFound, match=f"no restorable backup of {db}"):
        store.latest_backup(db)
    good = _finished(db, "COMPLETED")
    failed = _finished(db, "FAILED", error="pg_dump exited 1")
    store.start_backup(backup_type="FULL_DATABASE", database=db)
    tenant = store.start_backup(backup_type="TENANT_BACKUP", database=db, tenant_id="t1")
    store.finish_backup(tenant.id, status="COMPLETED")
    assert store.latest_backup(db).id == good.id
    assert store.latest_backup(db, backup_type=None).id == tenant.id
    assert store.latest_backup(db, restorable=False).status == "IN_PROGRESS"
    assert failed.id in [b.id for b in store.list_backups(db)]
    assert [b.id for b in store.list_backups(db, limit=2)] == [
        b.id for b in store.list_backups(db)[:2]
    ]


def test_backup_not_found_is_one_clear_line() -> None:
    with pytest.raises(BackupNotFound) as caught:
        _store().get_backup("20990101T000000Z-000000")
    message = str(caught.value)
    assert "20990101T000000Z-000000 is not in the catalog" in message
    assert "strongroom list" in message and "\n" not in message
    assert caught.value.exit_code == 2


# -- dead runs ---------------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_detection_by_dead_pid_and_by_old_heartbeat(db: str) -> None:
    from strongroom.models import Backup

    store = _store()
    alive = store.start_backup(backup_type="FULL_DATABASE", database=db)
    dead_here = store.start_backup(backup_type="FULL_DATABASE", database=db)
    Backup.objects.filter(id=dead_here.id).update(pid=_dead_pid())
    silent_elsewhere = store.start_backup(backup_type="FULL_DATABASE", database=db)
    Backup.objects.filter(id=silent_elsewhere.id).update(
        host="another-machine", pid=1, heartbeat_at=datetime.now(UTC) - timedelta(hours=2)
    )
    fresh_elsewhere = store.start_backup(backup_type="FULL_DATABASE", database=db)
    Backup.objects.filter(id=fresh_elsewhere.id).update(host="another-machine", pid=1)

    stale = {b.id for b in store.stale_in_progress(timedelta(hours=1)) if b.database == db}
    assert stale == {dead_here.id, silent_elsewhere.id}

    silent_only = store.fail_stale(older_than=timedelta(hours=1), reason="the run died")
    assert silent_elsewhere.id in silent_only and dead_here.id not in silent_only
    failed = store.fail_stale(
        older_than=timedelta(hours=1), reason="the run died", include_dead_pids=True
    )
    assert dead_here.id in failed
    assert set(store.running_backups(db)) == {alive.id, fresh_elsewhere.id}
    dead = store.get_backup(dead_here.id)
    assert dead.status == "FAILED" and dead.error.startswith("the run died")
    assert "is gone" in dead.error
    assert store.get_backup(silent_elsewhere.id).error == "the run died"
    assert [e.kind for e in store.events_of(dead_here.id)] == ["marked_failed"]


def test_mark_failed_never_overwrites_a_finished_run(db: str) -> None:
    store = _store()
    done = _finished(db)
    assert store.mark_failed(done.id, "late reaper") is False
    assert store.get_backup(done.id).status == "COMPLETED"
    running = store.start_backup(backup_type="FULL_DATABASE", database=db)
    store.record_copy(running.id, "local", key="k", manifest_key="m", status="PENDING")
    assert store.mark_failed(running.id, "worker killed") is True
    assert store.get_copy(running.id, "local").status == "FAILED"
    assert store.running_backups(db, exclude=running.id) == []


def test_pid_alive() -> None:
    store = _store()
    assert store.pid_alive(os.getpid())
    assert not store.pid_alive(_dead_pid())
    assert not store.pid_alive(0)


# -- prune and heal support --------------------------------------------------------------------


def test_pending_copy_events_roll_forward_bookkeeping(db: str) -> None:
    store = _store()
    a, b = _finished(db), _finished(db)
    for backup in (a, b):
        store.record_copy(backup.id, "local", key="k", manifest_key="m", status="STORED")
        store.record_event(backup.id, "prune-started", location="local", message="expired")
    store.mark_copy_deleted(a.id, "local", event="pruned", message="expired")
    pending = [
        p for p in store.pending_copy_events("prune-started", "pruned") if p[0] in (a.id, b.id)
    ]
    assert pending == [(b.id, "local", "expired")]
    assert store.get_copy(a.id, "local").status == "DELETED"
    assert store.get_backup(a.id).local_path == ""
    assert a.id not in store.healable_backup_ids() and b.id in store.healable_backup_ids()


def test_copy_facts_carry_what_retention_needs(db: str) -> None:
    store = _store()
    full = _finished(db)
    tenant = store.start_backup(backup_type="TENANT_BACKUP", database=db, tenant_id="t7")
    for backup in (full, tenant):
        store.record_copy(backup.id, "r2", key="k", manifest_key="m", status="STORED")
    facts = {f.backup_id: f for f in store.copy_facts(db)}
    assert facts[full.id].series == "" and facts[full.id].backup_status == "COMPLETED"
    assert facts[tenant.id].series == "tenant:t7"
    assert facts[tenant.id].backup_status == "IN_PROGRESS"
    assert facts[full.id].created_at.tzinfo is not None


def _manifest(database: str, backup_id: str) -> Any:
    from strongroom.core.manifest import Manifest

    started = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    return Manifest(
        id=backup_id,
        kind="full",
        database=database,
        server_version="16.2",
        pg_dump_version="16.2",
        started_at=started,
        finished_at=started + timedelta(minutes=2),
        raw_size=1000,
        compressed_size=200,
        stored_size=230,
        sha256="cd" * 32,
        codec="zstd",
        codec_level=3,
        cipher="AES256_GCM_HKDF_1MB",
        key_id="0123456789abcdef",
        object_key=f"{database}/full/2026/03/01/{backup_id}.dump.zst.enc",
        table_rows={"public.tenants": 3},
    )


def test_import_manifest_is_idempotent_and_never_claims_verified(db: str) -> None:
    store = _store()
    manifest = _manifest(db, store.new_backup_id(datetime(2026, 3, 1, 2, 0, tzinfo=UTC)))
    manifest_key = manifest.object_key.replace(".dump.zst.enc", ".manifest.json")
    copies = {"r2": "STORED", "local": "MISSING"}
    first = store.backup_to_dict(
        store.import_manifest(manifest, manifest_key=manifest_key, copies=copies)
    )
    second = store.backup_to_dict(
        store.import_manifest(manifest, manifest_key=manifest_key, copies=copies)
    )
    for doc in (first, second):
        doc.pop("copies")
    assert first == second
    backup = store.get_backup(manifest.id)
    assert backup.status == "PARTIAL" and backup.error == "local: missing"
    assert backup.created_at == manifest.started_at
    assert backup.compression_ratio == pytest.approx(0.8)
    assert backup.metadata["table_rows"] == {"public.tenants": 3}
    assert backup.r2_path == manifest.object_key and backup.local_path == ""

    store.record_copy_check(manifest.id, "r2", status="VERIFIED")
    store.import_manifest(
        manifest, manifest_key=manifest_key, copies={"r2": "STORED", "local": "STORED"}
    )
    copies_now = {c.location: c.status for c in store.copies_of(manifest.id)}
    assert copies_now == {"r2": "VERIFIED", "local": "STORED"}
    assert store.get_backup(manifest.id).status == "COMPLETED"

    store.import_manifest(
        manifest, manifest_key=manifest_key, copies={"r2": "CORRUPT", "local": "MISSING"}
    )
    assert store.get_backup(manifest.id).status == "FAILED"


# -- bootstrap ---------------------------------------------------------------------------------


def test_catalog_urls_are_parsed_and_described_without_secrets() -> None:
    three = bootstrap.database_settings("sqlite:///var/lib/strongroom/c.sqlite3")
    four = bootstrap.database_settings("sqlite:////var/lib/strongroom/c.sqlite3")
    assert three["NAME"] == four["NAME"] == "/var/lib/strongroom/c.sqlite3"
    pg = bootstrap.database_settings(
        "postgresql://cat:s3cret@db.internal:6543/strongroom?sslmode=require"
    )
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "strongroom",
        "cat",
        "s3cret",
        "db.internal",
        "6543",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}
    assert "s3cret" not in bootstrap.describe(pg)
    assert bootstrap.database_settings("host=h dbname=d user=u")["NAME"] == "d"
    with pytest.raises(ConfigError, match="unsupported scheme 'mysql'"):
        bootstrap.database_settings("mysql://u:pw@h/d")
    with pytest.raises(ConfigError, match="names no database"):
        bootstrap.database_settings("postgresql://u@h")


def test_default_catalog_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert bootstrap.default_catalog_url() == f"sqlite:///{tmp_path}/strongroom/catalog.sqlite3"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".local" / "share" / "strongroom" / "catalog.sqlite3"
    assert bootstrap.default_catalog_url() == f"sqlite:///{expected}"


def test_unwritable_catalog_location_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create the catalog directory") as caught:
        bootstrap.prepare_catalog(bootstrap.database_settings(f"sqlite:///{blocker}/c.sqlite3"))
    assert "STRONGROOM_CATALOG_URL" in str(caught.value) and "\n" not in str(caught.value)


def test_sqlite_catalog_is_in_wal_mode(catalog: Path) -> None:
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_several_processes_write_one_fresh_catalog(tmp_path: Path) -> None:
    """The CLI and Celery workers share one SQLite file; first run included (migrations)."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    script = (
        "from strongroom.catalog.bootstrap import ensure_django\n"
        f"ensure_django({url!r})\n"
        "from strongroom.catalog import store\n"
        "for i in range(15):\n"
        "    b = store.start_backup(backup_type='FULL_DATABASE', database='shared')\n"
        "    store.record_copy(b.id, 'local', key='k', manifest_key='m', status='STORED')\n"
        "    store.finish_backup(b.id, status='COMPLETED', raw_size_bytes=10)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    workers = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [w.communicate(timeout=120)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], errors
    with sqlite3.connect(tmp_path / "shared.sqlite3") as conn:
        count = conn.execute(
            "SELECT count(*) FROM strongroom_backup WHERE status = 'COMPLETED'"
        ).fetchone()[0]
    assert count == 60


def test_migrations_are_complete() -> None:
    from django.core.management import call_command

    call_command("makemigrations", "strongroom", check=True, dry_run=True, verbosity=0)


def test_ensure_django_retargets_to_another_catalog(
    catalog: Path, tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two catalogs in one process (e.g. this module after the Celery tests): no cross-talk."""
    store = _store()
    here = _finished(db)
    try:
        bootstrap.ensure_django(f"sqlite:///{tmp_path / 'other.sqlite3'}")
        with pytest.raises(BackupNotFound):
            store.get_backup(here.id)
        there = _finished(db)
    finally:
        bootstrap.ensure_django(f"sqlite:///{catalog}")
    assert store.get_backup(here.id).id == here.id
    with pytest.raises(BackupNotFound):
        store.get_backup(there.id)
    bootstrap.ensure_django(f"sqlite:///{catalog}")  # same catalog again: nothing to do
    monkeypatch.delenv("STRONGROOM_CATALOG_URL", raising=False)
    bootstrap.ensure_django()  # none named: the catalog in use stays
    assert store.get_backup(here.id).id == here.id
