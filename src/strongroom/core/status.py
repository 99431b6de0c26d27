"""The one vocabulary of backup and copy statuses, and the sets every module reasons with.

Defined here, without Django, so the catalog's models (whose choices are built from these
enums), the store, retention, discovery, verify, heal and the Celery tasks cannot spell a status
or a set of statuses two ways. Values are the strings stored in the catalog and shown to
operators; they never change.
"""

from __future__ import annotations

import enum


class BackupStatus(enum.StrEnum):
    """Where one backup run stands: IN_PROGRESS, then one final status."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    #: Stored in every required location but not in every configured one.
    PARTIAL = "PARTIAL"
    #: Every configured location holds a copy that read back intact.
    VERIFIED = "VERIFIED"
    FAILED = "FAILED"
    #: Another run of the same database held the lock.
    SKIPPED = "SKIPPED"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").capitalize()


class CopyStatus(enum.StrEnum):
    """One backup's object in one location."""

    #: The run is still writing it.
    PENDING = "PENDING"
    STORED = "STORED"
    VERIFIED = "VERIFIED"
    #: The run could not store it (or withdrew it because a required location failed).
    FAILED = "FAILED"
    CORRUPT = "CORRUPT"
    MISSING = "MISSING"
    #: Pruned on purpose.
    DELETED = "DELETED"

    @property
    def label(self) -> str:
        return self.value.capitalize()


class FailureCause(enum.StrEnum):
    """Why a FAILED run failed, when the reason is a fact other modules act on."""

    #: The run died (worker killed, machine lost) and a later run or ``check`` found it.
    DEAD_RUN = "dead-run"
    #: The run stopped reporting progress for longer than the stale limit.
    STALE_RUN = "stale-run"


#: A run is still writing this backup.
RUNNING = frozenset({BackupStatus.IN_PROGRESS})
#: Backups with at least one copy a restore may use.
RESTORABLE = frozenset({BackupStatus.COMPLETED, BackupStatus.PARTIAL, BackupStatus.VERIFIED})
#: Backups worth reading back: the same set (SKIPPED and FAILED runs stored nothing usable).
VERIFIABLE = RESTORABLE
#: Final statuses that are a problem to report (notifications, events).
PROBLEM = frozenset({BackupStatus.FAILED, BackupStatus.PARTIAL, BackupStatus.SKIPPED})

#: Copies a restore, verify or heal may read from.
USABLE_COPY = frozenset({CopyStatus.STORED, CopyStatus.VERIFIED})
#: Copies whose object holds (or held, and heal can bring back) the backup's data.
DATA_COPY = frozenset({*USABLE_COPY, CopyStatus.CORRUPT, CopyStatus.MISSING})
#: Copies heal re-creates from a good copy elsewhere.
BROKEN_COPY = frozenset({CopyStatus.MISSING, CopyStatus.CORRUPT, CopyStatus.FAILED})
#: Copies nobody touches: pruned on purpose, or still being written.
SETTLED_AWAY = frozenset({CopyStatus.DELETED, CopyStatus.PENDING})
#: Copies that count when a backup's status is derived from its copies.
LIVE_COPY_EXCLUDES = frozenset({CopyStatus.DELETED, CopyStatus.FAILED, CopyStatus.PENDING})
