"""The ``strongroom`` executable: ``wal-push`` for a file pushed ahead, before the CLI loads.

PostgreSQL starts ``archive_command`` once per WAL file, and while a backlog drains most calls
are for files an earlier call pushed ahead (:mod:`strongroom.services.wal_cluster`). Importing
the CLI for them (argparse, logging, the whole configuration module tree) cost more CPU than the
answer itself, one call after another while the archiver waits. So a plain
``[--config FILE] wal-push PATH`` is first answered here, with only the WAL settings, the spool
and the cluster's ``pg_control`` read, and the same checks as the CLI's fast path.

Likewise ``[--config FILE] wal-fetch NAME DEST`` for a segment an earlier call prefetched (and
checked) into the spool, while more prefetched segments follow it: recovery asks for one segment
after another, and a call that only moves a local file into place should not pay the CLI's
start-up and one more download. The call that takes the last prefetched segment goes to the
CLI, which serves it the same way and fetches the next ``BACKUP_WAL_PREFETCH`` at once, in
parallel: one full call per window instead of one per segment.

Anything else goes to :func:`strongroom.interfaces.cli.main` untouched: another command, ``-v``
(its log line is the CLI's), any other spelling of the command line, no spool record, a
different checksum, and any failure at all. Nothing is written before that hand-over, so the
CLI then checks, says and exits exactly as it always did.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``strongroom`` executable and of ``python -m strongroom``."""
    words = list(sys.argv[1:] if argv is None else argv)
    plain = plain_wal_push(words)
    if plain is not None:
        answered = pushed_ahead(*plain)
        if answered is not None:
            return answered
    fetch = plain_wal_fetch(words)
    if fetch is not None:
        answered = served_from_spool(*fetch)
        if answered is not None:
            return answered
    from strongroom.interfaces.cli import main as cli_main

    return cli_main(words)


def plain_wal_push(words: Sequence[str]) -> tuple[str, str | None] | None:
    """``(path, config file)`` of ``[--config FILE | --config=FILE] wal-push PATH``, else
    ``None`` (every other command line is the CLI's to parse)."""
    plain = _plain(words, "wal-push", 1)
    return None if plain is None else (plain[0][0], plain[1])


def plain_wal_fetch(words: Sequence[str]) -> tuple[str, str, str | None] | None:
    """``(name, dest, config file)`` of ``[--config FILE | --config=FILE] wal-fetch NAME
    DEST``, else ``None``."""
    plain = _plain(words, "wal-fetch", 2)
    return None if plain is None else (plain[0][0], plain[0][1], plain[1])


def _plain(
    words: Sequence[str], command: str, operands: int
) -> tuple[list[str], str | None] | None:
    """``(operands, config file)`` of ``[--config FILE | --config=FILE] COMMAND OPERAND...``
    with exactly ``operands`` operands, none of them (nor FILE) looking like an option."""
    rest = list(words)
    config: str | None = None
    if len(rest) == operands + 3 and rest[0] == "--config":
        config, rest = rest[1], rest[2:]
    elif len(rest) == operands + 2 and rest[0].startswith("--config="):
        config, rest = rest[0][len("--config=") :], rest[1:]
    if len(rest) != operands + 1 or rest[0] != command:
        return None
    values = rest[1:]
    if not all(v and not v.startswith("-") for v in values) or (config or "").startswith("-"):
        return None  # argparse reads these as options: the CLI's error, not ours
    return values, config


