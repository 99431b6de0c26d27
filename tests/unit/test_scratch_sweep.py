"""A killed restore's scratch directory is removed by the next restore on the same host."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from strongroom.core import scratchdir


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def _left(base: Path, name: str, owner: str | None) -> Path:
    path = base / f"{scratchdir.PREFIX}{name}"
    path.mkdir()
    (path / "archive.dump").write_bytes(b"x" * 1024)
    if owner is not None:
        (path / scratchdir.OWNER_FILE).write_text(owner)
    return path


def test_only_directories_whose_owner_ended_on_this_host_are_swept(tmp_path: Path) -> None:
    host = socket.gethostname()
    killed = _left(tmp_path, "killed", f"{host} {_dead_pid()}")
    running = _left(tmp_path, "running", f"{host} {os.getpid()}")
    elsewhere = _left(tmp_path, "elsewhere", f"another-host-{host} {_dead_pid()}")
    unowned = _left(tmp_path, "unowned", None)
    garbled = _left(tmp_path, "garbled", "not a pid")
    unrelated = tmp_path / "somebody-elses"
    unrelated.mkdir()

    made = scratchdir.create(str(tmp_path))

    assert not killed.exists()
    assert all(p.is_dir() for p in (running, elsewhere, unowned, garbled, unrelated))
    assert made.is_dir() and made.name.startswith(scratchdir.PREFIX)
    assert (made / scratchdir.OWNER_FILE).read_text().split() == [host, str(os.getpid())]
    assert made.stat().st_mode & 0o777 == 0o700
    assert scratchdir.sweep(tmp_path) == []  # its own directory is kept while it runs
