"""``BACKUP_WAL_ASYNC``: the handshake between ``wal-push`` and the background uploader.

PostgreSQL starts one ``archive_command`` per WAL file and waits for each. A call that must push
its file pays the whole start-up (imports, the key, two S3 clients: most of its CPU) for one
16 MB file, and while one call pushes a backlog, PostgreSQL's next call waits for all of it.
With ``BACKUP_WAL_ASYNC`` on, one long-lived process (``strongroom wal-uploader PG_WAL``, the
idea of pgBackRest's asynchronous archive-push and WAL-G's daemon) pushes every ``.ready`` file
as it appears and records each in the spool, and ``wal-push`` only waits for its file's record:
the start-up is paid once per stay of the uploader, and PostgreSQL's calls overlap the pushes.

Nothing depends on the uploader for correctness. A record is written only once the file is
durable in every required location (the same push as ``wal-push``'s own), and ``wal-push``
pushes the file itself, as without the uploader, whenever the uploader failed it (the spool's
``failed/<name>``), is not running and does not start, or takes longer than
``BACKUP_WAL_ASYNC_WAIT_SECONDS``. This module imports nothing heavy: the lean entry point
(:mod:`strongroom.interfaces.entry`) calls it before the CLI loads.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from strongroom.core.wal_spool import Spool

#: Seconds a started uploader has to take its lock (its own start-up, about 0.5 s) before
#: ``wal-push`` stops counting on it.
START_GRACE = 5.0
#: The first and the longest pause between looks for the record.
_PAUSE_FIRST, _PAUSE_MOST = 0.005, 0.05


def watched_dir(path: str) -> Path | None:
    """The ``pg_wal`` directory an uploader would watch for the WAL file at ``path`` (as
    PostgreSQL passes ``%p``), or ``None`` for a file elsewhere: ``wal-push`` pushes that one
    itself."""
    parent = Path(path).absolute().parent
    return parent if parent.name == "pg_wal" else None


def uploader_running(spool: Spool, wal_dir: Path) -> bool:
    """Whether an uploader of ``wal_dir`` holds its lock (released when its process ends,
    however it ends: no stale lock after a crash or SIGKILL)."""
    try:
        fd = os.open(spool.uploader_lock(wal_dir), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return False


@contextmanager
def holding_uploader_lock(spool: Spool, wal_dir: Path) -> Iterator[bool]:
    """The lock of ``wal_dir``'s uploader, held while the block runs; ``False`` when another
    process holds it."""
    fd = os.open(spool.uploader_lock(wal_dir), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def self_command() -> list[str]:
    """A command that runs this executable's entry point with this process's interpreter
    and module path, however this process was started (a console script, the ``-c`` launcher
    of a wheel installed elsewhere, ``python -m strongroom``)."""
    code = (
        f"import sys; sys.path[:0] = {sys.path!r}; "
        "from strongroom.interfaces.entry import main; sys.exit(main())"
    )
    return [sys.executable, "-E", "-s", "-c", code]


def start_uploader(spool: Spool, wal_dir: Path, config_file: str | None) -> None:
    """Start ``strongroom wal-uploader WAL_DIR`` detached from this call (its own session, so
    neither PostgreSQL's archiver nor its shell waits for it); it says what it has to say in
    the spool's ``uploader.log``. The configuration reaches it the way it reached this call:
    the same environment and ``--config`` file, never a value on its command line."""
    argv = self_command()
    if config_file:
        argv += ["--config", config_file]
    argv += ["wal-uploader", str(wal_dir)]
    with open(spool.uploader_log, "ab") as log:
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


def wait_for_record(
    spool: Spool, name: str, wal_dir: Path, config_file: str | None, wait_seconds: float
) -> bool:
    """``True`` once the uploader has recorded ``name`` as pushed; ``False`` when it failed
    the file, is not running and did not start (one start is tried), or ``wait_seconds``
    passed: the caller then pushes the file itself."""
    now = time.monotonic()
    deadline, started, seen, pause = now + wait_seconds, None, False, _PAUSE_FIRST
    while now < deadline:
        if spool.pushed_sha(name):
            return True
        if spool.failed(name):
            return False
        if uploader_running(spool, wal_dir):
            seen = True
        elif started is None:
            start_uploader(spool, wal_dir, config_file)
            started, seen = now, False
        elif seen or now - started > START_GRACE:
            return False  # the one it started ended (or never came up) without the record
        time.sleep(pause)
        pause = min(pause * 2, _PAUSE_MOST)
        now = time.monotonic()
    return False
