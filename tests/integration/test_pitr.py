"""Base backups and point-in-time recovery against a real archiving cluster.

One cluster for the module, ``archive_mode = on`` with ``strongroom wal-push`` as its
``archive_command`` (run by the ``postgres`` OS user with only its config file), SeaweedFS as R2
and B2. The scenario is the issue's: data, base backup, batch A, a noted time, batch B, then
``pitr-restore`` into new directories, each started on its own port as the server's OS user: to
the time (A present, B absent, every table equal to the source at that time), to a restore
point's name, to an LSN, and to the end of the archive. Every server started here is stopped by
pid file (``pg_ctl stop``) even when an assertion fails. Last, the daily base backup's beat entry
is sent by a real ``celery beat`` and taken by a real worker (test_celery's process fixtures,
Redis as the broker) against this same cluster.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import test_celery
from test_celery import Celeryd

from strongroom import schedule
from strongroom.catalog import bootstrap, store
from strongroom.config import load_config
from strongroom.core import crypto
from strongroom.core.manifest import Manifest, manifest_key_for
from strongroom.core.wal import parse_lsn
from strongroom.errors import ExitCode
from strongroom.interfaces.cli import main
from strongroom.sandbox.demo_data import table_digests
from strongroom.sandbox.launcher import write_launcher
from strongroom.sandbox.pgcluster import PgCluster, archive_settings
from strongroom.sandbox.ports import free_port
from strongroom.sandbox.seaweed import SeaweedServer
from strongroom.services import base_backup
from strongroom.services.runtime import Runtime
from strongroom.services.verify import verify_backup
from strongroom.services.wal_verify import verify_wal

pytestmark = pytest.mark.integration
#: test_celery's fixtures under this module's names: real worker and beat processes (all killed
#: at the end), and a logical database of the session's Redis for their broker.
celery_processes = test_celery.celeryd
celery_broker_url = test_celery.redis_url

SERVER_USER = "postgres"
LOCATIONS = ("local", "r2", "b2")


def _give(path: Path, mode: int | None = None) -> None:
    """Hand ``path`` (recursively) to the server's OS user, as a real installation would."""
    if mode is not None:
        os.chmod(path, mode)
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SERVER_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


