"""``manage.py check`` in the example project reports strongroom's settings problems early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from strongroom.core.crypto import generate_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example"


def _check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKUP_", "DATABASE_URL", "STRONGROOM_", "DJANGO_"))
    }
    base.update(
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT / "src")]),
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.sqlite3'}",
        **env,
    )
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "check"],
        cwd=EXAMPLE,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_good_key_passes(tmp_path: Path) -> None:
    done = _check(tmp_path, BACKUP_ENCRYPTION_KEY=generate_key())
    assert done.returncode == 0, done.stderr
    assert "strongroom." not in done.stdout + done.stderr


def test_a_missing_key_warns_but_does_not_block_the_project(tmp_path: Path) -> None:
    done = _check(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "strongroom.W001" in done.stdout + done.stderr
    assert "BACKUP_ENCRYPTION_KEY is not set" in done.stdout + done.stderr


def test_a_malformed_key_is_an_error_that_names_the_setting_and_hides_the_value(
    tmp_path: Path,
) -> None:
    bad = "not-a-key-" + "x" * 20
    done = _check(tmp_path, BACKUP_ENCRYPTION_KEY=bad)
    assert done.returncode == 1
    assert "strongroom.E002" in done.stderr
    assert "BACKUP_ENCRYPTION_KEY" in done.stderr
    assert bad not in done.stdout + done.stderr


def test_an_unknown_codec_is_an_error(tmp_path: Path) -> None:
    done = _check(tmp_path, BACKUP_ENCRYPTION_KEY=generate_key(), BACKUP_COMPRESSION="lz5")
    assert done.returncode == 1
    assert "strongroom.E001" in done.stderr
    assert "lz5" in done.stderr
