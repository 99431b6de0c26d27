"""``strongroom base-backup``, ``pitr-restore`` and ``restore-point``: physical backup and PITR."""

from __future__ import annotations

import argparse
import shlex

from strongroom.config import Config
from strongroom.core.postgres import recovery
from strongroom.core.wal import parse_lsn
from strongroom.errors import ConfigError, ExitCode
from strongroom.interfaces import render
from strongroom.interfaces.finished import finished_backup
from strongroom.services import base_backup, pitr


def base_backup_command(args: argparse.Namespace, config: Config) -> int:
    show = not (args.json or args.no_progress)
    with render.progress("base backup", show) as update:
        report = base_backup.run_base_backup(config, progress=lambda raw, stored: update(raw))
    return finished_backup(report, as_json=args.json, label="base backup")


def pitr_restore(args: argparse.Namespace, config: Config) -> int:
    report = pitr.pitr_restore(
        config,
        args.pgdata,
        recovery_target(args),
        tool=self_command(args.config, args.strongroom_path),
        backup_id=args.backup,
    )
    start = shlex.join(report.start_command)
    if args.json:
        render.emit_json({**vars(report), "start": start})
        return ExitCode.OK
    for skipped in report.skipped:
        render.out.print(f"skipped copy {skipped}", soft_wrap=True)
    render.out.print(
        f"extracted base backup {report.id} (timeline {report.timeline}, "
        f"{report.start_lsn} to {report.stop_lsn}) from {report.source} into {report.pgdata}: "
        f"{report.files} files, {render.size(report.bytes)} in {report.seconds:.1f}s",
        soft_wrap=True,
    )
    render.out.print(f"recovery target: {report.target}, then promote", soft_wrap=True)
    render.out.print(f"restore_command = {report.restore_command}", soft_wrap=True)
    render.out.print("start the server (as the OS user that owns the directory):")
    render.out.print(f"  {start}", soft_wrap=True)
    return ExitCode.OK


def restore_point(args: argparse.Namespace, config: Config) -> int:
    point = pitr.create_restore_point(config, args.name)
    if args.json:
        render.emit_json(vars(point))
    else:
        render.out.print(
            f"restore point {point.name!r} at {point.lsn} (WAL file {point.wal_file}, switched "
            f"so it is archived now); recover to it with `strongroom pitr-restore --pgdata DIR "
            f"--target-name {shlex.quote(point.name)}`",
            soft_wrap=True,
        )
    return ExitCode.OK


def recovery_target(args: argparse.Namespace) -> recovery.RecoveryTarget:
    """The one target option given, checked before anything is read or written."""
    if args.target_time:
        return recovery.target_time(pitr.parse_time(args.target_time))
    if args.target_lsn:
        try:
            parse_lsn(args.target_lsn)
        except ValueError as exc:
            raise ConfigError(f"--target-lsn: {exc}") from None
        return recovery.RecoveryTarget("lsn", args.target_lsn.strip())
    if args.target_name:
        return recovery.RecoveryTarget("name", args.target_name)
    return recovery.RecoveryTarget("latest")


def self_command(config_file: str | None, program_path: str | None = None) -> list[str]:
    """How PostgreSQL's ``restore_command`` runs this same strongroom with the same settings.

    ``--strongroom-path`` when given (the path as the server's OS user sees it), else the
    running ``strongroom`` executable when that is what runs, else this interpreter with
    ``-m strongroom``; ``--config`` with the absolute path of the config file in use. Secrets
    stay in that file (readable by the server's OS user), never in ``postgresql.auto.conf``.
    """
    argv = pitr.strongroom_command(config_file, program_path)
    if "--config" not in argv:
        render.err.print(
            "strongroom: warning: no config file in use: restore_command will see only the "
            "server's environment; pass --config FILE so wal-fetch finds the key and locations"
        )
    return argv
