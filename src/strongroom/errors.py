"""One shallow exception hierarchy for the whole project.

Library code raises these; only the interface layer (CLI, tasks) turns them into exit codes and
one line for the operator. Every message is written to be shown as-is: what is wrong, and how to
fix it. Messages never contain secrets.
"""

from __future__ import annotations


class StrongroomError(Exception):
    """Base of every error strongroom raises on purpose."""

    exit_code = 1
    #: Whether retrying the same operation later may succeed (Celery retries only these).
    transient = False


class ConfigError(StrongroomError):
    """A setting is missing or malformed; retrying will not help."""

    exit_code = 2


class KeyConfigError(ConfigError):
    """BACKUP_ENCRYPTION_KEY (or an older key) is missing or malformed."""


class WrongKeyError(StrongroomError):
    """The object was encrypted with a key id that is not in the keyring."""

    exit_code = 3

    def __init__(self, message: str, key_id: str = "") -> None:
        super().__init__(message)
        self.key_id = key_id


class IntegrityError(StrongroomError):
    """Stored bytes fail authentication or checksum: tampered, truncated or corrupt."""

    exit_code = 4


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

    exit_code = 2


class DumpFailed(PostgresError):
    """pg_dump exited non-zero or timed out."""


class RestoreError(PostgresError):
    """pg_restore failed, or the restored data does not match the manifest."""


class TargetNotEmpty(RestoreError):
    """The restore target already holds tables and replacing it was not asked for."""

    exit_code = 2


class BackupNotFound(StrongroomError):
    """No backup in the catalog (or storage) matches the request."""

    exit_code = 2


class LockBusy(StrongroomError):
    """Another backup of the same database is already running."""

    exit_code = 5


class CatalogError(StrongroomError):
    """The catalog is damaged or cannot be opened; the backups in storage are not affected.

    Its own exit code (12) because the fix is neither a setting nor a retry: move the catalog
    aside and rebuild it from a location's manifests (``strongroom catalog rebuild``).
    """

    exit_code = 12

    def __init__(self, message: str, *, damaged: bool = False) -> None:
        super().__init__(message)
        #: The file's bytes are wrong (move it aside), rather than the catalog being unreachable.
        self.damaged = damaged
