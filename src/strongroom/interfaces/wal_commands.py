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
from typing import TYPE_CHECKING

from strongroom.config import Config
from strongroom.errors import ExitCode

if TYPE_CHECKING:
    from strongroom.services.wal_verify import WalVerifyReport

log = logging.getLogger("strongroom.wal")
#: The catalog event of each ``wal-verify`` run (its ``data``: missing per location, newest).
WAL_VERIFY_EVENT = "wal_verify"


def pushed_ahead_already(args: argparse.Namespace, config: Config | None) -> bool:
    """``wal-push``'s fast path, the common case under load: the file was pushed ahead by an
    earlier call and its plaintext SHA-256 matches the spool's record. No key, no network, and
    (with no ``config`` given) only the WAL settings are read, so no storage backend, codec or
    cipher is imported; anything else is for :func:`wal_push`, which reads the whole
    configuration and checks it."""
    from strongroom.config import wal_settings_from_env
    from strongroom.services.wal_cluster import pushed_ahead

    wal = config.wal if config is not None else wal_settings_from_env(args.config)
    if not pushed_ahead(wal, args.path):
        return False
    log.info("%s: pushed ahead earlier, checked", args.path)
    return True


def wal_push(args: argparse.Namespace, config: Config) -> int:
    """The full push (after :func:`pushed_ahead_already` said no)."""
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
    if config.wal.async_push and config.wal.spool_dir:
        _keep_uploader(args, config.wal.spool_dir)
    return ExitCode.OK


def _keep_uploader(args: argparse.Namespace, spool_dir: str) -> None:
    """With ``BACKUP_WAL_ASYNC`` on, a call that pushed its own file leaves the uploader
    running for the files behind it (started when none is)."""
    from strongroom.core.wal_async import start_uploader, uploader_running, watched_dir
    from strongroom.core.wal_spool import Spool

    wal_dir, spool = watched_dir(args.path), Spool(spool_dir)
    try:
        if wal_dir is not None and not uploader_running(spool, wal_dir):
            start_uploader(spool, wal_dir, args.config)
    except OSError as exc:  # this file is archived: say so, and push the next one likewise
        log.warning("cannot start the background uploader: %s", exc.strerror or exc)


def wal_uploader(args: argparse.Namespace, config: Config) -> int:
    """The background uploader (``BACKUP_WAL_ASYNC``), until it is idle."""
    from pathlib import Path

    from strongroom.services.wal_uploader import run_uploader

    pushed = run_uploader(config, Path(args.wal_dir))
    log.info("uploader: %d file(s) pushed", pushed)
    return ExitCode.OK


def wal_fetch(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services.wal_fetch import fetch_wal

    fetched = fetch_wal(config, args.name, args.dest)
    log.info("%s: %d bytes from %s", fetched.name, fetched.size, fetched.location)
    if fetched.prefetched:
        log.info("prefetched: %s", ", ".join(fetched.prefetched))
    return ExitCode.OK


def wal_verify(args: argparse.Namespace, config: Config) -> int:
    from strongroom.interfaces import render
    from strongroom.services.wal_verify import verify_wal

    report = verify_wal(config, scope=args.system_id, deep=args.deep)
    recorded = _record_verify(config, report)
    if args.json:
        render.emit_json({"ok": report.ok and bool(report.clusters), **_verify_doc(report)})
    else:
        for cluster in report.clusters:
            render.out.print(
                f"cluster {cluster.scope}: timelines {cluster.timelines or '-'}, newest "
                f"{cluster.newest or '-'}"
            )
            for loc in cluster.locations:
                why = cluster.unreadable.get(loc)
                count = cluster.missing.get(loc, 0)
                mark = "ok  " if not why and not count else "FAIL"
                detail = why or (
                    f"{cluster.checked.get(loc, 0)} file(s) from "
                    f"{cluster.first_needed.get(loc) or '-'} checked, {count} missing or damaged"
                )
                render.out.print(f"{mark} {loc:<8} {detail}", soft_wrap=True)
            for gap in cluster.gaps:
                render.out.print(f"gap  {gap.location:<8} {gap.name}  {gap.problem}")
    if recorded:
        render.err.print(f"strongroom: warning: not recorded in the catalog: {recorded}")
    if not report.clusters:
        render.err.print(
            "strongroom: error: no archived WAL found in any required location: is "
            "archive_command set to `strongroom wal-push %p` with this config?"
        )
        return ExitCode.WAL_GAP
    if not report.ok:
        gaps = sum(len(c.gaps) for c in report.clusters)
        render.err.print(f"strongroom: error: the WAL archive has {gaps} gap(s)")
        return ExitCode.WAL_GAP
    return ExitCode.OK


def _verify_doc(report: WalVerifyReport) -> dict[str, object]:
    return {
        **report.event_data(),
        "clusters": [
            {
                "system_identifier": c.scope,
                "timelines": c.timelines,
                "newest": c.newest,
                "first_needed": c.first_needed,
                "checked": c.checked,
                "base_backups": c.base_backups,
                "missing": c.missing,
                "unreadable": c.unreadable,
                "gaps": [vars(g) for g in c.gaps],
            }
            for c in report.clusters
        ],
    }


def _record_verify(config: Config, report: WalVerifyReport) -> str:
    """The result as a ``wal_verify`` event, when a catalog can be opened; else why not."""
    from strongroom.catalog import bootstrap
    from strongroom.errors import StrongroomError

    try:
        bootstrap.ensure_django(config.catalog_url)
        from strongroom.catalog import store

        gaps = sum(len(c.gaps) for c in report.clusters)
        store.record_event(
            None,
            WAL_VERIFY_EVENT,
            message="no gaps" if report.ok else f"{gaps} gap(s)",
            data=report.event_data(),
        )
    except StrongroomError as exc:
        return str(exc)
    return ""
