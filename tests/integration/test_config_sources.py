"""Where settings come from, through the real entry points.

Inside the example Django project: Django settings win over the environment, which wins over the
config file, and every backend-declared name (``R2_PART_RETRIES``, ``B2_PART_RETRIES``, ...) is
read from Django settings. Standalone: ``strongroom --config FILE`` alone configures a backup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clisupport import CLI, clean_environ

from strongroom.core.crypto import generate_key
from strongroom.sandbox.demo_data import DemoDatabase

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example"

#: What the project resolves, printed as JSON by a process that set Django up.
_PROBE = """
import json, django
django.setup()
from strongroom.conf import config_from_django
from strongroom.services.runtime import build_locations
config = config_from_django()
locations, problems = build_locations(config.locations)
print(json.dumps({
    "problems": problems,
    "codec_level": config.codec_level,
    "restore_jobs": config.restore_jobs,
    "locations": {
        loc.name: {
            "part_retries": loc.part_retries,
            "max_attempts": loc.max_attempts,
            "connect_timeout": loc.connect_timeout,
            "read_timeout": loc.read_timeout,
        }
        for loc in locations if loc.kind == "s3"
    },
}))
"""


def _clean_env() -> dict[str, str]:
    return clean_environ()


def _private(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def _project(tmp_path: Path, settings: str, **env: str) -> dict[str, Any]:
    """Resolve the configuration in the example project, with ``settings`` added to its own."""
    (tmp_path / "site_settings.py").write_text(
        f"from config.settings import *  # noqa: F403\n{settings}", encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=EXAMPLE,
        env={
            **_clean_env(),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(EXAMPLE), str(ROOT / "src")]),
            "DJANGO_SETTINGS_MODULE": "site_settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'app.sqlite3'}",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_part_retries_and_every_backend_setting_are_read_from_django_settings(
    tmp_path: Path,
) -> None:
    settings = "".join(
        f'{env}_{name} = "{value}"\n'
        for env in ("R2", "B2")
        for name, value in (
            ("BUCKET_NAME", "shop-backups"),
            ("ACCESS_KEY_ID", "key-id"),
            ("SECRET_ACCESS_KEY", "secret-value"),
            ("ENDPOINT_URL", "http://127.0.0.1:9"),
        )
    )
    settings += (
        'R2_PART_RETRIES = "0"\nB2_PART_RETRIES = 7\nR2_MAX_ATTEMPTS = "2"\nB2_READ_TIMEOUT = 4.5\n'
        'STRONGROOM_LOCATIONS = "local,r2,b2"\n'
    )
    found = _project(tmp_path, settings)
    assert found["problems"] == {}
    assert found["locations"]["r2"]["part_retries"] == 0
    assert found["locations"]["b2"]["part_retries"] == 7
    assert found["locations"]["r2"]["max_attempts"] == 2
    assert found["locations"]["b2"]["read_timeout"] == 4.5


def test_django_settings_win_over_the_environment_which_wins_over_the_file(
    tmp_path: Path,
) -> None:
    file = _private(
        tmp_path / "strongroom.conf",
        "STRONGROOM_LOCATIONS=r2\n"
        "R2_BUCKET_NAME=shop-backups\n"
        "R2_ACCESS_KEY_ID=key-id\n"
        "R2_SECRET_ACCESS_KEY=secret-value\n"
        "R2_ACCOUNT_ID=0123abcd\n"
        "R2_PART_RETRIES=1\n"  # file, environment and settings: settings win
        "R2_CONNECT_TIMEOUT=3\n"  # file and environment: the environment wins
        "R2_MAX_ATTEMPTS=4\n"  # the file alone
        "BACKUP_RESTORE_JOBS=5\n",
    )
    found = _project(
        tmp_path,
        "R2_PART_RETRIES = 6\nBACKUP_COMPRESSION_LEVEL = 7\n",
        STRONGROOM_CONFIG=str(file),
        R2_PART_RETRIES="2",
        R2_CONNECT_TIMEOUT="8",
    )
    assert found["problems"] == {}
    r2 = found["locations"]["r2"]
    assert (r2["part_retries"], r2["connect_timeout"], r2["max_attempts"]) == (6, 8.0, 4)
    assert (found["restore_jobs"], found["codec_level"]) == (5, 7)


def test_a_config_file_alone_configures_the_command(tmp_path: Path, demo_db: DemoDatabase) -> None:
    """As ``archive_command`` will run it: no strongroom variable in the environment at all."""
    (tmp_path / "local").mkdir()
    (tmp_path / "home").mkdir()
    file = _private(
        tmp_path / "strongroom.conf",
        "# written by the operator for the server's commands\n"
        f"DATABASE_URL={demo_db.admin_url}\n"
        f"BACKUP_ENCRYPTION_KEY={generate_key()}\n"
        f"BACKUP_LOCAL_PATH={tmp_path / 'local'}\n"
        "STRONGROOM_LOCATIONS=local\n"
        f"STRONGROOM_CATALOG_URL=sqlite:///{tmp_path / 'catalog.sqlite3'}\n",
    )
    env = {**_clean_env(), "HOME": str(tmp_path / "home")}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    done = cli("--config", str(file), "backup", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["status"], doc["database"]) == ("COMPLETED", demo_db.name)
    assert (tmp_path / "local" / doc["copies"][0]["key"]).is_file()
    listed = cli("list", "--json", STRONGROOM_CONFIG=str(file))
    assert [b["id"] for b in json.loads(listed.stdout)] == [doc["id"]], listed.stderr

    file.chmod(0o640)
    refused = cli("--config", str(file), "list")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"strongroom: error: {file} is readable by group or others: chmod 600 {file}\n"
    )
