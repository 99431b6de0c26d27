"""Import directions the layout promises: checked in a fresh interpreter, not by reading code."""

from __future__ import annotations

import subprocess
import sys


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(done.stdout.split())


def test_commands_do_not_import_the_cli_that_dispatches_to_them() -> None:
    assert "strongroom.interfaces.cli" not in _modules_after_import(
        "strongroom.interfaces.commands"
    )


def test_core_imports_no_django() -> None:
    core = (
        "strongroom.core.codecs, strongroom.core.crypto, strongroom.core.locking, "
        "strongroom.core.manifest, strongroom.core.pipeline, strongroom.core.postgres, "
        "strongroom.core.readback, strongroom.core.retention, strongroom.core.storage, "
        "strongroom.core.storage.local, strongroom.core.storage.s3, strongroom.core.streams"
    )
    assert not {m for m in _modules_after_import(core) if m.split(".")[0] == "django"}
