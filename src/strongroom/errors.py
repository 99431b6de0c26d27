"""One shallow exception hierarchy for the whole project.

Library code raises these; only the interface layer (CLI, tasks) turns them into exit codes and
one line for the operator. Every message is written to be shown as-is: what is wrong, and how to
fix it. Messages never contain secrets.
"""

from __future__ import annotations

from enum import IntEnum

TYPE_CHECKING = False  # not typing's: wal-push's fast path imports this module, not typing
if TYPE_CHECKING:
    from typing import ClassVar


class ExitCode(IntEnum):
    """Every exit status strongroom uses, in one table (scripts and monitoring depend on them)."""

    OK = 0
    #: An error without a more specific code, an unexpected failure, or a demo that did not pass.
    FAILED = 1
    #: Bad settings or input: retrying the same thing will not help (argparse uses 2 as well).
    CONFIG = 2
    WRONG_KEY = 3
    #: Stored bytes fail authentication or checksum; also ``verify`` finding a bad copy.
    INTEGRITY = 4
    #: Another backup of the same database is running, or a ``--replace`` target stays in use.
    LOCK_BUSY = 5
    #: ``backup`` finished but not every required copy was stored.
    BACKUP_INCOMPLETE = 6
    #: ``restore`` ran but the restored row counts differ from the manifest.
    RESTORE_MISMATCH = 7
    #: ``check`` found a required probe failing.
    CHECK_FAILED = 8
    PRUNE_INCOMPLETE = 9
    HEAL_INCOMPLETE = 10
    REBUILD_INCOMPLETE = 11
    #: The catalog is damaged or cannot be opened (``catalog rebuild`` is the fix).
    CATALOG = 12
    #: A one-tenant restore found the target's schema differing from the backup's.
    SCHEMA_DRIFT = 13
    #: ``drill`` ran, and the restored backup was not proved: a mismatch or a failed restore.
    DRILL_FAILED = 14
    #: ``wal-push``: the archive already holds a different file of that name (nothing written).
    WAL_CONFLICT = 15
    #: ``wal-push``: the segment's header names another cluster than the archive's.
    WAL_FOREIGN = 16
    #: ``wal-verify``: a segment is missing or fails its checks in some location.
    WAL_GAP = 17
    #: 128 + the signal that stopped the run, as a shell reports it: SIGHUP, SIGINT (Ctrl-C),
    #: SIGTERM (systemd, Docker, Kubernetes, ``timeout``).
    HANGUP = 129
    INTERRUPTED = 130
    TERMINATED = 143
    #: ``wal-fetch``: no location could be read and no good copy was found. Above 125 on
    #: purpose: PostgreSQL then stops recovery instead of ending it early at an older point.
    WAL_FETCH_STOP = 200


class StrongroomError(Exception):
    """Base of every error strongroom raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED
    #: Whether retrying the same operation later may succeed (Celery retries only these).
    transient = False


class ConfigError(StrongroomError):
    """A setting is missing or malformed; retrying will not help."""

    exit_code = ExitCode.CONFIG


class KeyConfigError(ConfigError):
    """BACKUP_ENCRYPTION_KEY (or an older key) is missing or malformed."""


class WrongKeyError(StrongroomError):
    """The object was encrypted with a key id that is not in the keyring."""

    exit_code = ExitCode.WRONG_KEY

    def __init__(self, message: str, key_id: str = "") -> None:
        super().__init__(message)
        self.key_id = key_id


class IntegrityError(StrongroomError):
    """Stored bytes fail authentication or checksum: tampered, truncated or corrupt."""

    exit_code = ExitCode.INTEGRITY


class StorageError(StrongroomError):
    """A storage location failed."""

    transient = True

    def __init__(self, message: str, location: str = "") -> None:
        super().__init__(message)
        self.location = location


class LocationUnavailable(StorageError):
    """A location cannot be reached, or refuses our credentials."""


class ObjectNotFound(StorageError):
    """The requested object does not exist in that location."""

    transient = False


class PostgresError(StrongroomError):
    """PostgreSQL, pg_dump or pg_restore failed."""


class PreflightError(PostgresError):
    """The database cannot be backed up as configured (e.g. RLS without BYPASSRLS)."""

    exit_code = ExitCode.CONFIG


class DumpFailed(PostgresError):
    """pg_dump exited non-zero or timed out."""


class RestoreError(PostgresError):
    """pg_restore failed, or the restored data does not match the manifest."""


class TargetNotEmpty(RestoreError):
    """The restore target already holds tables and replacing it was not asked for."""

    exit_code = ExitCode.CONFIG


class TargetBusy(RestoreError):
    """Other sessions stayed connected to the ``--replace`` target past the wait's limit.

    Its own class because the fix is the operator's choice: wait, end those sessions, or let
    strongroom end them (``--terminate-sessions``); retrying later may well succeed.
    """

    exit_code = ExitCode.LOCK_BUSY
    transient = True


class SchemaDrift(RestoreError):
    """A tenant table or column of the backup is missing on the target, or has another type.

    Its own code because the fix is a migration (or the backup of the right night), never a
    retry: the one-tenant restore changes nothing until every table and column matches.
    """

    exit_code = ExitCode.SCHEMA_DRIFT


class TenantRowsMismatch(RestoreError):
    """The rows a one-tenant restore read differ from the manifest's counts: nothing written."""

    exit_code = ExitCode.RESTORE_MISMATCH


