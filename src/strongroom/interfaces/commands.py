"""One function per CLI command: call the service, render the result, return the exit code.

Each command imports its own service when it runs, so a ``backup`` process never loads the
restore, verify, health or metrics code (nor prometheus_client): less memory, faster start.
"""

from __future__ import annotations

import argparse
import os

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import crypto, postgres
from strongroom.errors import ConfigError, ExitCode
from strongroom.interfaces import render


def keygen(args: argparse.Namespace) -> int:
    print(crypto.generate_key())
    return ExitCode.OK


def demo(args: argparse.Namespace) -> int:
    from strongroom.interfaces.demo import run_demo

    return run_demo(scale=args.scale, keep=args.keep)


def backup(args: argparse.Namespace, config: Config) -> int:
    from strongroom.interfaces.finished import finished_backup
    from strongroom.services import backup as backup_service

    show = not (args.json or args.no_progress)
    with render.progress("backup", show) as update:
        report = backup_service.run_full_backup(config, progress=lambda raw, stored: update(raw))
    return finished_backup(report, as_json=args.json)


def list_backups(args: argparse.Namespace, config: Config) -> int:
    found = store.list_backups(args.database, args.limit, tenant_id=args.tenant)
    rows = [store.backup_to_dict(b) for b in found]
    if args.json:
        render.emit_json(rows)
    else:
        render.backups_table(rows)
    return ExitCode.OK


def show(args: argparse.Namespace, config: Config) -> int:
    doc = store.backup_to_dict(store.get_backup(args.id))
    doc["drills"] = [store.drill_to_dict(d) for d in store.newest_drills(backup_id=args.id)]
    if args.json:
        render.emit_json(doc)
    else:
        render.backup_detail(doc)
    return ExitCode.OK


