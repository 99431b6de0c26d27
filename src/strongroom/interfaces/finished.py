"""How every backup command ends: the run's record for the operator, and its exit status.

Full, tenant and base backups finish alike: the catalog's record printed (``--json`` or the
detail view), and anything but COMPLETED is one error line and ``BACKUP_INCOMPLETE``.
"""

from __future__ import annotations

from strongroom.catalog import store
from strongroom.core.status import BackupStatus
from strongroom.errors import ExitCode
from strongroom.interfaces import render
from strongroom.services.backup import BackupReport


def finished_backup(report: BackupReport, *, as_json: bool, label: str = "backup") -> int:
    """Print the finished run ``report``; its exit status."""
    doc = store.backup_to_dict(store.get_backup(report.id))
    if as_json:
        render.emit_json(doc)
    else:
        render.backup_detail(doc)
    if report.status != BackupStatus.COMPLETED:
        render.err.print(
            f"strongroom: error: {label} {report.id} is {report.status}: {report.error}"
        )
        return ExitCode.BACKUP_INCOMPLETE
    return ExitCode.OK