class WalNotArchived(StrongroomError):
    """A base backup's WAL did not reach every required location in time: not restorable."""

    exit_code = ExitCode.BACKUP_INCOMPLETE
    transient = True


class BackupNotFound(StrongroomError):
    """No backup in the catalog (or storage) matches the request."""

    exit_code = ExitCode.CONFIG


class TenantNotFound(StrongroomError):
    """The tenant id names no row of the tenant table: nothing to back up."""

    exit_code = ExitCode.CONFIG


class LockBusy(StrongroomError):
    """Another backup of the same database is already running."""

    exit_code = ExitCode.LOCK_BUSY


class CatalogError(StrongroomError):
    """The catalog is damaged or cannot be opened; the backups in storage are not affected.

    Its own exit code (12) because the fix is neither a setting nor a retry: move the catalog
    aside and rebuild it from a location's manifests (``strongroom catalog rebuild``).
    """

    exit_code = ExitCode.CATALOG

    def __init__(self, message: str, *, damaged: bool = False) -> None:
        super().__init__(message)
        #: The file's bytes are wrong (move it aside), rather than the catalog being unreachable.
        self.damaged = damaged


class WrongBackupKind(StrongroomError):
    """The backup exists but is of a kind this command does not restore (e.g. a tenant's)."""

    exit_code = ExitCode.CONFIG


class NotSupportedYet(StrongroomError):
    """The request is understood, but this version cannot do it yet (e.g. a tenant drill)."""

    exit_code = ExitCode.CONFIG


class WalConflict(StrongroomError):
    """The archive holds a different file under this WAL name: never overwritten."""

    exit_code = ExitCode.WAL_CONFLICT


class ForeignWal(StrongroomError):
    """A WAL segment of another cluster than the one being archived."""

    exit_code = ExitCode.WAL_FOREIGN


class WalNotFound(StrongroomError):
    """Every location answered that the WAL file is not archived (the end of recovery)."""

    exit_code = ExitCode.FAILED


class WalFetchStop(StrongroomError):
    """No good copy could be read: recovery must stop, not end early at an older point."""

    exit_code = ExitCode.WAL_FETCH_STOP
    transient = True


class Interrupted(BaseException):
    """A signal (SIGTERM, SIGINT, SIGHUP) stopped the run; raised in the main thread.

    A ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` on the way up
    swallows it; every ``finally`` and ``except BaseException`` cleanup still runs (children
    stopped, uploads aborted, partial and scratch files removed, the record FAILED).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = _signal_name(signum)
        super().__init__(f"interrupted by {self.name}")

    @staticmethod
    def raised(exc: Interrupted | None) -> None:
        """Note that ``exc`` is being raised in this process (None: the handling is over)."""
        _RAISED[:] = [exc] if exc is not None else []

    @staticmethod
    def pending() -> Interrupted | None:
        """The interrupt raised in this process, if any.

        For code that calls a native library which calls back into Python (Tink's C++ streams):
        an interrupt raised inside the callback comes back wrapped in the library's own error,
        and must be raised as itself, so the run ends as interrupted, not as a crypto failure.
        """
        return _RAISED[0] if _RAISED else None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_RAISED: list[Interrupted] = []


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
