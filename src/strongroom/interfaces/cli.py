"""The ``strongroom`` command line (also ``python manage.py strongroom``).

Thin by design: parse, call a service, render. Every ``StrongroomError`` becomes one line on
stderr and its exit code; nothing else turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from strongroom import __version__
from strongroom.config import CONFIG_FILE_VAR, Config, config_from_env
from strongroom.errors import CatalogError, ExitCode, Interrupted, StrongroomError, WalNotFound
from strongroom.interfaces.signals import signals_interrupt

log = logging.getLogger("strongroom")

Handler = Callable[[argparse.Namespace, Config], int]


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; for an archiver ``command``, only the WAL commands.

    PostgreSQL starts ``wal-push`` once per WAL file: building the other twenty subcommands'
    parsers for each call would be wasted start-up time.
    """
    p = argparse.ArgumentParser(
        prog="strongroom",
        description="Encrypted, triple-redundant backup and restore for multi-tenant PostgreSQL.",
    )
    p.add_argument("--version", action="version", version=f"strongroom {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    _config_option(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in _ARCHIVER_COMMANDS:
        _wal_commands(sub)
        return p

    b = sub.add_parser("backup", help="dump, compress, encrypt and store the database now")
    _json(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    ls = sub.add_parser("list", help="list backups in the catalog")
    _json(ls)
    ls.add_argument("--database", help="only this database")
    ls.add_argument("--tenant", metavar="ID", help="only this tenant's backups")
    ls.add_argument("--limit", type=int, default=50)

    sh = sub.add_parser("show", help="show one backup and its copies")
    _json(sh)
    sh.add_argument("id", help="backup id")

    v = sub.add_parser("verify", help="re-read every copy, check SHA-256 and authentication")
    _json(v)
    _which(v)
    v.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("restore", help="restore a backup into a database")
    _json(r)
    _which(r)
    r.add_argument(
        "--target",
        required=True,
        metavar="URL",
        help="database to restore into (created if missing; must be empty unless --replace); "
        "put its password in PGPASSWORD or a passfile, not here",
    )
    r.add_argument(
        "--from",
        dest="from_location",
        metavar="LOCATION",
        help="restore from this location only (default: first intact copy)",
    )
    r.add_argument("-j", "--jobs", type=int, help="parallel pg_restore jobs (default 2)")
    r.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing target: restore beside it, swap names only if all went well "
        "(needs CREATEDB and room for a second copy)",
    )
    r.add_argument(
        "--terminate-sessions",
        action="store_true",
        help="with --replace: end the target's other sessions at the swap instead of waiting "
        "(BACKUP_RESTORE_LOCK_TIMEOUT) for them to leave",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("check", help="check configuration, database and every location")
    _json(c)

    m = sub.add_parser("metrics", help="print Prometheus metrics, or write them for node_exporter")
    m.add_argument(
        "--textfile",
        metavar="PATH",
        help="replace PATH atomically (node_exporter's textfile collector reads *.prom files)",
    )
    m.add_argument(
        "--no-probe",
        action="store_true",
        help="leave out strongroom_location_up (no location is contacted)",
    )

    sr = sub.add_parser("setup-role", help="create a least-privilege backup role with BYPASSRLS")
    sr.add_argument("name", help="role name, e.g. strongroom_backup")
    sr.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    sr.add_argument(
        "--password-env",
        metavar="VAR",
        help="take the new role's password from this environment variable",
    )

    sub.add_parser("keygen", help="print a new BACKUP_ENCRYPTION_KEY")

    d = sub.add_parser("demo", help="throwaway PostgreSQL + S3 servers: backup, verify, restore")
    d.add_argument("--scale", type=int, default=1, help="demo data size multiplier")
    d.add_argument("--keep", action="store_true", help="leave the servers running at the end")
    _retention_commands(sub)
    _tenant_commands(sub)
    _drill_command(sub)
    _pitr_commands(sub)
    _wal_commands(sub)
    return p


def _drill_command(sub: Any) -> None:
    """``drill [ID|--latest] [--kind full|tenant|base]``: restore into a throwaway database."""
    dr = sub.add_parser(
        "drill",
        help="restore a backup into a throwaway database (a base backup: a throwaway server), "
        "prove every table, remove it",
    )
    _json(dr)
    _which(dr)
    dr.add_argument(
        "--kind",
        choices=("full", "tenant", "base"),
        help="which kind of backup (default: the backup's own; with --latest, full)",
    )
    dr.add_argument(
        "--strongroom-path",
        metavar="PATH",
        help="for a base drill: the strongroom executable its restore_command runs, as the "
        "server's OS user sees it (default: this one)",
    )


def _pitr_commands(sub: Any) -> None:
    """``base-backup``, ``pitr-restore`` and ``restore-point`` (docs/pitr.md)."""
    bb = sub.add_parser("base-backup", help="physical base backup of the cluster (for PITR)")
    _json(bb)
    bb.add_argument("--no-progress", action="store_true", help="no progress bar")

    pr = sub.add_parser(
        "pitr-restore", help="extract a base backup into DIR, set up to replay WAL to a target"
    )
    _json(pr)
    pr.add_argument("--pgdata", required=True, metavar="DIR", help="a new or empty data directory")
    pr.add_argument(
        "--backup", metavar="ID", help="this base backup (default: the newest before the target)"
    )
    g = pr.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-time", metavar="TS", help="ISO-8601 time with zone, e.g. ...+00:00")
    g.add_argument("--target-lsn", metavar="LSN", help="a WAL location, e.g. 0/16B3748")
    g.add_argument("--target-name", metavar="NAME", help="a restore point (`restore-point`)")
    g.add_argument("--latest", action="store_true", help="replay to the end of the archive")
    pr.add_argument(
        "--strongroom-path",
        metavar="PATH",
        help="the strongroom executable restore_command runs, as the server's OS user sees it "
        "(default: this one)",
    )

    rp = sub.add_parser("restore-point", help="create a named restore point and archive it now")
    _json(rp)
    rp.add_argument("name", help="the restore point's name (at most 63 bytes)")


def _wal_commands(sub: Any) -> None:
    """PostgreSQL's ``archive_command`` and ``restore_command``, and the archive's check."""
    wp = sub.add_parser(
        "wal-push", help="archive one WAL file in every location (archive_command ... %%p)"
    )
    wp.add_argument("path", help="the file, as PostgreSQL passes it (%%p)")
    wu = sub.add_parser(
        "wal-uploader",
        help="push .ready WAL files as they appear until idle (started by wal-push when "
        "BACKUP_WAL_ASYNC is on)",
    )
    wu.add_argument("wal_dir", metavar="PG_WAL", help="the cluster's pg_wal directory")
    wf = sub.add_parser(
        "wal-fetch", help="restore one archived WAL file (restore_command ... %%f %%p)"
    )
    wf.add_argument("name", help="the WAL file name (%%f)")
    wf.add_argument("dest", help="where to write it (%%p)")
    wv = sub.add_parser(
        "wal-verify", help="check every WAL segment a restore needs is in every location"
    )
    _json(wv)
    wv.add_argument(
        "--deep", action="store_true", help="re-read every copy (default: manifest and size)"
    )
    wv.add_argument(
        "--system-id", metavar="ID", help="only this cluster (default: every one archived)"
    )


def _tenant_commands(sub: Any) -> None:
    """``tenant backup ID|--all``, ``tenant list`` and ``tenant restore ID``: one tenant's rows."""
    t = sub.add_parser("tenant", help="per-tenant backups")
    t_sub = t.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    tb = t_sub.add_parser(
        "backup", help="back up one tenant's rows (or every tenant's, each apart)"
    )
    _json(tb)
    g = tb.add_mutually_exclusive_group(required=True)
    g.add_argument("tenant_id", nargs="?", help="the tenant id (the tenant table's primary key)")
    g.add_argument("--all", action="store_true", help="every tenant, one backup each")
    tb.add_argument("--no-progress", action="store_true", help="no progress bar")
    tl = t_sub.add_parser("list", help="tenant ids, their rows and newest tenant backup")
    _json(tl)
    tr = t_sub.add_parser(
        "restore",
        help="put one tenant's rows back from a tenant or full backup (the others untouched)",
    )
    _json(tr)
    _which(tr)
    tr.add_argument(
        "--target",
        required=True,
        metavar="URL",
        help="the database to restore into: the live one (the tenant's rows are replaced in one "
        "transaction), or a new or empty one (its schema is created from the backup); put its "
        "password in PGPASSWORD or a passfile, not here",
    )
    tr.add_argument(
        "--tenant",
        metavar="TENANT_ID",
        help="whose rows to take (required with a full backup and with --latest)",
    )
    tr.add_argument(
        "--replace", action="store_true", help="replace the tenant's rows if it still has any"
    )
    tr.add_argument(
        "--from",
        dest="from_location",
        metavar="LOCATION",
        help="restore from this location only (default: first intact copy)",
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"read NAME=value settings from FILE (default ${CONFIG_FILE_VAR}); "
        "the environment wins over it",
    )


def config_file_option(argv: Sequence[str]) -> str | None:
    """The ``--config FILE`` of a command line, for ``manage.py strongroom`` (it loads first)."""
    p = argparse.ArgumentParser(add_help=False)
    _config_option(p)
    known, _ = p.parse_known_args(list(argv))
    value: str | None = known.config
    return value


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _which(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?", help="backup id")
    g.add_argument("--latest", action="store_true", help="the newest restorable backup")


def _retention_commands(sub: Any) -> None:
    """``prune``, ``heal`` and ``catalog rebuild`` (retention, self-healing, disaster recovery)."""
    pr = sub.add_parser("prune", help="delete copies past their location's retention")
    _json(pr)
    pr.add_argument(
        "--dry-run", action="store_true", help="show every copy's keep/delete decision only"
    )
    pr.add_argument("--database", help="only this database's backups")

    h = sub.add_parser("heal", help="re-create missing or corrupt copies from a verified copy")
    _json(h)
    g = h.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?", help="backup id")
    g.add_argument("--all", action="store_true", help="every backup in the catalog")
    h.add_argument(
        "--deep", action="store_true", help="re-read every copy (default: check it exists)"
    )

    cat = sub.add_parser("catalog", help="catalog maintenance")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    rb = cat_sub.add_parser("rebuild", help="recreate the catalog from a location's manifests")
    _json(rb)
    rb.add_argument(
        "--from",
        dest="from_location",
        required=True,
        metavar="LOCATION",
        help="read the manifests of this location (local, r2 or b2)",
    )
    rb.add_argument(
        "--move-damaged",
        action="store_true",
        help="if the catalog file is damaged, rename it to *.damaged-TIME and start a new one",
    )
    rb.add_argument(
        "--no-probe",
        action="store_true",
        help="do not look for the same backups in the other configured locations",
    )


def main(argv: Sequence[str] | None = None, *, config: Config | None = None) -> int:
    """Entry point; ``config`` is given by ``manage.py strongroom`` (Django settings)."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = _parser(_command_of(words)).parse_args(words)
    stamp = "%(asctime)s " if args.command == "wal-uploader" else ""  # it writes a log file
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"{stamp}strongroom: %(levelname)s: %(message)s",
    )
    notice = logging.getLogger("strongroom.notify.notice")
    saved = notice.level
    if not args.verbose:  # the command's own error line already says it: one line, not two
        notice.setLevel(logging.CRITICAL)
    try:
        return _run(args, config)
    finally:
        notice.setLevel(saved)  # main() may run inside a longer-lived process (manage.py, tests)


def _command_of(words: Sequence[str]) -> str | None:
    """The subcommand a command line names: its first word that is not a global option."""
    rest = iter(words)
    for word in rest:
        if word == "--config":
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return None


def _run(args: argparse.Namespace, config: Config | None) -> int:
    """Dispatch; every failure becomes one line on stderr and an exit code."""
    try:
        with signals_interrupt():
            return _archiver_exit(args, _dispatch(args, config), None)
    except StrongroomError as exc:
        print(f"strongroom: error: {exc}", file=sys.stderr)
        return _archiver_exit(args, exc.exit_code, exc)
    except Interrupted as exc:
        print(f"strongroom: error: {exc}; nothing was left half-done", file=sys.stderr)
        return _archiver_exit(args, exc.exit_code, exc)
    except KeyboardInterrupt as exc:
        print("strongroom: error: interrupted by SIGINT", file=sys.stderr)
        return _archiver_exit(args, ExitCode.INTERRUPTED, exc)
    except Exception as exc:  # a bug or an untranslated failure: still one line, no traceback
        damaged = _catalog_damage(exc)
        if damaged is not None:
            print(f"strongroom: error: {damaged}", file=sys.stderr)
            return damaged.exit_code
        if args.verbose:
            log.exception("unexpected failure")
        print(
            f"strongroom: error: unexpected {type(exc).__name__}: {exc} "
            "(run with -v for the traceback)",
            file=sys.stderr,
        )
        return _archiver_exit(args, ExitCode.FAILED, exc)


#: Run by PostgreSQL once per WAL file as its OS user: no catalog, and a fast start (and
#: ``wal-verify``, which records in the catalog only when one can be opened).
_ARCHIVER_COMMANDS = frozenset({"wal-push", "wal-uploader", "wal-fetch", "wal-verify"})


def _archiver_command(args: argparse.Namespace, config: Config | None) -> int:
    from strongroom.interfaces import wal_commands

    if args.command == "wal-push" and wal_commands.pushed_ahead_already(args, config):
        return ExitCode.OK  # the fast path: only the WAL settings were read
    handlers: dict[str, Handler] = {
        "wal-push": wal_commands.wal_push,
        "wal-uploader": wal_commands.wal_uploader,
        "wal-fetch": wal_commands.wal_fetch,
        "wal-verify": wal_commands.wal_verify,
    }
    return handlers[args.command](args, config or config_from_env(args.config))


def _archiver_exit(args: argparse.Namespace, code: int, exc: BaseException | None) -> int:
    """Exit codes inside PostgreSQL's contracts for its archive and restore commands.

    ``wal-push``: 1-125 only (above 125 the archiver process restarts). ``wal-fetch``: 1 only
    when the file is not archived anywhere (PostgreSQL then ends recovery there); every other
    failure, a bad setting included, is ``WAL_FETCH_STOP`` (above 125), which stops recovery.
    """
    if code == ExitCode.OK:
        return code
    if args.command == "wal-push" and code > 125:
        return ExitCode.FAILED
    if args.command == "wal-fetch" and not isinstance(exc, WalNotFound):
        return ExitCode.WAL_FETCH_STOP
    return code


def _dispatch(args: argparse.Namespace, config: Config | None) -> int:
    if args.command in _ARCHIVER_COMMANDS:
        return _archiver_command(args, config)
    if args.command in ("keygen", "demo"):
        from strongroom.interfaces import commands

        return commands.keygen(args) if args.command == "keygen" else commands.demo(args)
    if config is None:
        config = config_from_env(args.config)
        if args.command not in _NO_CATALOG:
            _open_catalog(args, config)
    module, name = _HANDLERS[args.command]
    handler: Handler = getattr(importlib.import_module(f"strongroom.interfaces.{module}"), name)
    return handler(args, config)


#: Command -> (module of ``strongroom.interfaces``, function). Only the command's own module is
#: imported, so ``backup`` loads what a backup needs and not restore, metrics or drill code.
_HANDLERS: dict[str, tuple[str, str]] = {
    "backup": ("commands", "backup"),
    "list": ("commands", "list_backups"),
    "show": ("commands", "show"),
    "verify": ("commands", "verify"),
    "restore": ("commands", "restore"),
    "check": ("commands", "check"),
    "metrics": ("commands", "metrics"),
    "setup-role": ("commands", "setup_role"),
    "prune": ("commands", "prune"),
    "heal": ("commands", "heal"),
    "catalog": ("commands", "catalog"),
    "tenant": ("tenant_commands", "tenant"),
    "drill": ("drill_commands", "drill"),
    "base-backup": ("pitr_commands", "base_backup_command"),
    "pitr-restore": ("pitr_commands", "pitr_restore"),
    "restore-point": ("pitr_commands", "restore_point"),
}


#: Commands for the disaster, when the catalog may be gone with the application database: they
#: read storage (and the server) only, so an unreachable catalog must not stop them.
_NO_CATALOG = frozenset({"pitr-restore", "restore-point"})

#: Commands whose answer depends on what the catalog holds: a catalog created empty just now
#: (deleted, or a wrong STRONGROOM_CATALOG_URL) must not pass for "no backups" silently.
_READS_CATALOG = frozenset({"list", "show", "verify", "restore", "prune", "heal", "drill"})


def _open_catalog(args: argparse.Namespace, config: Config) -> None:
    """Open and check the standalone catalog before any work starts (nothing half done)."""
    from strongroom.catalog import bootstrap

    try:
        bootstrap.ensure_django(config.catalog_url)
    except CatalogError as exc:
        if args.command == "check":
            return  # check reports the catalog as one of its lines, after the others
        if not (exc.damaged and getattr(args, "move_damaged", False)):
            raise
        moved = bootstrap.move_damaged_aside()
        print(
            f"strongroom: moved the damaged catalog aside: {', '.join(map(str, moved))}",
            file=sys.stderr,
        )
        bootstrap.ensure_django(config.catalog_url)
    created = bootstrap.created_empty()
    if created and args.command in _READS_CATALOG:
        print(
            f"strongroom: warning: the catalog {created} did not exist and was created empty; "
            f"if backups exist, `{bootstrap.REBUILD}` brings them back",
            file=sys.stderr,
        )


def _catalog_damage(exc: Exception) -> CatalogError | None:
    """A damaged catalog found mid-command (after the open-time check) is still one line."""
    from strongroom.catalog.bootstrap import catalog_error_from

    return catalog_error_from(exc)


__all__ = ["main"]