@dataclass
class Source:
    """The archiving cluster, its config file (as the server's user reads it) and ours."""

    pg: PgCluster
    base: Path
    launcher: Path
    config_file: Path
    settings: dict[str, str]
    scope: str = ""
    marks: dict[str, Any] = field(default_factory=dict)

    def config(self, **overrides: str) -> Any:
        return load_config({**self.settings, **overrides})

    def runtime(self, **overrides: str) -> Runtime:
        return Runtime.build(self.config(**overrides))

    def sql(self, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.pg.execute(query, params, dbname="shop")

    def switch_and_wait(self, timeout: float = 60) -> str:
        """Close the current segment and wait until PostgreSQL has seen it archived."""
        name = str(self.pg.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        deadline = time.monotonic() + timeout
        while True:
            last = self.pg.execute("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if last is not None and str(last)[:24] >= name:
                return name
            if time.monotonic() > deadline:
                log = self.pg.log_file.read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} not archived in {timeout} s (last {last}); log:\n{log}")
            time.sleep(0.2)


def _write_config(path: Path, settings: dict[str, str]) -> Path:
    """The config file the server's OS user reads (replaced whole, never half-written)."""
    partial = path.with_name(path.name + ".new")
    partial.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    _give(partial, 0o600)
    partial.replace(path)
    return path


def _main(source: Source, *argv: str, env: dict[str, str] | None = None) -> int:
    """``strongroom --config FILE ...`` in-process, with our own catalog (the environment wins
    over the file, as for an operator's shell)."""
    overrides = {"STRONGROOM_CATALOG_URL": source.settings["STRONGROOM_CATALOG_URL"], **(env or {})}
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        return main(["--config", str(source.config_file), *argv])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def source(seaweed: SeaweedServer) -> Iterator[Source]:
    base = Path(tempfile.mkdtemp(prefix="strongroom-pitr-", dir="/tmp"))
    _give(base, 0o700)
    (base / "local").mkdir()
    (base / "spool").mkdir()
    launcher = write_launcher(base / "strongroom")
    prefix = f"pitr-{uuid.uuid4().hex[:8]}"
    settings = {
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(base / "local"),
        **seaweed.settings("r2", "r2-backups"),
        **seaweed.settings("b2", "b2-backups"),
        "R2_PREFIX": prefix,
        "B2_PREFIX": prefix,
        "BACKUP_WAL_SPOOL_DIR": str(base / "spool"),
        "STRONGROOM_CATALOG_URL": f"sqlite:///{base}/catalog.sqlite3",
    }
    config_file = _write_config(base / "strongroom.env", settings)
    _give(base)
    command = f"{launcher} --config {config_file} wal-push %p"
    pg = PgCluster(settings=archive_settings(command, archive_timeout=60))
    try:
        pg.__enter__()
    except Exception as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)
    settings["DATABASE_URL"] = pg.url("shop")  # restore-point reads it from the file
    _write_config(config_file, settings)
    ours = {**settings, "STRONGROOM_CATALOG_URL": f"sqlite:///{base}/ours.sqlite3"}
    src = Source(pg, base, launcher, config_file, ours)
    src.scope = str(pg.execute("SELECT system_identifier FROM pg_control_system()")[0][0])
    pg.create_database("shop")
    src.sql("CREATE TABLE orders (id bigserial PRIMARY KEY, tenant int, batch text)")
    src.sql("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
    src.sql(
        "INSERT INTO orders (tenant, batch) SELECT g % 3, 'base' FROM generate_series(1, 300) g"
    )
    src.sql("INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 50) g")
    src.switch_and_wait()  # the archive's directories exist, made by the server's user
    bootstrap.ensure_django(ours["STRONGROOM_CATALOG_URL"])
    yield src
    pg.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def history(source: Source) -> Source:
    """The issue's scenario, once: base backup, batch A, a time, batch B, a point, batch C."""
    t0 = time.monotonic()
    report = base_backup.run_base_backup(source.config())
    source.marks["base_seconds"] = time.monotonic() - t0
    source.marks["backup"] = report
    source.sql("INSERT INTO orders (tenant, batch) SELECT g % 3, 'A' FROM generate_series(1, 40) g")
    source.sql("UPDATE notes SET body = 'A' WHERE id <= 10")
    source.marks["at_a"] = table_digests(source.pg.url("shop"))
    # The end of A's commit record: the insert position, since with synchronous_commit = off
    # (the sandbox's) pg_current_wal_lsn(), the write position, may not have reached it yet.
    source.marks["lsn"] = str(source.sql("SELECT pg_current_wal_insert_lsn()")[0][0])
    time.sleep(1.1)
    source.marks["time"] = datetime.now(UTC)
    time.sleep(1.1)
    source.sql("INSERT INTO orders (tenant, batch) SELECT g % 3, 'B' FROM generate_series(1, 25) g")
    source.sql("DELETE FROM notes WHERE id > 40")
    source.marks["at_b"] = table_digests(source.pg.url("shop"))
    assert _main(source, "restore-point", "before-c") == ExitCode.OK
    source.sql("INSERT INTO orders (tenant, batch) SELECT g % 3, 'C' FROM generate_series(1, 5) g")
    source.marks["at_c"] = table_digests(source.pg.url("shop"))
    source.switch_and_wait()
    return source


# -- a restored server, started as the server's OS user and always stopped ---------------------


@dataclass
class Restored:
    pgdata: Path
    port: int
    bindir: str

    def url(self, dbname: str = "shop") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def pg_ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = [str(Path(self.bindir) / "pg_ctl"), "-D", str(self.pgdata), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

    def start(self) -> None:
        socket = self.pgdata.parent / "socket"
        socket.mkdir(exist_ok=True)
        _give(socket, 0o700)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nunix_socket_directories = '{socket}'\n"
                "archive_mode = off\n"  # its timeline must not join the source's archive
            )
        _give(self.pgdata.parent)
        log = self.pgdata.parent / "server.log"
        out = self.pg_ctl("-l", str(log), "-w", "-t", "170", "start")
        if out.returncode != 0:
            pytest.fail(f"restored server did not start: {out.stderr}\n{_tail(log)}")
        deadline = time.monotonic() + 120
        while True:
            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"restored server never promoted:\n{_tail(log)}")
            time.sleep(0.2)

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.pg_ctl("-m", "immediate", "-w", "stop", timeout=60)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


@pytest.fixture
def restored_dirs() -> Iterator[list[Restored]]:
    started: list[Restored] = []
    yield started
    for server in started:
        server.stop()
        shutil.rmtree(server.pgdata.parent, ignore_errors=True)


def _pitr(
    source: Source,
    started: list[Restored],
    capsys: pytest.CaptureFixture[str],
    *target: str,
    env: dict[str, str] | None = None,
) -> tuple[Restored, dict[str, Any]]:
    """``strongroom pitr-restore ... --json`` into a new directory; the server started."""

    parent = Path(tempfile.mkdtemp(prefix="strongroom-pitr-restored-", dir="/tmp"))
    pgdata = parent / "data"
    argv = ["pitr-restore", "--pgdata", str(pgdata), *target]
    argv += ["--strongroom-path", str(source.launcher), "--json"]
    capsys.readouterr()
    t0 = time.monotonic()
    code = _main(source, *argv, env=env)
    seconds = time.monotonic() - t0
    out = capsys.readouterr()
    assert code == ExitCode.OK, out.err
    doc = json.loads(out.out)
    doc["measured_seconds"] = seconds
    bindir = str(Path(doc["start_command"][0]).parent)
    server = Restored(pgdata, free_port(), bindir)
    started.append(server)
    t0 = time.monotonic()
    server.start()
    doc["replay_seconds"] = time.monotonic() - t0
    return server, doc


# -- tests --------------------------------------------------------------------------------------


def test_base_backup_is_catalogued_with_its_wal_and_stored_everywhere(history: Source) -> None:
    report = history.marks["backup"]
    assert report.status == "COMPLETED", report.error
    record = store.get_backup(report.id)
    assert record.backup_type == "BASE_BACKUP" and record.database == history.scope
    meta = record.metadata
    assert meta["system_identifier"] == history.scope and meta["timeline"] == 1
    assert meta["start_lsn"] and meta["stop_lsn"] and meta["start_wal"].startswith("00000001")
    rt = history.runtime()
    for loc in rt.locations:
        copy = store.get_copy(report.id, loc.name)
        assert copy.status == "STORED", (loc.name, copy.error)
        assert copy.key.startswith(f"{history.scope}/base/")
        manifest = Manifest.from_document(loc.get_bytes(manifest_key_for(copy.key)), rt.keyring)
        assert manifest.kind == "base" and manifest.database == history.scope
        assert manifest.extra["stop_lsn"] == meta["stop_lsn"]
        assert "START WAL LOCATION" in manifest.extra["backup_label"]
        assert manifest.extra["wal_confirmed_in"] == ["local"]
        # compressed by the server (PostgreSQL 15): the tar's size, not the stream's, is raw
        assert manifest.extra["compressed_on"] == "server" and manifest.codec == "zstd"
        assert manifest.raw_size == record.raw_size_bytes
        assert manifest.raw_size > 4 * manifest.compressed_size
        assert manifest.codec_levels == {
            "1": {"raw_bytes": manifest.raw_size, "compressed_bytes": manifest.compressed_size}
        }
        for name in (meta["start_wal"], meta["stop_wal"]):
            loc.stat(base_backup.wal_manifest_key(history.scope, name))
    checked = verify_backup(history.config(), report.id)  # verify needs nothing kind-specific
    assert checked.ok and checked.status == "VERIFIED", checked.problems()
    (cluster,) = verify_wal(history.config(), scope=history.scope, deep=False).clusters
    assert cluster.gaps == []  # and wal-verify pairs the archive with this base backup:
    assert cluster.first_needed == dict.fromkeys(LOCATIONS, meta["start_wal"])


def test_pitr_to_a_time_has_batch_a_and_not_batch_b(
    history: Source, restored_dirs: list[Restored], capsys: pytest.CaptureFixture[str]
) -> None:
    at = history.marks["time"].isoformat()
    server, doc = _pitr(history, restored_dirs, capsys, "--target-time", at)
    assert doc["id"] == history.marks["backup"].id and doc["source"] == "local"
    assert doc["start"].endswith(f"pg_ctl -D {server.pgdata} start")
    auto = (server.pgdata / "postgresql.auto.conf").read_text()
    assert f"{history.launcher} --config {history.config_file} wal-fetch %f %p" in auto
    assert history.settings["BACKUP_ENCRYPTION_KEY"] not in auto
    assert table_digests(server.url()) == history.marks["at_a"]
    with psycopg.connect(server.url()) as conn:
        batches = dict(conn.execute("SELECT batch, count(*) FROM orders GROUP BY 1").fetchall())
    assert batches == {"base": 300, "A": 40}
    history.marks["rto"] = (doc["measured_seconds"], doc["replay_seconds"])


def test_pitr_to_an_lsn_has_batch_a_and_not_batch_b(
    history: Source, restored_dirs: list[Restored], capsys: pytest.CaptureFixture[str]
) -> None:
    lsn = history.marks["lsn"]
    server, doc = _pitr(history, restored_dirs, capsys, "--target-lsn", lsn)
    assert doc["id"] == history.marks["backup"].id and doc["target"] == f"lsn {lsn}"
    auto = (server.pgdata / "postgresql.auto.conf").read_text()
    assert f"recovery_target_lsn = '{lsn}'" in auto
    assert table_digests(server.url()) == history.marks["at_a"]
    with psycopg.connect(server.url()) as conn:
        batches = dict(conn.execute("SELECT batch, count(*) FROM orders GROUP BY 1").fetchall())
    assert batches == {"base": 300, "A": 40}


def test_an_lsn_before_every_base_backup_is_refused_with_one_line(
    history: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = history.marks["backup"]
    capsys.readouterr()
    code = _main(history, "pitr-restore", "--pgdata", str(tmp_path / "new"), "--target-lsn", "0/10")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ExitCode.CONFIG
    assert len(err) == 1, err
    assert err[0].startswith("strongroom: error: no base backup ended before lsn 0/10 ")
    assert f"(the oldest, {stop.id}, stopped at LSN " in err[0]
    assert not (tmp_path / "new").exists()


def test_pitr_to_a_restore_point_with_no_catalog_and_one_location(
    history: Source, restored_dirs: list[Restored], capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = {  # the catalog's server is gone with the application: nothing listens there
        "STRONGROOM_CATALOG_URL": f"postgresql://strongroom@127.0.0.1:{free_port()}/catalog",
        "STRONGROOM_LOCATIONS": "b2",
        "STRONGROOM_REQUIRED_LOCATIONS": "b2",
    }
    server, doc = _pitr(history, restored_dirs, capsys, "--target-name", "before-c", env=fresh)
    assert doc["source"] == "b2"
    assert table_digests(server.url()) == history.marks["at_b"]


def test_pitr_to_the_end_of_the_archive_has_everything(
    history: Source, restored_dirs: list[Restored], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = _pitr(history, restored_dirs, capsys, "--latest")
    assert table_digests(server.url()) == history.marks["at_c"]


def test_a_base_backup_compressed_by_the_client_restores_the_same(
    history: Source, restored_dirs: list[Restored], capsys: pytest.CaptureFixture[str]
) -> None:
    """The path of servers before 15 and of gzip: the whole tar through the pipe, its
    ``backup_manifest`` kept inside and read for the LSNs."""
    report = base_backup.run_base_backup(history.config(BACKUP_BASE_BACKUP_COMPRESS_ON="client"))
    assert report.status == "COMPLETED", report.error
    meta = store.get_backup(report.id).metadata
    assert meta["manifest"]["extra"]["compressed_on"] == "client"
    assert meta["manifest"]["codec_levels"]  # adaptive zstd in the client, level by level
    server, doc = _pitr(history, restored_dirs, capsys, "--backup", report.id, "--latest")
    assert doc["id"] == report.id
    assert (server.pgdata / "backup_manifest").is_file()  # only the client path keeps it
    assert table_digests(server.url()) == history.marks["at_c"]


def test_a_non_empty_directory_is_refused_with_one_line(
    history: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code = _main(history, "pitr-restore", "--pgdata", str(tmp_path), "--latest")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ExitCode.CONFIG
    assert err == [
        f"strongroom: error: {tmp_path} is not empty: pitr-restore writes only "
        "into a new or empty directory"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_base_backup_fails_when_its_wal_is_missing_in_a_required_location(
    history: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = {
        "R2_PREFIX": f"nowal-{uuid.uuid4().hex[:8]}",
        "STRONGROOM_REQUIRED_LOCATIONS": "local,r2",
        "BACKUP_WAL_CONFIRM_TIMEOUT": "1",
    }
    capsys.readouterr()
    assert _main(history, "base-backup", "--json", env=elsewhere) == ExitCode.BACKUP_INCOMPLETE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("strongroom: error: the base backup's WAL is not")
    assert "r2: 0000000100" in err[0] and "BACKUP_WAL_CONFIRM_TIMEOUT" in err[0]
    failed = store.list_backups(history.scope, 1)[0]
    assert failed.status == "FAILED" and "not archived" in failed.error
    rt = history.runtime(**elsewhere)
    for loc in rt.locations:
        assert not [i.key for i in loc.list(f"{history.scope}/base/") if failed.id in i.key]


def test_a_base_backup_stuck_on_a_failing_archive_command_is_stopped_in_time(
    history: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    """pg_basebackup waits for its WAL to be archived: forever, unless strongroom stops it."""
    history.pg.execute("ALTER SYSTEM SET archive_command = 'false'")
    history.pg.execute("SELECT pg_reload_conf()")
    try:
        capsys.readouterr()
        code = _main(history, "base-backup", env={"BACKUP_BASE_BACKUP_TIMEOUT": "4"})
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        history.pg.execute("ALTER SYSTEM RESET archive_command")
        history.pg.execute("SELECT pg_reload_conf()")
    assert code == ExitCode.FAILED
    assert err == [
        "strongroom: error: pg_basebackup did not finish within 4 s and was stopped: is "
        "archive_command failing (pg_stat_archiver)? Else raise BACKUP_BASE_BACKUP_TIMEOUT"
    ]
    failed = store.list_backups(history.scope, 1)[0]
    assert failed.status == "FAILED"
    for loc in history.runtime().locations:
        assert not [i.key for i in loc.list(f"{history.scope}/base/") if failed.id in i.key]
    history.switch_and_wait()  # archiving resumes where it stopped


# -- the daily base backup, sent by a real beat, taken by a real worker -------------------------


def _beat_entries(schedule_file: Path) -> dict[str, Any]:
    import shelve

    with shelve.open(str(schedule_file)) as beat_store:
        return dict(beat_store["entries"])


def _age_entry(schedule_file: Path, name: str, days: float) -> None:
    """Pretend the entry last ran ``days`` ago (the beat host was down): it is due at once."""
    import shelve
    from datetime import timedelta

    with shelve.open(str(schedule_file), writeback=True) as beat_store:
        beat_store["entries"][name].last_run_at = datetime.now(UTC) - timedelta(days=days)


def _log(runner: Celeryd) -> str:
    return "no base backup finished; worker log:\n" + runner.procs[-2].output()[-3000:]


def _first_tick(runner: Celeryd, name: str, schedule_file: Path) -> dict[str, Any]:
    """One beat run until its schedule file is written; the entries it holds."""
    beat = runner.beat(name, schedule_file)
    beat.wait_for("beat: Waking up", timeout=30)
    beat.stop()
    return _beat_entries(schedule_file)


def test_the_daily_base_backup_runs_from_beat_on_a_worker_only_with_archiving_on(
    history: Source,
    celery_processes: Callable[..., Celeryd],
    celery_broker_url: str,
    tmp_path: Path,
) -> None:
    from celery.schedules import crontab

    broker = {"CELERY_BROKER_URL": celery_broker_url, "CELERY_RESULT_BACKEND": celery_broker_url}
    env = {**history.settings, **broker}
    beat_file = tmp_path / "beat-schedule"
    off = _first_tick(celery_processes(env), "beat-off", beat_file)
    assert schedule.ENTRY_NAME in off and schedule.BASE_BACKUP_ENTRY not in off

    runner = celery_processes({**env, "BACKUP_WAL_ARCHIVING": "on"})
    entry = _first_tick(runner, "beat-on", beat_file)[schedule.BASE_BACKUP_ENTRY]
    assert entry.task == schedule.BASE_BACKUP_TASK
    assert entry.schedule == crontab(hour=1, minute=0)
    assert entry.options == {"queue": "backups", "priority": 10}
    before = {b.id for b in store.list_backups(history.scope, None)}
    _age_entry(beat_file, schedule.BASE_BACKUP_ENTRY, days=2)
    runner.worker("base-worker")
    beat = runner.beat("beat-due", beat_file)
    beat.wait_for(f"Sending due task {schedule.BASE_BACKUP_ENTRY}", timeout=30)
    deadline = time.monotonic() + 180
    while True:
        new = [b for b in store.list_backups(history.scope, None) if b.id not in before]
        if new and new[0].status not in ("IN_PROGRESS", "PENDING"):
            break
        assert time.monotonic() < deadline, _log(runner)
        time.sleep(0.5)
    beat.stop()
    (record,) = new  # one entry sent, one backup taken (not also the full backup's entry)
    assert record.backup_type == "BASE_BACKUP" and record.status == "COMPLETED", record.error
    assert record.backup_job_id  # the worker's task id: it came through the broker
    meta = record.metadata
    rt = history.runtime()
    for loc in rt.locations:
        copy = store.get_copy(record.id, loc.name)
        manifest = Manifest.from_document(loc.get_bytes(manifest_key_for(copy.key)), rt.keyring)
        assert manifest.kind == "base" and manifest.id == record.id
        assert (manifest.extra["start_lsn"], manifest.extra["stop_lsn"]) == (
            meta["start_lsn"],
            meta["stop_lsn"],
        )
    previous = history.marks["backup"].id
    assert parse_lsn(meta["start_lsn"]) > parse_lsn(store.get_backup(previous).metadata["stop_lsn"])
