"""``strongroom demo`` (what the README's first command runs), as an operator would run it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("strongroom")


def test_the_demo_backs_up_to_three_locations_verifies_and_restores_an_equal_database(
    tmp_path: Path,
) -> None:
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
    assert "every table equal to the source: yes. PASS" in out
    assert "DIFFERENT" not in out and "FAIL" not in out
    # Nothing left behind: the cluster, SeaweedFS and the local location lived in TMPDIR.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("strongroom-demo-")]


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
