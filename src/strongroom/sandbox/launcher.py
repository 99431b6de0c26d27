"""A ``strongroom`` command the sandbox server's OS user can run (for archive/restore_command).

PostgreSQL runs ``archive_command`` and ``restore_command`` as its own OS user. When the tests
run as root, the virtualenv's ``python`` often links into a root-only directory (a pyenv under
``/root``), and the ``postgres`` user gets "bad interpreter: Permission denied". The launcher
written here runs this interpreter when every directory on its way is open to others, and
otherwise the system's Python of the same major and minor version, with this environment's
``site-packages`` added, so the same installed strongroom runs as that user.
"""

from __future__ import annotations

import os
import shlex
import site
import stat
import sys
from pathlib import Path

from strongroom.errors import PostgresError

#: Where Debian and Ubuntu put the system's interpreters.
SYSTEM_BIN = Path("/usr/bin")


def open_to_others(path: Path) -> bool:
    """Whether a user who is neither owner nor group may execute ``path`` (and reach it)."""
    resolved = path.resolve()
    for directory in resolved.parents:
        if not directory.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(resolved.stat().st_mode & stat.S_IXOTH)


def interpreter() -> str:
    """This Python if others may run it, else the system's of the same version."""
    current = Path(sys.executable)
    if open_to_others(current):
        return str(current)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = SYSTEM_BIN / version
    if system.exists() and open_to_others(system):
        return str(system)
    raise PostgresError(
        f"{current} cannot be run by other OS users and there is no {system}: install "
        f"{version} system-wide (apt-get install {version}) or a venv outside /root"
    )


def _open_the_way(path: Path) -> None:
    """Let other OS users traverse (not list) our own closed directories above ``path``.

    A checkout in a private temporary directory (``mktemp -d`` is 0700) would leave the
    server's OS user unable to import strongroom, and every archive_command would fail.
    """
    for directory in (path.resolve(), *path.resolve().parents):
        info = directory.stat()
        if info.st_uid == os.getuid() and not info.st_mode & stat.S_IXOTH:
            os.chmod(directory, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


def write_launcher(path: Path) -> Path:
    """Write an executable ``strongroom`` at ``path`` that any OS user can run."""
    sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
    for place in (*sites, str(Path(__file__).resolve().parents[1])):
        _open_the_way(Path(place))
    program = (
        "import site, sys\n"
        f"for p in {sites!r}: site.addsitedir(p)\n"
        "from strongroom.interfaces.entry import main\n"
        "sys.exit(main())\n"
    )
    command = f"exec {shlex.quote(interpreter())} -E -s -c {shlex.quote(program)}"
    script = f'#!/bin/sh\n{command} "$@"\n'
    path.write_text(script, encoding="utf-8")
    os.chmod(path, 0o755)
    return path
