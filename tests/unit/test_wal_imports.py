"""wal-push and wal-fetch run once per WAL file: they must not load what they do not use."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("django", "celery", "boto3", "rich", "psycopg", "strongroom.catalog")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def test_the_archiver_commands_load_no_django_celery_boto3_rich_or_psycopg() -> None:
    loaded = _loaded_after(
        "from strongroom.interfaces import cli, wal_commands\n"
        "from strongroom.services import wal_push, wal_fetch, wal_cluster\n"
        "cli._parser()"
    )
    assert {m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)} == set()


def test_the_fast_path_loads_no_key_codec_or_location_code() -> None:
    loaded = _loaded_after("from strongroom.services import wal_cluster")
    for module in ("tink", "zstandard", "botocore", "strongroom.core.crypto"):
        assert module not in loaded, module
