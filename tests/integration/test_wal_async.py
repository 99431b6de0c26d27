"""``BACKUP_WAL_ASYNC``: the background uploader pushes ``.ready`` files, PostgreSQL's calls wait
for its records, and whenever it is gone or fails a file, the archiver's own call pushes it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_wal_archive import SERVER_USER, Archive, _give, _manifest, archive  # noqa: F401

from strongroom.core.wal_async import uploader_running
from strongroom.core.wal_spool import Spool

IDLE = 4.0


def _async_config(arc: Archive, name: str, **extra: str) -> Path:
    settings = {**arc.settings, "BACKUP_WAL_ASYNC": "true"}
    settings |= {"BACKUP_WAL_ASYNC_IDLE_SECONDS": str(IDLE), **extra}
    return arc.write_config(arc.base / name, settings)


def _archive_command(arc: Archive, config: Path | None) -> None:
    command = "" if config is None else f"{arc.launcher} --config {config} wal-push %p"
    arc.pg.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
    arc.pg.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)


def _running(arc: Archive) -> bool:
    """Looked at only once the lock file exists (the server's user creates it, not the test)."""
    wal_dir = arc.pg.wal_dir
    lock = Spool(arc.spool).uploader_lock(wal_dir) if arc.spool.is_dir() else None
    return lock is not None and lock.exists() and uploader_running(Spool(arc.spool), wal_dir)


def _until(what: str, done: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.05)


def _uploader(arc: Archive, config: Path, **env: str) -> subprocess.Popen[bytes]:
    """``wal-uploader`` started by hand, as the server's OS user."""
    prefix = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
    argv = [*prefix, "env", *(f"{k}={v}" for k, v in env.items()), str(arc.launcher)]
    argv += ["--config", str(config), "wal-uploader", str(arc.pg.wal_dir)]
    return subprocess.Popen(argv, cwd=arc.pg.data_dir)


def _signal_uploaders(arc: Archive, sig: signal.Signals) -> None:
    """``sig`` to every uploader of this cluster (``runuser`` does not pass signals on)."""
    subprocess.run(["pkill", f"-{sig.name}", "-f", f"wal-uploader {arc.pg.wal_dir}"])


@pytest.fixture
def paused(archive: Archive) -> Iterator[Archive]:  # noqa: F811
    """Archiving paused (files stay ``.ready``); afterwards the module's command again and no
    uploader left running."""
    _archive_command(archive, None)
    yield archive
    _archive_command(archive, archive.config_file)
    _until("the uploader gone", lambda: not _running(archive), IDLE + 30)


def _stored_whole(arc: Archive, names: list[str]) -> None:
    for name in names:
        plain = hashlib.sha256((arc.pg.wal_dir / name).read_bytes()).hexdigest()
        for location in ("local", "r2", "b2"):
            assert len(arc.stored_keys(location, name)) == 2, (location, name)
            manifest = _manifest(arc, location, name)
            assert manifest.extra["plaintext_sha256"] == plain, (location, name)


def test_the_uploader_drains_a_backlog_and_leaves_when_idle(paused: Archive) -> None:
    arc = paused
    names = [arc.switch() for _ in range(4)]
    failed_before = arc.archiver()[2]
    _archive_command(arc, _async_config(arc, "async.env"))
    arc.wait_archived(names[-1])
    assert arc.archiver()[2] == failed_before  # no call failed
    _stored_whole(arc, names)
    assert _running(arc)  # it stays for BACKUP_WAL_ASYNC_IDLE_SECONDS after its last push
    _until("the idle uploader gone", lambda: not _running(arc), IDLE + 15)
    assert not list((arc.spool / "failed").glob("*"))


def test_a_killed_uploader_leaves_nothing_half_done_and_archiving_goes_on(
    paused: Archive,
) -> None:
    arc = paused
    names = [arc.switch() for _ in range(3)]
    config = _async_config(arc, "async-long.env", BACKUP_WAL_ASYNC_IDLE_SECONDS="600")
    first = _uploader(arc, config)
    try:
        pushed = arc.spool / "pushed"
        _until("the uploader's first record", lambda: any(pushed.glob("0*")))  # at work
    finally:
        _signal_uploaders(arc, signal.SIGKILL)
        first.wait(10)
    _until("the lock gone with the process", lambda: not _running(arc), 10)
    failed_before = arc.archiver()[2]
    _archive_command(arc, _async_config(arc, "async.env"))
    arc.wait_archived(names[-1])
    assert arc.archiver()[2] == failed_before
    _stored_whole(arc, names)


def test_a_file_the_uploader_fails_is_pushed_by_the_archivers_own_call(paused: Archive) -> None:
    arc = paused
    names = [arc.switch() for _ in range(2)]
    other = arc.base / "other-cluster"
    (other / "global").mkdir(parents=True)
    (other / "global" / "pg_control").write_bytes((7).to_bytes(8, "little") + bytes(8184))
    for path, mode in ((other, 0o700), (other / "global", 0o700)):
        _give(path, mode)
    _give(other / "global" / "pg_control", 0o600)
    config = _async_config(arc, "async-long.env", BACKUP_WAL_ASYNC_IDLE_SECONDS="600")
    wrong = _uploader(arc, config, STRONGROOM_PGDATA=str(other))  # every file is foreign
    failed = arc.spool / "failed"
    try:
        _until("both files failed", lambda: {p.name for p in failed.glob("*")} >= set(names))
        assert "belongs to the cluster" in (failed / names[0]).read_text()
        before = arc.archiver()[2]
        _archive_command(arc, _async_config(arc, "async.env"))
        arc.wait_archived(names[-1])
        assert arc.archiver()[2] == before  # the calls pushed them, none failed
        assert not (set(names) & {p.name for p in failed.glob("*")})  # answered, forgotten
    finally:
        _signal_uploaders(arc, signal.SIGTERM)
        wrong.wait(30)
    _stored_whole(arc, names)


def test_with_archiving_paused_the_uploader_goes_no_further_than_push_ahead(
    paused: Archive,
) -> None:
    arc = paused
    extra = {"BACKUP_WAL_ASYNC_IDLE_SECONDS": "600", "BACKUP_WAL_PUSH_AHEAD": "2"}
    config = _async_config(arc, "async-ahead.env", BACKUP_WAL_PUSH_PARALLEL="1", **extra)
    names = [arc.switch() for _ in range(4)]
    pushed = arc.spool / "pushed"
    uploader = _uploader(arc, config)
    try:
        _until("two records", lambda: {p.name for p in pushed.glob("0*")} >= set(names[:2]))
        time.sleep(2.0)  # nobody asks for them: it must not take on the others
        assert {p.name for p in pushed.glob("0*")} & set(names) == set(names[:2])
    finally:
        _signal_uploaders(arc, signal.SIGTERM)
        uploader.wait(30)
