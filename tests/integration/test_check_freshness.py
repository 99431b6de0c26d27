"""``strongroom check`` as a monitoring system calls it: exit status by backup freshness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom.core.crypto import generate_key
from strongroom.sandbox.demo_data import DemoDatabase

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("strongroom")


@pytest.fixture
def env(demo_db: DemoDatabase, tmp_path: Path) -> dict[str, str]:
    local = tmp_path / "local"
    local.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "R2_", "B2_"))}
    return {
        **clean,
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(local),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite3'}",
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _freshness(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    (probe,) = [p for p in json.loads(done.stdout)["checks"] if p["name"] == "freshness"]
    return dict(probe)


def _age_backup(catalog_url: str, backup_id: str, hours: float) -> None:
    """Pretend the backup finished ``hours`` ago (the only way to move time for a subprocess)."""
    import sqlite3

    when = (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(catalog_url.removeprefix("sqlite:///")) as db:
        changed = db.execute(
            "UPDATE strongroom_backup SET finished_at = ?, created_at = ? WHERE id = ?",
            (when, when, backup_id),
        ).rowcount
    assert changed == 1


def test_check_fails_with_no_backup_passes_after_one_and_fails_once_it_is_too_old(
    env: dict[str, str],
) -> None:
    done = _cli(env, "check", "--json")
    assert done.returncode == 8
    assert _freshness(done)["ok"] is False
    assert "no successful backup" in str(_freshness(done)["detail"])

    backup = _cli(env, "backup", "--json", "--no-progress")
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["id"]
    done = _cli(env, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok   freshness        newest good backup {backup_id}" in done.stdout

    _age_backup(env["STRONGROOM_CATALOG_URL"], backup_id, hours=27)
    done = _cli(env, "check")
    assert done.returncode == 8
    assert "older than the 26 h limit" in done.stdout
    assert "FAIL freshness" in done.stdout

    done = _cli({**env, "BACKUP_MAX_AGE_HOURS": "48"}, "check")
    assert done.returncode == 0, done.stdout
