"""The schema a tenant is exported into: pg_restore's pre-data and post-data sections.

Exporting one tenant to a new database (a sandbox copy, data portability) needs the tables
before the rows and the indexes, keys, RLS and policies after them, as pg_restore does it
itself. Either archive carries that schema: a full backup's dump, or the schema-only archive a
tenant backup holds in its header (``schema_from_header``, from
:mod:`strongroom.core.tenant_format`). Ownership and grants are treated as
the full restore treats them (``--no-owner --no-acl``): the objects belong to the connecting
role, since the application role of the source may not exist on the target. Row-level security
survives: ``FORCE ROW LEVEL SECURITY`` is part of each table's definition (pre-data),
``ENABLE`` and the policies are post-data.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Literal

from strongroom.core.postgres.binaries import StderrDrain, find_binary
from strongroom.core.postgres.children import spawn, terminate
from strongroom.core.postgres.conninfo import ConnInfo
from strongroom.core.tenant_format import schema_from_header
from strongroom.errors import RestoreError

__all__ = ["create_post_data", "create_pre_data", "schema_from_header"]

Section = Literal["pre-data", "post-data"]


def create_pre_data(target: ConnInfo, archive: Path, *, bindir: str | None = None) -> None:
    """Types, tables (RLS forced), sequences, functions: everything the rows go into."""
    _restore_section(target, archive, "pre-data", bindir)


def create_post_data(target: ConnInfo, archive: Path, *, bindir: str | None = None) -> None:
    """Indexes, primary and foreign keys, triggers, ENABLE ROW LEVEL SECURITY, policies."""
    _restore_section(target, archive, "post-data", bindir)


def _restore_section(target: ConnInfo, archive: Path, section: Section, bindir: str | None) -> None:
    argv = [
        find_binary("pg_restore", bindir),
        f"--section={section}",
        "--no-owner",
        "--no-acl",
        "--exit-on-error",
        f"--dbname={target.dbname}",
        str(archive),
    ]
    proc = spawn(argv, env=target.env(), stdout=subprocess.DEVNULL)
    drain = StderrDrain(proc.stderr)
    drain.start()
    try:
        code = proc.wait()
    except BaseException:
        terminate(proc)
        raise
    drain.join(timeout=10)
    if code != 0:
        raise RestoreError(
            f"pg_restore --section={section} into {target} failed (exit {code}): "
            f"{drain.last_error()}"
        )