def verify(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services import verify as verify_service

    show = not (args.json or args.no_progress)
    with render.progress_per(show) as update:
        report = verify_service.verify_backup(config, None if args.latest else args.id, update)
    if args.json:
        doc = store.backup_to_dict(store.get_backup(report.id))
        doc["checks"] = [vars(c) for c in report.copies]
        doc["absent"] = report.absent
        render.emit_json(doc)
    else:
        for c in report.copies:
            mark = "ok  " if c.ok else "FAIL"
            render.out.print(f"{mark} {c.location:<8} {c.detail}")
        for name, why in report.absent.items():
            render.out.print(
                f"none {name:<8} no copy, the backup failed there ({why}); "
                f"`strongroom heal {report.id}` re-creates it from a verified copy"
            )
        render.out.print(f"backup {report.id}: {report.status}")
    if not report.ok:
        render.err.print(
            f"strongroom: error: backup {report.id} failed verification: {report.problems()}"
        )
        return ExitCode.INTEGRITY
    return ExitCode.OK


def restore(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services import restore as restore_service

    if args.terminate_sessions and not args.replace:
        raise ConfigError("--terminate-sessions applies only with --replace")
    show = not (args.json or args.no_progress)
    with render.progress("download+verify", show) as update:
        report = restore_service.restore_backup(
            config,
            None if args.latest else args.id,
            args.target,
            from_location=args.from_location,
            jobs=args.jobs,
            replace=args.replace,
            terminate_sessions=args.terminate_sessions,
            progress=update,
        )
    if args.json:
        render.emit_json(
            {
                "id": report.id,
                "status": "RESTORED" if report.ok else "MISMATCH",
                "source": report.source,
                "target": report.target,
                "jobs": report.jobs,
                "seconds": round(report.seconds, 3),
                "stages": {name: round(sec, 3) for name, sec in report.stages.items()},
                "skipped": report.skipped,
                "tables": {
                    t: {"expected": e, "restored": a} for t, (e, a) in report.table_rows.items()
                },
            }
        )
    else:
        for skipped in report.skipped:
            render.out.print(f"skipped copy {skipped}")
        render.out.print(
            f"restored backup {report.id} from {report.source} into {report.target} "
            f"(-j {report.jobs}) in {report.seconds:.1f}s ("
            + ", ".join(f"{name} {sec:.1f}s" for name, sec in report.stages.items())
            + ")"
        )
        for table, (expected, actual) in report.table_rows.items():
            mark = "ok  " if expected == actual else "DIFF"
            render.out.print(
                f"  {mark} {table:<40} {expected:>10} rows in backup, "
                f"{actual if actual is not None else '-':>10} restored"
            )
    if not report.ok:
        render.err.print(
            f"strongroom: error: row counts differ from the manifest in "
            f"{len(report.mismatches)} table(s): {', '.join(report.mismatches)}"
            + (
                "; the restored copy was dropped and the target left as it was"
                if report.target_kept
                else ""
            )
        )
        return ExitCode.RESTORE_MISMATCH
    return ExitCode.OK


def check(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services import health

    report = health.run_checks(config)
    if args.json:
        render.emit_json(
            {
                "ok": report.ok,
                "status": "OK" if report.ok else "FAILED",
                "checks": [vars(p) for p in report.probes],
            }
        )
    else:
        for p in report.probes:
            mark = "ok  " if p.ok else ("FAIL" if p.required else "warn")
            render.out.print(f"{mark} {p.name:<16} {p.detail}", soft_wrap=True)
    return ExitCode.OK if report.ok else ExitCode.CHECK_FAILED


def metrics(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services import metrics as metrics_service

    registry = metrics_service.collect(config, probe=not args.no_probe)
    if args.textfile:
        metrics_service.write_textfile(args.textfile, registry)
    else:
        render.plain(metrics_service.exposition(registry).decode())
    return ExitCode.OK


def setup_role(args: argparse.Namespace, config: Config) -> int:
    admin_url = os.environ.get("STRONGROOM_ADMIN_DATABASE_URL") or config.database_url
    target = postgres.ConnInfo.parse(admin_url)
    if args.dry_run:
        for stmt in postgres.setup_role_sql(args.name, target.dbname):
            print(stmt + ";")
        return ExitCode.OK
    password = _env_secret(args.password_env) if args.password_env else None
    postgres.apply_setup_role(target, args.name, password)
    render.out.print(
        f"role {args.name} ready on {target.dbname}: LOGIN, BYPASSRLS, read-only. "
        f"Point DATABASE_URL at it (password in PGPASSWORD or a passfile)."
    )
    return ExitCode.OK


def prune(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services import prune as prune_service

    report = prune_service.prune_backups(config, dry_run=args.dry_run, database=args.database)
    if args.json:
        render.emit_json(
            {
                "now": report.now,
                "dry_run": report.dry_run,
                "ok": report.ok,
                "resumed": [vars(c) for c in report.resumed],
                "deleted": [vars(c) for c in report.deleted],
                "decisions": [
                    {
                        **vars(d.copy),
                        "action": d.action.value,
                        "reason": d.reason.value,
                        "detail": d.detail,
                    }
                    for d in report.plan.decisions
                ],
                "wal": [vars(p) for p in report.wal.locations] if report.wal else None,
            }
        )
    else:
        for c in report.resumed:
            render.out.print(f"{'ok  ' if c.ok else 'FAIL'} finished {c.location:<8} {c.backup_id}")
        if report.dry_run:
            for d in report.plan.decisions:
                line = f"{d.action.value.lower():<7} {d.copy.location:<8} {d.copy.backup_id}"
                render.out.print(f"{line}  {d.reason.value}: {d.detail}", soft_wrap=True)
        for c in [] if report.dry_run else report.deleted:
            line = f"{'deleted' if c.ok else 'FAILED':<7} {c.location:<8} {c.backup_id}"
            render.out.print(f"{line}  {c.reason}: {c.detail}", soft_wrap=True)
        render.out.print(render.prune_summary(dry_run=report.dry_run, **report.counts()))
        for p in report.wal.locations if report.wal else []:
            verb = "would delete" if report.dry_run else "deleted"
            what = p.error or f"{verb} {len(p.deleted)}, kept {p.kept}: {p.reason}"
            render.out.print(f"{'FAIL' if p.error else 'wal '} {p.location:<8} {what}")
    if not report.ok:
        render.err.print(f"strongroom: error: prune incomplete: {report.problems()}")
        return ExitCode.PRUNE_INCOMPLETE
    return ExitCode.OK


def heal(args: argparse.Namespace, config: Config) -> int:
    from strongroom.services import heal as heal_service

    report = heal_service.heal_backups(config, None if args.all else args.id, deep=args.deep)
    if args.json:
        render.emit_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "repairs": [vars(r) for r in report.repairs],
                "wal": [vars(r) for r in report.wal.repairs] if report.wal else None,
            }
        )
    else:
        for r in report.repairs:
            mark = "ok  " if r.ok else "FAIL"
            render.out.print(f"{mark} {r.location:<8} {r.backup_id}  {r.detail}", soft_wrap=True)
        render.out.print(
            f"checked {report.checked} backup(s): healed {len(report.healed)}, "
            f"failed {len(report.failures)}"
        )
        for w in report.wal.repairs if report.wal else []:
            mark = "ok  " if w.ok else "FAIL"
            render.out.print(f"{mark} {w.location:<8} {w.name}  {w.detail}", soft_wrap=True)
    if not report.ok:
        render.err.print(f"strongroom: error: heal incomplete: {report.problems()}")
        return ExitCode.HEAL_INCOMPLETE
    return ExitCode.OK


def catalog(args: argparse.Namespace, config: Config) -> int:
    """``catalog rebuild --from LOCATION`` (the only catalog action so far)."""
    from strongroom.services import rebuild as rebuild_service

    report = rebuild_service.rebuild_catalog(
        config, args.from_location, probe_others=not args.no_probe
    )
    if args.json:
        render.emit_json(
            {
                "ok": report.ok,
                "location": report.location,
                "backups": report.copies,
                "skipped": [vars(s) for s in report.skipped],
                "unreachable": report.unreachable,
            }
        )
    else:
        for backup_id, copies in report.copies.items():
            where = ", ".join(f"{n}={s}" for n, s in copies.items())
            render.out.print(f"ok   {backup_id}  {where}")
        for s in report.skipped:
            render.out.print(f"SKIP {s.key}  {s.reason}", soft_wrap=True)
        render.out.print(
            f"catalog rebuilt from {report.location}: {len(report.backups)} backup(s), "
            f"{len(report.skipped)} manifest(s) skipped"
        )
    if not report.ok:
        render.err.print(f"strongroom: error: rebuild incomplete: {report.problems()}")
        return ExitCode.REBUILD_INCOMPLETE
    return ExitCode.OK


def _env_secret(var: str) -> str:
    """A password from the environment, never from argv (where ``ps`` would show it)."""
    value = os.environ.get(var, "")
    if not value:
        raise ConfigError(f"environment variable {var} is empty: export the password there")
    return value
