"""The handshake between ``wal-push`` and the background uploader (``BACKUP_WAL_ASYNC``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from strongroom import __version__
from strongroom.config import load_config
from strongroom.core import crypto
from strongroom.core.wal_async import (
    holding_uploader_lock,
    self_command,
    uploader_running,
    wait_for_record,
)
from strongroom.core.wal_spool import Spool
from strongroom.errors import ConfigError

NAME = "000000010000000000000007"


def test_the_uploader_is_started_with_this_interpreter_and_module_path(tmp_path: Path) -> None:
    """The command runs the executable's entry point even from an empty environment and
    another directory (as a detached child of the archiver's shell)."""
    done = subprocess.run(
        [*self_command(), "--version"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"strongroom {__version__}")


def test_the_lock_says_whether_an_uploader_runs(tmp_path: Path) -> None:
    spool, wal, other = Spool(tmp_path / "spool"), tmp_path / "a" / "pg_wal", tmp_path / "b"
    assert not uploader_running(spool, wal)
    with holding_uploader_lock(spool, wal) as held:
        assert held and uploader_running(spool, wal)
        with holding_uploader_lock(spool, wal) as second:
            assert not second  # one uploader per pg_wal directory
        assert not uploader_running(spool, other / "pg_wal")  # another cluster's is its own
    assert not uploader_running(spool, wal)


def test_a_record_answers_and_a_failure_hands_the_file_back_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with holding_uploader_lock(spool, tmp_path):
        spool.mark_pushed(NAME, "ab" * 32, "stamp")
        assert wait_for_record(spool, NAME, tmp_path, None, 5.0)
        spool.forget_pushed(NAME)
        spool.mark_failed(NAME, "r2: no answer in 30 s")
        started = time.monotonic()
        assert not wait_for_record(spool, NAME, tmp_path, None, 5.0)
        assert time.monotonic() - started < 1.0


def test_a_running_uploader_is_waited_for_no_longer_than_the_setting(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with holding_uploader_lock(spool, tmp_path):
        started = time.monotonic()
        assert not wait_for_record(spool, NAME, tmp_path, None, 0.3)
        assert 0.3 <= time.monotonic() - started < 2.0


def test_the_settings_are_read_and_checked() -> None:
    base = {"DATABASE_URL": "postgresql://x@h/db", "BACKUP_ENCRYPTION_KEY": crypto.generate_key()}
    base["BACKUP_LOCAL_PATH"] = "/tmp/x"
    wal = load_config(base).wal
    assert (wal.async_push, wal.async_idle_seconds, wal.async_wait_seconds) == (False, 60.0, 30.0)
    wal = load_config({**base, "BACKUP_WAL_ASYNC": "on", "BACKUP_WAL_ASYNC_IDLE_SECONDS": "5"}).wal
    assert (wal.async_push, wal.async_idle_seconds) == (True, 5.0)
    with pytest.raises(ConfigError, match="BACKUP_WAL_ASYNC must be true or false"):
        load_config({**base, "BACKUP_WAL_ASYNC": "maybe"})
    with pytest.raises(ConfigError, match="BACKUP_WAL_ASYNC_WAIT_SECONDS"):
        load_config({**base, "BACKUP_WAL_ASYNC_WAIT_SECONDS": "0"})


def test_the_uploader_needs_a_spool() -> None:
    from strongroom.services.wal_uploader import run_uploader

    base = {"DATABASE_URL": "postgresql://x@h/db", "BACKUP_ENCRYPTION_KEY": crypto.generate_key()}
    config = load_config({**base, "BACKUP_LOCAL_PATH": "/tmp/x", "BACKUP_WAL_ASYNC": "true"})
    with pytest.raises(ConfigError, match="BACKUP_WAL_ASYNC needs BACKUP_WAL_SPOOL_DIR"):
        run_uploader(config, Path("/nowhere/pg_wal"))
