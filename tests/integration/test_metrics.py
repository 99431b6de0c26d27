"""Prometheus metrics from the real catalog, real storage and the real server's archiver.

A real full backup of the demo shop into local disk and SeaweedFS (as R2), a backup that fails
because a required location is down, drill records and a ``wal_verify`` event: after each, the
exposition is parsed with ``prometheus_client``'s own parser and must carry the values the
catalog holds. The textfile is rewritten in a loop while another thread reads it: it is never
absent or partial, and each write replaces the file (a new inode), leaving no temporary behind.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clisupport import Cli, clean_environ, command
from prometheus_client.parser import text_string_to_metric_families

from strongroom.catalog import bootstrap
from strongroom.config import Config, load_config
from strongroom.core import crypto
from strongroom.errors import StrongroomError
from strongroom.sandbox.demo_data import DemoDatabase
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.ports import free_port
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

#: Small retry budgets so a dead server is reported in seconds.
FAST = {"R2_MAX_ATTEMPTS": "2", "R2_CONNECT_TIMEOUT": "1", "R2_READ_TIMEOUT": "20"}

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


@pytest.fixture(scope="module")
def shop(pg_cluster: PgCluster, app_password: str) -> Iterator[DemoDatabase]:
    from strongroom.sandbox.demo_data import create_demo_database

    name = f"shop_{uuid.uuid4().hex[:10]}"
    try:
        yield create_demo_database(
            pg_cluster.url(), name, app_password=app_password, tenants=2, customers_per_tenant=5
        )
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def settings(tmp_path: Path, seaweed: SeaweedServer, shop: DemoDatabase) -> dict[str, str]:
    """Local disk and R2 (SeaweedFS), a new key and a catalog of this test's own."""
    (tmp_path / "local").mkdir()
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    bootstrap.ensure_django(catalog)
    return {
        "DATABASE_URL": shop.admin_url,
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local,r2",
        **seaweed.settings("r2", "r2-backups"),
        "R2_PREFIX": f"metrics-{uuid.uuid4().hex[:8]}",
        **FAST,
        "STRONGROOM_CATALOG_URL": catalog,
        "BACKUP_CHECK_TIMEOUT": "5",
    }


def _store() -> Any:
    from strongroom.catalog import store

    return store


