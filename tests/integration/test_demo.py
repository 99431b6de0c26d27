"""``strongroom demo`` (what the README's first command runs), as an operator would run it."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("strongroom")


def test_the_demo_backs_up_to_three_locations_verifies_and_restores_an_equal_database(
    tmp_path: Path,
) -> None:
    """Also one tenant restored in place beside untouched tenants, and a point in time."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200"}
    for name in ("DATABASE_URL", "BACKUP_ENCRYPTION_KEY", "STRONGROOM_CATALOG_URL"):
        env.pop(name, None)  # the demo must need nothing configured
    done = subprocess.run(
        [str(CLI), "demo"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Application role refused, as expected: role shop_app cannot bypass" in out
    assert ": VERIFIED," in out
    for location in ("local", "r2", "b2"):
        assert f"│ {location} " in out
    assert out.count("equal") >= 5  # one row per demo table, each equal to the source
    assert "every table equal to the source: yes." in out
    flat = " ".join(out.split())
    tenant = re.search(
        r"Tenant restore of \S+ in place from tenant backup \S+ in [\d.]+s \(damaged: "
        r"customers, sale_items, sales\): its tables equal to before the damage: yes; the other "
        r"4 tenants unchanged: yes\.",
        flat,
    )
    assert tenant, flat
    pitr = re.search(
        r"Point-in-time recovery to \S+ from base backup \S+ in [\d.]+s: batch A present "
        r"\(25 rows\): yes; batch B's damage absent \(60 of 60 inventory items back, 0 left in "
        r"the source\): yes; every table equal to the source at that time: yes\.",
        flat,
    )
    assert pitr, flat
    assert "Every step: PASS" in out
    assert "DIFFERENT" not in out and "FAIL" not in out and " NO" not in out
    # Nothing left behind: the cluster, SeaweedFS (its logs and caches included) and the local
    # location all lived in TMPDIR.
    assert list(tmp_path.iterdir()) == []


def test_the_demo_refuses_a_bad_scale_with_one_line() -> None:
    done = subprocess.run(
        [str(CLI), "demo", "--scale", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "strongroom: error: --scale must be 1 or more"


def test_demo_keep_leaves_servers_running_for_the_cli_and_stop_sh_removes_everything(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "400"}
    for name in ("DATABASE_URL", "BACKUP_ENCRYPTION_KEY", "STRONGROOM_CATALOG_URL"):
        env.pop(name, None)
    done = subprocess.run(
        [str(CLI), "demo", "--keep"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (base,) = [p for p in tmp_path.iterdir() if p.name.startswith("strongroom-demo-")]
    assert f"sh {base / 'stop.sh'}" in " ".join(done.stdout.split())
    assert (base / "strongroom.env").stat().st_mode & 0o777 == 0o600
    settings = dict(
        shlex.split(line)[0].split("=", 1)
        for line in (base / "strongroom.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    try:
        # the demo process is gone; its PostgreSQL and SeaweedFS still answer the CLI
        listed = subprocess.run(
            [str(CLI), "list", "--json"],
            env={**env, **settings},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        kinds = {b["backup_type"]: b for b in json.loads(listed.stdout)}
        assert sorted(kinds) == ["BASE_BACKUP", "FULL_DATABASE", "TENANT_BACKUP"]
        backup = kinds["FULL_DATABASE"]
        assert backup["status"] == "VERIFIED"
        verified = subprocess.run(
            [str(CLI), "verify", backup["id"], "--json"],
            env={**env, **settings},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verified.returncode == 0, verified.stderr
        checks = json.loads(verified.stdout)["checks"]
        assert [(c["location"], c["status"]) for c in checks] == [
            ("local", "VERIFIED"),
            ("r2", "VERIFIED"),
            ("b2", "VERIFIED"),
        ]
    finally:
        script = (base / "stop.sh").read_text()
        stopped = subprocess.run(["sh", str(base / "stop.sh")], capture_output=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert list(tmp_path.iterdir()) == []  # the demo's directory is gone, and nothing else left
    (removed,) = [line for line in script.splitlines() if line.startswith("rm -rf ")]
    for path in shlex.split(removed)[2:]:  # the cluster's directory (in /tmp when root) too
        assert not Path(path).exists(), path
    database = urlsplit(settings["DATABASE_URL"])
    with socket.socket() as probe:
        assert probe.connect_ex((database.hostname or "", database.port or 0)) != 0
    endpoint = urlsplit(settings["R2_ENDPOINT_URL"])
    with socket.socket() as probe:
        assert probe.connect_ex((endpoint.hostname or "", endpoint.port or 0)) != 0
    assert not Path(f"/tmp/seaweedfs-s3-{endpoint.port}.sock").exists()
