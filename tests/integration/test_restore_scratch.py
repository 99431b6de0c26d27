"""Restore's scratch space: configurable, and a bad one is one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from strongroom.core.crypto import generate_key
from strongroom.sandbox.demo_data import DemoDatabase, table_digests, url_as
from strongroom.sandbox.pgcluster import PgCluster

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("strongroom")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_restore_uses_the_configured_scratch_dir_and_names_a_bad_one(
    demo_db: DemoDatabase, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    (tmp_path / "local").mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "STRONGROOM_"))},
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite3'}",
    }
    assert _cli(env, "backup", "--no-progress").returncode == 0

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = url_as(demo_db.admin_url, dbname=f"r_{uuid.uuid4().hex[:8]}")
    bad = _cli(
        {**env, "BACKUP_RESTORE_SCRATCH_DIR": str(blocker / "sub")},
        "restore",
        "--latest",
        "--target",
        target,
    )
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1, bad.stderr  # one line, no traceback
    assert "cannot create a scratch directory in" in bad.stderr
    assert "BACKUP_RESTORE_SCRATCH_DIR" in bad.stderr

    good = _cli(
        {**env, "BACKUP_RESTORE_SCRATCH_DIR": str(scratch)},
        "restore",
        "--latest",
        "--target",
        target,
    )
    assert good.returncode == 0, good.stderr
    assert list(scratch.iterdir()) == []  # the archive is removed once pg_restore is done
    assert table_digests(target) == table_digests(demo_db.admin_url)
    pg_cluster.drop_database(target.rsplit("/", 1)[-1])
