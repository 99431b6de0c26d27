"""``wal-push``, ``wal-fetch`` and ``wal-verify``: PostgreSQL's archive and restore commands.

``wal-push`` and ``wal-fetch`` run once per WAL file, started by PostgreSQL as its own OS user:
they import only what they need (no Django, no catalog, no rich), print nothing on success (the
output would land in the server log) and say what they did with ``-v``. Failures are one line on
stderr via the CLI, as for every command; the CLI also keeps their exit codes inside
PostgreSQL's contracts (``cli._archiver_exit``).
"""

from __future__ import annotations

import argparse
import logging

from strongroom.config import Config
from strongroom.errors import ExitCode

log = logging.getLogger("strongroom.wal")


def wal_push(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services.wal_push import push_wal

    report = push_wal(config, args.path)
    pushed = report.pushed
    if pushed.from_spool:
        log.info("%s: pushed ahead earlier, checked (%.3f s)", pushed.name, pushed.seconds)
    else:
        where = ", ".join(f"{loc} {how}" for loc, how in pushed.locations.items())
        log.info("%s: %s (%.3f s)", pushed.name, where, pushed.seconds)
    if report.ahead:
        log.info("pushed ahead: %s", ", ".join(p.name for p in report.ahead))
    return ExitCode.OK


def wal_fetch(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services.wal_fetch import fetch_wal

    fetched = fetch_wal(config, args.name, args.dest)
    log.info("%s: %d bytes from %s", fetched.name, fetched.size, fetched.location)
    if fetched.prefetched:
        log.info("prefetched: %s", ", ".join(fetched.prefetched))
    return ExitCode.OK
