"""``strongroom check`` names the files the background uploader could not push."""

from __future__ import annotations

from pathlib import Path

from strongroom.config import Config, load_config
from strongroom.core import crypto
from strongroom.core.wal_spool import Spool
from strongroom.services.health import uploader_failures


def _config(tmp_path: Path, *, asynchronous: bool) -> Config:
    return load_config(
        {
            "DATABASE_URL": "postgresql://x@h/db",
            "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
            "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
            "BACKUP_WAL_SPOOL_DIR": str(tmp_path / "spool"),
            "BACKUP_WAL_ASYNC": "true" if asynchronous else "false",
        }
    )


def test_failed_files_are_counted_oldest_first_until_a_call_pushes_them(tmp_path: Path) -> None:
    config = _config(tmp_path, asynchronous=True)
    assert uploader_failures(config) == ""
    spool = Spool(tmp_path / "spool")
    spool.mark_failed("000000010000000000000009", "r2: no answer in 30 s")
    spool.mark_failed("000000010000000000000008", "r2: no answer in 30 s")
    said = uploader_failures(config)
    assert "could not push 2 file(s) (oldest 000000010000000000000008)" in said
    spool.forget_failed("000000010000000000000008")
    spool.forget_failed("000000010000000000000009")
    assert uploader_failures(config) == ""


def test_nothing_is_said_with_the_uploader_off(tmp_path: Path) -> None:
    Spool(tmp_path / "spool").mark_failed("000000010000000000000009", "stale")
    assert uploader_failures(_config(tmp_path, asynchronous=False)) == ""