def parse(text: str) -> Samples:
    """Every sample by name, then by its label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples


def scrape(config: Config, *, probe: bool = True) -> Samples:
    from strongroom.services import metrics

    return parse(metrics.exposition(metrics.collect(config, probe=probe)).decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(frozenset(labels.items()))


def test_metrics_follow_a_backup_a_failed_backup_drills_and_a_wal_check(
    settings: dict[str, str], shop: DemoDatabase
) -> None:
    from strongroom.services.backup import run_full_backup

    store = _store()
    config = load_config(settings)
    report = run_full_backup(config)
    assert report.status == "COMPLETED", report.error
    good = store.get_backup(report.id)
    full = {"database": shop.name, "kind": "full"}

    m = scrape(config)
    finished = good.finished_at.timestamp()
    assert value(m, "strongroom_backup_last_success_timestamp_seconds", **full) == finished
    assert value(m, "strongroom_backup_last_size_bytes", **full) == good.size_bytes > 0
    assert value(m, "strongroom_backup_last_duration_seconds", **full) == pytest.approx(
        good.backup_duration_seconds
    )
    assert value(m, "strongroom_backup_last_run_success", **full) == 1
    for location in ("local", "r2"):
        assert value(m, "strongroom_backup_copies", **full, location=location, status="STORED") == 1
        assert value(m, "strongroom_location_up", location=location) == 1
    # the server answers and archives nothing (archive_mode off): counters, but no timestamp
    assert value(m, "strongroom_wal_archived_segments_total", database=shop.name) == 0
    assert "strongroom_wal_last_archived_timestamp_seconds" not in m
    assert "strongroom_drill_last_success_timestamp_seconds" not in m
    assert "strongroom_wal_missing_segments" not in m

    # a run that fails: r2 required and down
    down = {
        **settings,
        "R2_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "STRONGROOM_REQUIRED_LOCATIONS": "local,r2",
    }
    with pytest.raises(StrongroomError):
        run_full_backup(load_config(down))
    failed = store.list_backups(shop.name, 1)[0]
    assert failed.status == "FAILED"
    m = scrape(load_config(down))
    assert value(m, "strongroom_backup_last_success_timestamp_seconds", **full) == finished
    assert value(m, "strongroom_backup_last_run_success", **full) == 0
    assert value(m, "strongroom_backup_last_run_timestamp_seconds", **full) == (
        failed.finished_at.timestamp()
    )
    assert value(m, "strongroom_backup_copies", **full, location="local", status="STORED") == 1
    assert value(m, "strongroom_location_up", location="r2") == 0
    assert value(m, "strongroom_location_up", location="local") == 1

    # a drill that passed, then one that failed: the pass and its RTO stay visible
    drill = store.start_drill(
        backup_id=good.id, kind="full", database=shop.name, target="strongroom_drill_x1"
    )
    passed = store.finish_drill(drill.pk, ok=True, rto_seconds=2.5)
    m = scrape(config, probe=False)
    assert value(m, "strongroom_drill_last_success_timestamp_seconds", **full) == (
        passed.finished_at.timestamp()
    )
    assert value(m, "strongroom_drill_last_rto_seconds", **full) == 2.5
    assert value(m, "strongroom_drill_last_run_success", **full) == 1
    assert "strongroom_location_up" not in m  # not probed

    again = store.start_drill(
        backup_id=good.id, kind="full", database=shop.name, target="strongroom_drill_x2"
    )
    mismatch = [{"table": "public.sales", "expected": 200, "found": 199}]
    store.finish_drill(again.pk, ok=False, mismatches=mismatch, error="public.sales differs")
    store.record_event(
        None,
        "wal_verify",
        data={"missing": {"local": 0, "r2": 3}, "newest": "000000010000000000000007"},
    )
    m = scrape(config, probe=False)
    assert value(m, "strongroom_drill_last_run_success", **full) == 0
    assert value(m, "strongroom_drill_last_rto_seconds", **full) == 2.5
    assert value(m, "strongroom_drill_last_success_timestamp_seconds", **full) == (
        passed.finished_at.timestamp()
    )
    assert value(m, "strongroom_wal_missing_segments", location="r2") == 3
    assert value(m, "strongroom_wal_missing_segments", location="local") == 0
    assert store.get_backup(good.id).last_drill_ok is False


def _cli(settings: dict[str, str], tmp_path: Path) -> Cli:
    (tmp_path / "home").mkdir(exist_ok=True)
    return command({**clean_environ(), "HOME": str(tmp_path / "home"), **settings}, timeout=60)


def test_the_textfile_is_replaced_atomically_and_never_seen_partial(
    settings: dict[str, str], tmp_path: Path, shop: DemoDatabase
) -> None:
    from strongroom.services import metrics

    store = _store()
    run = store.start_backup(backup_type="FULL_DATABASE", database=shop.name)
    store.finish_backup(run.id, status="COMPLETED", size_bytes=4096)
    folder = tmp_path / "textfiles"
    folder.mkdir()
    path = folder / "strongroom.prom"

    done = _cli(settings, tmp_path)("metrics", "--textfile", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    m = parse(path.read_text())
    full = {"database": shop.name, "kind": "full"}
    assert value(m, "strongroom_backup_last_size_bytes", **full) == 4096
    assert value(m, "strongroom_location_up", location="r2") == 1

    registry = metrics.collect(load_config(settings), probe=False)
    # Held open so its inode cannot be reused by the next file: once the
    # textfile is replaced atomically, this one has no name left.
    first = path.open("rb")
    stop = threading.Event()
    writes = 0

    def rewrite() -> None:
        nonlocal writes
        while not stop.is_set():
            metrics.write_textfile(path, registry)
            writes += 1

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    reads, bad = 0, []
    # enough of both, however the GIL shares out on a loaded machine: a fixed two seconds once
    # saw 12 rewrites against 7,212 reads
    at_least, until = time.monotonic() + 2.0, time.monotonic() + 60.0
    try:
        while (now := time.monotonic()) < until and (now < at_least or writes <= 20 or reads <= 20):
            time.sleep(0)  # let the writer have the GIL between reads
            try:
                text = path.read_text()
            except FileNotFoundError:
                bad.append("absent")
                continue
            reads += 1
            if (
                not text.endswith("\n")
                or value(parse(text), "strongroom_backup_last_size_bytes", **full) != 4096
            ):
                bad.append(text[-120:])
    finally:
        stop.set()
        writer.join(10)
    assert writes > 20 and reads > 20, (writes, reads)
    assert bad == []
    with first:
        assert os.fstat(first.fileno()).st_nlink == 0
        assert not os.path.samestat(os.fstat(first.fileno()), path.stat())
    assert sorted(p.name for p in folder.iterdir()) == ["strongroom.prom"]  # no temporary left


def test_the_command_prints_the_metrics_and_refuses_a_missing_directory(
    settings: dict[str, str], tmp_path: Path
) -> None:
    cli = _cli(settings, tmp_path)
    done = cli("metrics", "--no-probe")
    assert done.returncode == 0, done.stderr
    m = parse(done.stdout)
    assert "strongroom_location_up" not in m
    assert value(m, "strongroom_metrics_collect_seconds") is not None

    missing = tmp_path / "no-such-dir" / "strongroom.prom"
    done = cli("metrics", "--textfile", str(missing))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"strongroom: error: --textfile {missing}: directory {missing.parent} does not exist; "
        "create it"
    ]
    assert not missing.parent.exists()


def test_the_wal_archive_age_is_the_servers_own_and_absent_when_it_does_not_answer(
    tmp_path: Path,
) -> None:
    """A second, small server that archives (to ``/bin/true``): its pg_stat_archiver, read."""
    import psycopg

    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    bootstrap.ensure_django(catalog)
    (tmp_path / "local").mkdir()
    base = {
        "STRONGROOM_LOCATIONS": "local",
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_CATALOG_URL": catalog,
        "BACKUP_CHECK_TIMEOUT": "2",
    }
    archiving = {"archive_mode": "on", "archive_command": "/bin/true"}
    with PgCluster(settings=archiving) as server:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
            conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 20
            row = None
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT last_archived_time, archived_count FROM pg_stat_archiver"
                ).fetchone()
                if row and row[0] is not None:
                    break
                time.sleep(0.1)
        assert row and row[0] is not None, "the server archived nothing in 20 s"
        m = scrape(load_config({**base, "DATABASE_URL": server.url()}), probe=False)
        db = {"database": "postgres"}
        archived = value(m, "strongroom_wal_last_archived_timestamp_seconds", **db)
        assert archived is not None and archived >= row[0].timestamp()
        assert value(m, "strongroom_wal_archived_segments_total", **db) >= row[1] >= 1
        assert value(m, "strongroom_wal_archive_failures_total", **db) == 0

    started = time.monotonic()
    gone = scrape(load_config({**base, "DATABASE_URL": server.url()}), probe=False)
    assert time.monotonic() - started < 5  # bounded by BACKUP_CHECK_TIMEOUT
    assert not [name for name in gone if name.startswith("strongroom_wal_")]
