"""wal-push and wal-fetch run once per WAL file: they must not load what they do not use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from walsupport import FOREIGN, pushed_ahead_cluster

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


#: Runs the real command line; writes ``sys.modules`` to the file named by the first argument
#: as the process exits.
EXIT_HOOK = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sys.modules)))\n"
    "from strongroom.interfaces.cli import main\n"
    "sys.exit(main())\n"
)


def test_the_fast_path_of_a_real_call_imports_no_storage_backend(tmp_path: Path) -> None:
    """``wal-push`` for a file pushed ahead: answered from the spool, with nothing of the
    storage backends, boto3, the codecs, the cipher or Django loaded, even though the config
    file names three locations (the settings of each are a backend module's)."""
    segment, record, config = pushed_ahead_cluster(tmp_path)
    modules = tmp_path / "modules.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    argv = ["--config", str(config), "wal-push", str(segment)]
    done = subprocess.run(
        [sys.executable, "-c", EXIT_HOOK, str(modules), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert not record.exists()  # answered from the spool's record, which is used up
    loaded = set(modules.read_text().split())
    assert "strongroom.services.wal_cluster" in loaded
    unwanted = ("strongroom.core.storage", "strongroom.core.crypto", "strongroom.core.codecs")
    unwanted += ("boto3", "botocore", "django", "zstandard", "tink", "psycopg")
    assert {m for m in loaded if m.startswith(unwanted)} == set()
