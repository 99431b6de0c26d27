"""The ``strongroom`` executable: ``wal-push`` for a file pushed ahead, before the CLI loads.

PostgreSQL starts ``archive_command`` once per WAL file, and while a backlog drains most calls
are for files an earlier call pushed ahead (:mod:`strongroom.services.wal_cluster`). Importing
the CLI for them (argparse, logging, the whole configuration module tree) cost more CPU than the
answer itself, one call after another while the archiver waits. So a plain
``[--config FILE] wal-push PATH`` is first answered here, with only the WAL settings, the spool
and the cluster's ``pg_control`` read, and the same checks as the CLI's fast path.

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
    from strongroom.interfaces.cli import main as cli_main

    return cli_main(words)


def plain_wal_push(words: Sequence[str]) -> tuple[str, str | None] | None:
    """``(path, config file)`` of ``[--config FILE | --config=FILE] wal-push PATH``, else
    ``None`` (every other command line is the CLI's to parse)."""
    rest = list(words)
    config: str | None = None
    if len(rest) == 4 and rest[0] == "--config":
        config, rest = rest[1], rest[2:]
    elif len(rest) == 3 and rest[0].startswith("--config="):
        config, rest = rest[0][len("--config=") :], rest[1:]
    if len(rest) != 2 or rest[0] != "wal-push":
        return None
    path = rest[1]
    if not path or path.startswith("-") or (config is not None and config.startswith("-")):
        return None  # argparse reads these as options: the CLI's error, not ours
    return path, config


def pushed_ahead(path: str, config_file: str | None) -> int | None:
    """``0`` when ``path`` was pushed ahead with this content (the CLI's fast path, same
    settings and checks); ``None`` to leave the call to the CLI. A signal here ends the call
    as the CLI ends it: one line, an exit code inside ``archive_command``'s 1-125."""
    from strongroom.errors import ExitCode, Interrupted
    from strongroom.interfaces.signals import signals_interrupt

    try:
        with signals_interrupt():
            from strongroom.config import wal_settings_from_env
            from strongroom.services.wal_cluster import pushed_ahead as answered_from_spool

            if answered_from_spool(wal_settings_from_env(config_file), path):
                return ExitCode.OK
    except Interrupted as exc:
        print(f"strongroom: error: {exc}; nothing was left half-done", file=sys.stderr)
        return exc.exit_code if exc.exit_code <= 125 else ExitCode.FAILED
    except Exception:  # the CLI repeats the checks and reports the problem, as always
        return None
    return None
