"""PostgreSQL side of a backup, one module per concern.

* ``conninfo``: where the database is (:class:`ConnInfo`) and the environment libpq children get.
* ``binaries``: finding pg_dump / pg_restore, their version, draining their stderr.
* ``tables``: the user tables and their exact row counts.
* ``preflight``: refuse a role that could not dump every tenant's rows (RLS).
* ``dump``: the exported snapshot and the pg_dump process.
* ``restore``: the target database, pg_restore, the restored row counts, undoing a failed run.
* ``replace``: ``--replace`` as a restore beside the target and a swap of names at the end.
* ``drill``: the throwaway databases of restore drills (``strongroom_drill_*``).
* ``roles``: the least-privilege backup role of ``strongroom setup-role``.
* ``archiver``: ``pg_stat_archiver``, the server's own record of archived WAL.
* ``archive_offsets``: the data offsets a pipe-written custom archive lacks, put back in its copy.
* ``archiving``: the archive mode, the current segment and the data directory, for ``check``.

Callers use the names re-exported here (``postgres.preflight(...)``), not the modules.
"""

from __future__ import annotations

from strongroom.core.postgres.archive_offsets import OffsetIndexer
from strongroom.core.postgres.archiver import ArchiverStatus, archiver_status
from strongroom.core.postgres.archiving import ServerArchiving, server_archiving
from strongroom.core.postgres.binaries import binary_version, find_binary
from strongroom.core.postgres.conninfo import ConnInfo
from strongroom.core.postgres.drill import (
    DRILL_PREFIX,
    can_create_databases,
    drill_database_name,
    drill_databases,
    drop_drill_database,
)
from strongroom.core.postgres.dump import DumpProcess, exported_snapshot, start_dump
from strongroom.core.postgres.preflight import Preflight, preflight
from strongroom.core.postgres.replace import Replacement, replacement, swap_in, wait_for_target
from strongroom.core.postgres.restore import (
    TargetMark,
    mark_target,
    prepare_target,
    run_restore,
    target_row_counts,
    undo_restore,
)
from strongroom.core.postgres.roles import apply_setup_role, setup_role_sql, setup_role_statements
from strongroom.core.postgres.tables import TableRef, count_rows

__all__ = [
    "DRILL_PREFIX",
    "ArchiverStatus",
    "ConnInfo",
    "DumpProcess",
    "OffsetIndexer",
    "Preflight",
    "Replacement",
    "ServerArchiving",
    "TableRef",
    "TargetMark",
    "apply_setup_role",
    "archiver_status",
    "binary_version",
    "can_create_databases",
    "count_rows",
    "drill_database_name",
    "drill_databases",
    "drop_drill_database",
    "exported_snapshot",
    "find_binary",
    "mark_target",
    "preflight",
    "prepare_target",
    "replacement",
    "run_restore",
    "server_archiving",
    "setup_role_sql",
    "setup_role_statements",
    "start_dump",
    "swap_in",
    "target_row_counts",
    "undo_restore",
    "wait_for_target",
]
