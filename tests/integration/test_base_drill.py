"""Restore drills of physical base backups, against a real archiving cluster and SeaweedFS.

One archiving cluster for the module (``strongroom wal-push`` as its ``archive_command``, run
by the ``postgres`` OS user with only its config file), two small databases. Each drill runs
``pitr-restore --latest`` into ``BACKUP_DRILL_SCRATCH_DIR``, starts a throwaway server there and
must leave neither the directory nor a process behind: after every test, any process whose
command line names the scratch directory is killed and reported as a failure.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strongroom.catalog import bootstrap, store
from strongroom.config import load_config
from strongroom.core import crypto
from strongroom.errors import ExitCode
from strongroom.interfaces.cli import main
from strongroom.sandbox.launcher import write_launcher
from strongroom.sandbox.pgcluster import PgCluster, archive_settings
from strongroom.sandbox.seaweed import SeaweedServer
from strongroom.services import base_backup
from strongroom.services.runtime import Runtime

pytestmark = pytest.mark.integration

SERVER_USER = "postgres"


def _give(path: Path, mode: int | None = None) -> None:
    """Hand ``path`` (recursively) to the server's OS user, as a real installation would."""
    if mode is not None:
        os.chmod(path, mode)
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SERVER_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


@dataclass
class Source:
    pg: PgCluster
    base: Path
    launcher: Path
    config_file: Path
    catalog_url: str
    settings: dict[str, str]
    scope: str = ""

    @property
    def scratch(self) -> Path:
        return self.base / "scratch"

    def config(self) -> Any:
        return load_config(self.settings)

    def switch_and_wait(self, timeout: float = 60) -> None:
        name = str(self.pg.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        deadline = time.monotonic() + timeout
        while True:
            last = self.pg.execute("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if last is not None and str(last)[:24] >= name:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{name} not archived in {timeout} s (last {last})")
            time.sleep(0.2)


def _write_config(path: Path, settings: dict[str, str]) -> Path:
    partial = path.with_name(path.name + ".new")
    partial.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    _give(partial, 0o600)
    partial.replace(path)
    return path


@pytest.fixture(scope="module")
def source(seaweed: SeaweedServer) -> Iterator[Source]:
    base = Path(tempfile.mkdtemp(prefix="strongroom-base-drill-", dir="/tmp"))
    _give(base, 0o700)
    for sub in ("local", "spool", "scratch"):
        (base / sub).mkdir()
    launcher = write_launcher(base / "strongroom")
    prefix = f"bdrill-{uuid.uuid4().hex[:8]}"
    settings = {
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(base / "local"),
        **seaweed.settings("r2", "r2-backups"),
        **seaweed.settings("b2", "b2-backups"),
        "R2_PREFIX": prefix,
        "B2_PREFIX": prefix,
        "BACKUP_WAL_SPOOL_DIR": str(base / "spool"),
        "BACKUP_DRILL_SCRATCH_DIR": str(base / "scratch"),
        "BACKUP_DRILL_SERVER_TIMEOUT": "120",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{base}/catalog.sqlite3",
    }
    config_file = _write_config(base / "strongroom.env", settings)
    _give(base)
    pg = PgCluster(settings=archive_settings(f"{launcher} --config {config_file} wal-push %p"))
    try:
        pg.__enter__()
    except Exception as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)
    settings["DATABASE_URL"] = pg.url("shop")
    _write_config(config_file, settings)
    catalog = f"sqlite:///{base}/ours.sqlite3"
    src = Source(pg, base, launcher, config_file, catalog, {**settings})
    src.settings["STRONGROOM_CATALOG_URL"] = catalog
    src.scope = str(pg.execute("SELECT system_identifier FROM pg_control_system()")[0][0])
    pg.create_database("shop")
    pg.create_database("crm")
    pg.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, batch text)", dbname="shop")
    pg.execute("CREATE INDEX orders_batch ON orders (batch)", dbname="shop")
    pg.execute("CREATE SCHEMA sales", dbname="shop")
    pg.execute("CREATE TABLE sales.notes (id int PRIMARY KEY)", dbname="shop")
    pg.execute("CREATE TABLE people (id int PRIMARY KEY, name text)", dbname="crm")
    pg.execute(
        "INSERT INTO orders (batch) SELECT 'base' FROM generate_series(1, 300)", dbname="shop"
    )
    pg.execute("INSERT INTO sales.notes SELECT generate_series(1, 7)", dbname="shop")
    pg.execute(
        "INSERT INTO people SELECT g, md5(g::text) FROM generate_series(1, 20) g", dbname="crm"
    )
    src.switch_and_wait()
    bootstrap.ensure_django(catalog)
    try:
        yield src
    finally:
        pg.close()
        shutil.rmtree(base, ignore_errors=True)


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose command line names ``directory`` (a drill server or its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if str(directory).encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def clean(source: Source) -> Iterator[Source]:
    """After the test: nothing may be left in the scratch directory; kill whatever is."""
    yield source
    left = _processes_in(source.scratch)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    dirs = sorted(p.name for p in source.scratch.iterdir())
    for p in source.scratch.iterdir():
        shutil.rmtree(p, ignore_errors=True)
    assert not left and not dirs, f"left behind: processes {left}, directories {dirs}"


def _drill(source: Source, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """``strongroom --config FILE drill ... --json`` in-process, with our own catalog."""
    saved = os.environ.get("STRONGROOM_CATALOG_URL")
    os.environ["STRONGROOM_CATALOG_URL"] = source.catalog_url
    capsys.readouterr()
    try:
        args = ["--config", str(source.config_file), "drill", *argv]
        code = main([*args, "--strongroom-path", str(source.launcher), "--json"])
    finally:
        if saved is None:
            os.environ.pop("STRONGROOM_CATALOG_URL", None)
        else:
            os.environ["STRONGROOM_CATALOG_URL"] = saved
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else out.err)


@pytest.fixture(scope="module")
def good(source: Source) -> str:
    report = base_backup.run_base_backup(source.config())
    assert report.status == "COMPLETED", report.error
    return report.id


def test_a_base_drill_of_a_good_backup_passes_records_rows_and_rto_and_leaves_nothing(
    clean: Source, good: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = _drill(clean, capsys, "--latest", "--kind", "base")
    assert code == ExitCode.OK, doc
    assert doc["kind"] == "base" and doc["backup_id"] == good and doc["ok"] is True
    assert doc["database"] == clean.scope and doc["target"].startswith(
        str(clean.scratch / "strongroom_drill_")
    )
    data = doc["data"]
    assert data["rows"] == {
        "shop.public.orders": 300,
        "shop.sales.notes": 7,
        "crm.public.people": 20,
    }
    assert set(data["databases"]) == {"crm", "postgres", "shop"}
    assert {"orders_batch", "orders_pkey", "sales.notes_pkey"} <= set(data["amcheck"]["shop"])
    assert 0 < doc["rto_seconds"] <= data["seconds"]
    assert data["removed"] is True and data["stopped"] in ("fast", "immediate")
    assert isinstance(data["postmaster_pid"], int)
    backup = store.get_backup(good)
    assert backup.last_drill_ok is True
    assert store.newest_drills(kind="base", limit=1)[0].ok is True


def _drill_until_its_server_runs(source: Source, good: str, sig: int) -> tuple[Any, int]:
    """A ``strongroom drill`` process, sent ``sig`` once its server's pid is recorded."""
    env = {**os.environ, "STRONGROOM_CATALOG_URL": source.catalog_url}
    argv = [sys.executable, "-m", "strongroom", "--config", str(source.config_file), "drill"]
    argv += [good, "--strongroom-path", str(source.launcher)]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            running = store.newest_drills(kind="base", finished=False, limit=1)
            if running and (running[0].data or {}).get("postmaster_pid"):
                break
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the drill never started its server: {child.stderr.read()!r}")
            time.sleep(0.1)
        child.send_signal(sig)
        code = child.wait(timeout=120)
    finally:
        child.kill()
        child.wait()
    return running[0], code


def test_a_base_drill_stopped_by_sigterm_stops_its_server_and_removes_its_directory(
    clean: Source, good: str
) -> None:
    drill, code = _drill_until_its_server_runs(clean, good, signal.SIGTERM)
    assert code == ExitCode.TERMINATED
    record = store.get_drill(drill.pk)
    assert record.ok is False and "SIGTERM" in record.error
    assert not Path(drill.target).exists() and not _processes_in(clean.scratch)


def test_a_killed_base_drill_is_cleaned_up_by_the_next(
    clean: Source, good: str, capsys: pytest.CaptureFixture[str]
) -> None:
    killed, _ = _drill_until_its_server_runs(clean, good, signal.SIGKILL)
    postmaster = int(killed.data["postmaster_pid"])
    assert Path(killed.target).is_dir() and _processes_in(Path(killed.target))
    code, doc = _drill(clean, capsys, good)
    assert code == ExitCode.OK, doc
    assert doc["data"]["swept"] == [killed.target]
    assert not Path(killed.target).exists() and not _processes_in(clean.scratch)
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)
    record = store.get_drill(killed.pk)
    assert record.ok is False and "was killed: its process" in record.error


def test_a_base_drill_with_missing_wal_fails_is_recorded_and_leaves_nothing(
    clean: Source, good: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Last in the module: the newest base backup's first WAL file is gone everywhere."""
    clean.pg.execute("INSERT INTO orders (batch) VALUES ('late')", dbname="shop")
    report = base_backup.run_base_backup(clean.config())
    assert report.status == "COMPLETED", report.error
    start_wal = store.get_backup(report.id).metadata["start_wal"]
    deleted = 0
    for loc in Runtime.build(clean.config()).locations:
        for item in list(loc.list(f"{clean.scope}/wal/")):
            if start_wal in item.key:
                loc.delete(item.key)
                deleted += 1
    for spooled in (clean.base / "spool").rglob(f"{start_wal}*"):
        spooled.unlink()
    assert deleted >= 3
    code, doc = _drill(clean, capsys, report.id)
    assert code == ExitCode.DRILL_FAILED
    assert doc["ok"] is False and doc["error"].startswith("the restore failed: the drill server")
    drill = store.newest_drills(kind="base", limit=1)[0]
    assert drill.ok is False and drill.backup_id == report.id and drill.rto_seconds is None
    assert drill.error.startswith("the restore failed: the drill server exited during recovery")
    assert drill.data["removed"] is True
    assert store.get_backup(report.id).last_drill_ok is False
    assert not Path(drill.target).exists()
