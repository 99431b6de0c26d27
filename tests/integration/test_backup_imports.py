"""A backup process loads only what the backup needs: its memory is mostly imported code.

The real ``strongroom backup`` runs as a child process against the session's PostgreSQL, with
a hook that writes ``sys.modules`` as the process exits: local only, it has loaded no Celery,
no Django admin, no boto3 or botocore (and not the cryptography bindings, nor the restore or
metrics code); with a cloud location configured, boto3 is loaded for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clisupport import clean_environ

from strongroom.core.crypto import generate_key
from strongroom.sandbox.demo_data import DemoDatabase
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

#: Runs the real command line; writes ``sys.modules`` to the file named by the first argument
#: as the process exits.
EXIT_HOOK = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sys.modules)))\n"
    "from strongroom.interfaces.cli import main\n"
    "sys.exit(main())\n"
)
NEVER = ("celery", "django.contrib.admin", "strongroom.admin", "strongroom.tasks")
CLOUD = ("boto3", "botocore", "s3transfer")
UNUSED = ("cryptography", "prometheus_client", "strongroom.services.restore")


def _backup(tmp_path: Path, env: dict[str, str], run: str) -> set[str]:
    """Back up with ``env``; the modules the process had loaded at its exit."""
    modules = tmp_path / f"modules-{run}.txt"
    done = subprocess.run(
        [sys.executable, "-c", EXIT_HOOK, str(modules), "backup", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "COMPLETED"
    return set(modules.read_text().split())


def _among(loaded: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {m for m in loaded if m.startswith(prefixes)}


def test_a_backup_imports_only_what_it_uses(
    tmp_path: Path, demo_db: DemoDatabase, seaweed: SeaweedServer
) -> None:
    (tmp_path / "local").mkdir()
    env = {
        **clean_environ(),
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite3'}",
        # configured but not named in STRONGROOM_LOCATIONS: still nothing of boto3
        **seaweed.settings("r2", "r2-backups"),
    }
    local = _backup(tmp_path, env, "local")
    assert "strongroom.services.backup" in local
    assert _among(local, NEVER + CLOUD + UNUSED) == set()

    cloud = _backup(tmp_path, {**env, "STRONGROOM_LOCATIONS": "local,r2"}, "cloud")
    assert {"boto3", "botocore"} <= cloud
    assert _among(cloud, NEVER + UNUSED) == set()