def served_from_spool(name: str, dest: str, config_file: str | None) -> int | None:
    """``0`` once prefetched ``name`` is at ``dest`` and more prefetched segments follow it;
    ``None`` to leave the call to the CLI, which serves it or fetches it the usual way."""
    from strongroom.errors import ExitCode, Interrupted
    from strongroom.interfaces.signals import signals_interrupt

    try:
        with signals_interrupt():
            spool_dir, _, _ = wal_settings(config_file)
            if not spool_dir:
                return None
            from pathlib import Path

            from strongroom.core.wal_serve import newer_prefetched, serve_prefetched
            from strongroom.core.wal_spool import Spool

            spool = Spool(spool_dir)
            prefetched = spool.prefetched()
            if name not in prefetched or not newer_prefetched(prefetched, name):
                return None
            serve_prefetched(spool, name, Path(dest))
            return ExitCode.OK
    except Interrupted as exc:  # as the CLI's: recovery stops rather than end early
        print(f"strongroom: error: {exc}; nothing was left half-done", file=sys.stderr)
        return ExitCode.WAL_FETCH_STOP
    except Exception:  # the CLI repeats the call (DEST is whole or untouched) and reports
        return None


def pushed_ahead(path: str, config_file: str | None) -> int | None:
    """``0`` when ``path`` was pushed ahead with this content (the CLI's fast path, same
    settings and checks); ``None`` to leave the call to the CLI. A signal here ends the call
    as the CLI ends it: one line, an exit code inside ``archive_command``'s 1-125."""
    from strongroom.errors import ExitCode, Interrupted
    from strongroom.interfaces.signals import signals_interrupt

    try:
        with signals_interrupt():
            spool_dir, pgdata, wait = wal_settings(config_file)
            from strongroom.services.wal_cluster import answered_from_spool

            if answered_from_spool(spool_dir, pgdata, path):
                return ExitCode.OK
            if (
                spool_dir
                and wait is not None
                and uploaded(spool_dir, path, config_file, wait)
                and answered_from_spool(spool_dir, pgdata, path)
            ):
                return ExitCode.OK
    except Interrupted as exc:
        print(f"strongroom: error: {exc}; nothing was left half-done", file=sys.stderr)
        return exc.exit_code if exc.exit_code <= 125 else ExitCode.FAILED
    except Exception:  # the CLI repeats the checks and reports the problem, as always
        return None
    return None


#: The only settings the answer reads; every other ``BACKUP_WAL_*`` one is a number the CLI's
#: fast path checks, so when one is set it is read with :func:`strongroom.config.load_wal_settings`.
SPOOL, PGDATA = "BACKUP_WAL_SPOOL_DIR", "STRONGROOM_PGDATA"


def uploaded(spool_dir: str, path: str, config_file: str | None, wait: float) -> bool:
    """With ``BACKUP_WAL_ASYNC`` on: whether the background uploader recorded ``path`` pushed
    within ``wait`` seconds (started if it is not running; :mod:`strongroom.core.wal_async`)."""
    from pathlib import Path

    from strongroom.core.wal_async import wait_for_record, watched_dir
    from strongroom.core.wal_spool import Spool

    wal_dir = watched_dir(path)
    if wal_dir is None:
        return False  # the CLI pushes this one
    return wait_for_record(Spool(spool_dir), Path(path).name, wal_dir, config_file, wait)


def wal_settings(config_file: str | None) -> tuple[str | None, str | None, float | None]:
    """``(spool directory, data directory, seconds to wait for the background uploader or
    None when it is off)`` as :func:`strongroom.config.wal_settings_from_env` reads them: the
    environment over the config file, blank meaning unset, the same file reader, and the same
    errors for any other WAL setting (only then is that module loaded, a third of this call's
    CPU: its dataclasses and number parsers)."""
    import os
    from collections import ChainMap

    env = {name: value for name, value in os.environ.items() if value.strip()}
    path = config_file or env.get("STRONGROOM_CONFIG")
    if path:
        from strongroom.configfile import read_config_file

        source = ChainMap(env, read_config_file(path.strip(), None, ()))
    else:
        source = ChainMap(env)
    if any(name.startswith("BACKUP_WAL_") and name != SPOOL for name in source):
        from strongroom.config import load_wal_settings

        settings = load_wal_settings(source)
        wait = settings.async_wait_seconds if settings.async_push else None
        return settings.spool_dir, settings.pgdata, wait
    return (source.get(SPOOL, "").strip() or None), (source.get(PGDATA, "").strip() or None), None
