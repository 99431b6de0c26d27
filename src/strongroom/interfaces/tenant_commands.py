"""The ``strongroom tenant ...`` commands: back up one tenant or all, list tenants, restore one."""

from __future__ import annotations

import argparse
from typing import Any

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.status import BackupStatus
from strongroom.errors import BackupNotFound, ExitCode
from strongroom.interfaces import render
from strongroom.interfaces.finished import finished_backup
from strongroom.services import tenant_backup, tenant_restore


def tenant(args: argparse.Namespace, config: Config) -> int:
    if args.tenant_command == "list":
        return _list(args, config)
    if args.tenant_command == "restore":
        return _restore(args, config)
    if args.all:
        return _backup_all(args, config)
    return _backup_one(args, config)


def _backup_one(args: argparse.Namespace, config: Config) -> int:
    show = not (args.json or args.no_progress)
    with render.progress(f"tenant {args.tenant_id}", show) as update:
        report = tenant_backup.run_tenant_backup(
            config, args.tenant_id, progress=lambda raw, stored: update(raw)
        )
    return finished_backup(report, as_json=args.json, label="tenant backup")


def _backup_all(args: argparse.Namespace, config: Config) -> int:
    outcomes = tenant_backup.run_all_tenant_backups(config)
    rows = [_outcome_row(o) for o in outcomes]
    if args.json:
        render.emit_json({"ok": all(o.ok for o in outcomes), "tenants": rows})
    else:
        render.tenant_runs_table(rows)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        render.err.print(
            f"strongroom: error: {len(failed)} of {len(outcomes)} tenant backup(s) did not "
            "complete: " + "; ".join(f"{o.tenant_id}: {o.error or 'not completed'}" for o in failed)
        )
        return ExitCode.BACKUP_INCOMPLETE
    return ExitCode.OK


def _outcome_row(outcome: tenant_backup.TenantOutcome) -> dict[str, Any]:
    report = outcome.report
    return {
        "tenant_id": outcome.tenant_id,
        "id": report.id if report else None,
        "status": report.status if report else BackupStatus.FAILED,
        "error": outcome.error,
        "stored_size": report.stored_size if report else 0,
    }


def _list(args: argparse.Namespace, config: Config) -> int:
    rows = []
    for summary in tenant_backup.tenant_rows(config):
        rows.append(
            {
                "tenant_id": summary.tenant_id,
                "rows": summary.rows,
                "newest_backup": _newest(summary.tenant_id),
            }
        )
    if args.json:
        render.emit_json(rows)
    else:
        render.tenants_table(rows)
    return ExitCode.OK


def _newest(tenant_id: str) -> dict[str, Any] | None:
    try:
        found = store.latest_backup(backup_type="TENANT_BACKUP", tenant_id=tenant_id)
    except BackupNotFound:
        return None
    return {
        "id": found.id,
        "status": found.status,
        "created_at": store.backup_to_dict(found)["created_at"],
    }


def _restore(args: argparse.Namespace, config: Config) -> int:
    show = not (args.json or args.no_progress)
    with render.progress("download+verify", show) as update:
        report = tenant_restore.restore_tenant(
            config,
            None if args.latest else args.id,
            args.target,
            tenant_id=args.tenant,
            replace=args.replace,
            from_location=args.from_location,
            progress=update,
        )
    if args.json:
        render.emit_json(
            {
                "id": report.id,
                "kind": report.kind,
                "tenant_id": report.tenant_id,
                "status": "RESTORED" if report.ok else "MISMATCH",
                "mode": report.mode,
                "source": report.source,
                "target": report.target,
                "seconds": round(report.seconds, 3),
                "stages": {name: round(sec, 3) for name, sec in report.stages.items()},
                "skipped": report.skipped,
                "tables": {
                    t: {"expected": e, "restored": a} for t, (e, a) in report.table_rows.items()
                },
            }
        )
    else:
        _print_restore(report)
    if not report.ok:
        render.err.print(
            f"strongroom: error: restored row counts differ from the backup's in "
            f"{len(report.mismatches)} table(s): {', '.join(report.mismatches)}"
        )
        return ExitCode.RESTORE_MISMATCH
    return ExitCode.OK


def _print_restore(report: tenant_restore.TenantRestoreReport) -> None:
    for skipped in report.skipped:
        render.out.print(f"skipped copy {skipped}", soft_wrap=True)
    render.out.print(
        f"restored tenant {report.tenant_id} from {report.kind} backup {report.id} "
        f"({report.source}) into {report.target}, {report.mode}, in {report.seconds:.1f}s ("
        + ", ".join(f"{name} {sec:.1f}s" for name, sec in report.stages.items())
        + ")",
        soft_wrap=True,
    )
    for table, (expected, actual) in report.table_rows.items():
        mark = "ok  " if expected == actual else "DIFF"
        render.out.print(
            f"  {mark} {table:<40} {expected:>10} rows in backup, "
            f"{actual if actual is not None else '-':>10} restored"
        )
