"""Scratch directories of restores: private, owned, and swept once their owner is gone.

A restore downloads a whole archive into one (``pg_restore -j`` needs a seekable file), and
removes it when it ends, however it ends, except when it is SIGKILLed. So each directory names
its owner (host and pid) in a small file, and the next restore on the same host removes every
one whose owner is no longer running: a killed restore costs disk until the next restore, not
until someone notices. A directory without an owner file, or owned on another host, is never
touched (it may be another machine's, sharing the disk, or not ours at all).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

PREFIX = "strongroom-restore-"
OWNER_FILE = ".strongroom-owner"


def create(parent: str | None) -> Path:
    """A new 0700 directory under ``parent`` (default: the system's), leftovers swept first.

    ``OSError`` when ``parent`` cannot hold one (the caller says which setting to change).
    """
    base = Path(parent or tempfile.gettempdir())
    sweep(base)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    (path / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")
    return path


def sweep(base: Path) -> list[Path]:
    """Remove the scratch directories under ``base`` whose owner on this host has ended."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in sorted(base.glob(PREFIX + "*")):
            if entry.is_dir() and not entry.is_symlink() and _owner_gone(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _owner_gone(path: Path) -> bool:
    try:
        host, pid = (path / OWNER_FILE).read_text(encoding="utf-8").split()
        number = int(pid)
    except (OSError, ValueError):
        return False
    return host == socket.gethostname() and not _running(number)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
