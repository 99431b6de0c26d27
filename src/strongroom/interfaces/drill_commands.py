"""``strongroom drill [ID|--latest] [--kind full|tenant|base]``: prove a backup restorable."""

from __future__ import annotations

import argparse

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.errors import ExitCode
from strongroom.interfaces import render
from strongroom.services import drill as drill_service
from strongroom.services.pitr import strongroom_command


def drill(args: argparse.Namespace, config: Config) -> int:
    report = drill_service.run_drill(
        config,
        None if args.latest else args.id,
        kind=args.kind,
        tool=strongroom_command(args.config, args.strongroom_path),
    )
    doc = store.drill_to_dict(store.get_drill(report.drill_id))
    if args.json:
        render.emit_json(doc)
    else:
        render.drill_detail(doc)
    if not report.ok:
        render.err.print(
            f"strongroom: error: drill {report.drill_id} of backup {report.backup_id} "
            f"failed: {report.error}"
        )
        return ExitCode.DRILL_FAILED
    return ExitCode.OK
