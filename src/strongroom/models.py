"""The catalog: what was backed up, where each copy lives, and what happened to it since.

Field names follow the seed's ``Backup`` model, so code and habits written against it keep
working. Services never use these models directly: they go through
:mod:`strongroom.catalog.store`, which keeps the ORM out of the orchestration code.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from strongroom.core.status import RESTORABLE, BackupStatus, CopyStatus

if TYPE_CHECKING:
    # mypy runs without the django-stubs plugin: fields are annotated with these aliases.
    from django.db.models.fields.related_descriptors import RelatedManager

    Str = models.CharField[str, str]
    OptStr = models.CharField[str | None, str | None]
    Text = models.TextField[str, str]
    OptBigInt = models.BigIntegerField[int | None, int | None]
    OptInt = models.IntegerField[int | None, int | None]
    OptFloat = models.FloatField[float | None, float | None]
    When = models.DateTimeField[datetime, datetime]
    OptWhen = models.DateTimeField[datetime | None, datetime | None]
    Json = models.JSONField[dict[str, Any], dict[str, Any]]


def _choices(name: str, vocabulary: type[BackupStatus] | type[CopyStatus]) -> Any:
    """Django choices built from the core vocabulary, so the statuses are spelled once."""
    members = [(m.name, (m.value, m.label)) for m in vocabulary]
    return models.TextChoices(name, members)  # type: ignore[call-overload]


class Backup(models.Model):
    """One backup run and the object it produced (the seed's model, plus liveness fields)."""

    class Type(models.TextChoices):
        FULL_DATABASE = "FULL_DATABASE", "Full database"
        TENANT_BACKUP = "TENANT_BACKUP", "Tenant backup"
        WAL_ARCHIVE = "WAL_ARCHIVE", "WAL archive"
        BASE_BACKUP = "BASE_BACKUP", "Base backup"

    Status = _choices("Status", BackupStatus)

    id: Str = models.CharField(primary_key=True, max_length=64, editable=False)
    backup_type: Str = models.CharField(
        max_length=20, choices=Type.choices, default=Type.FULL_DATABASE
    )
    database: Str = models.CharField(max_length=255, help_text="Name of the backed-up database.")
    tenant_id: OptStr = models.CharField(max_length=255, null=True, blank=True)
    filename: Str = models.CharField(max_length=255, blank=True, default="")
    size_bytes: OptBigInt = models.BigIntegerField(
        null=True, blank=True, help_text="Stored (encrypted)."
    )
    raw_size_bytes: OptBigInt = models.BigIntegerField(null=True, blank=True)
    compressed_size_bytes: OptBigInt = models.BigIntegerField(null=True, blank=True)
    checksum: Str = models.CharField(
        max_length=64, blank=True, default="", help_text="SHA-256 hex of the stored object."
    )
    local_path: Str = models.CharField(max_length=1024, blank=True, default="")
    r2_path: Str = models.CharField(max_length=1024, blank=True, default="")
    b2_path: Str = models.CharField(max_length=1024, blank=True, default="")
    status: Str = models.CharField(
        max_length=16, choices=Status.choices, default=Status.IN_PROGRESS
    )
    error: Text = models.TextField(
        blank=True, default="", help_text="Why FAILED, PARTIAL or SKIPPED."
    )
    compression_ratio: OptFloat = models.FloatField(
        null=True, blank=True, help_text="Fraction saved: 1 - compressed / raw."
    )
    backup_duration_seconds: OptFloat = models.FloatField(null=True, blank=True)
    backup_job_id: Str = models.CharField(max_length=255, blank=True, default="", db_index=True)
    created_by: models.ForeignKey[Any, Any] = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    metadata: Json = models.JSONField(default=dict, blank=True)
    # Not auto_now_add: a catalog rebuilt from manifests keeps each backup's real time.
    created_at: When = models.DateTimeField(default=timezone.now)
    started_at: OptWhen = models.DateTimeField(null=True, blank=True)
    finished_at: OptWhen = models.DateTimeField(null=True, blank=True)
    verified_at: OptWhen = models.DateTimeField(null=True, blank=True)
    #: The newest restore drill of this backup, and whether it passed.
    last_drill_at: OptWhen = models.DateTimeField(null=True, blank=True)
    last_drill_ok: models.BooleanField[bool | None, bool | None] = models.BooleanField(null=True)
    heartbeat_at: OptWhen = models.DateTimeField(null=True, blank=True)
    host: Str = models.CharField(max_length=255, blank=True, default="")
    pid: OptInt = models.IntegerField(null=True, blank=True)

    if TYPE_CHECKING:  # what Django's metaclass adds; mypy runs without the django-stubs plugin
        created_by_id: int | None
        copies: RelatedManager[BackupCopy]
        events: RelatedManager[BackupEvent]
        drills: RelatedManager[Drill]

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = (
            models.Index(
                fields=("database", "status", "created_at"), name="strongroom_db_status_created"
            ),
        )

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    def get_size_mb(self) -> float:
        """Stored size in MB (2 decimals), as the seed's manual test prints it."""
        return round((self.size_bytes or 0) / (1024 * 1024), 2)

    @property
    def is_restorable(self) -> bool:
        return self.status in RESTORABLE


class BackupCopy(models.Model):
    """One backup's object in one location (local, r2, b2, ...)."""

    Status = _choices("Status", CopyStatus)

    backup: models.ForeignKey[Backup, Backup] = models.ForeignKey(
        Backup, on_delete=models.CASCADE, related_name="copies"
    )
    location: Str = models.CharField(max_length=64)
    key: Str = models.CharField(max_length=1024, blank=True, default="")
    manifest_key: Str = models.CharField(max_length=1024, blank=True, default="")
    status: Str = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    size_bytes: OptBigInt = models.BigIntegerField(null=True, blank=True)
    checksum: Str = models.CharField(max_length=64, blank=True, default="")
    error: Text = models.TextField(blank=True, default="")
    duration_seconds: OptFloat = models.FloatField(null=True, blank=True)
    verified_at: OptWhen = models.DateTimeField(null=True, blank=True)
    updated_at: When = models.DateTimeField(auto_now=True)

    if TYPE_CHECKING:
        backup_id: str

    class Meta:
        ordering = ("backup_id", "location")
        verbose_name_plural = "backup copies"
        constraints = (
            models.UniqueConstraint(
                fields=("backup", "location"), name="strongroom_copy_unique_location"
            ),
        )

    def __str__(self) -> str:
        return f"{self.backup_id} in {self.location} ({self.status})"


class BackupEvent(models.Model):
    """Append-only log: verifications, repairs, prunes, runs found dead, skips."""

    # No database constraint and no cascade: the log keeps a backup's id after its row is gone,
    # and may name a backup the catalog never had (a prune resumed after a rebuild).
    backup: models.ForeignKey[Backup | None, Backup | None] = models.ForeignKey(
        Backup,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="events",
    )
    kind: Str = models.CharField(max_length=32, db_index=True)
    location: Str = models.CharField(max_length=64, blank=True, default="")
    message: Text = models.TextField(blank=True, default="")
    created_at: When = models.DateTimeField(default=timezone.now)
    data: Json = models.JSONField(default=dict, blank=True)

    if TYPE_CHECKING:
        backup_id: str | None

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.kind} {self.backup_id or '-'} {self.location}".strip()


class Drill(models.Model):
    """One restore drill: a backup restored into a throwaway target, proved, and removed.

    ``rto_seconds`` is the measured recovery time: from the drill's start to a usable database.
    ``ok`` is ``None`` while the drill runs. Like events, a drill keeps its backup's id after
    the backup is pruned (no database constraint, no cascade).
    """

    backup: models.ForeignKey[Backup | None, Backup | None] = models.ForeignKey(
        Backup,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="drills",
    )
    kind: Str = models.CharField(max_length=16, help_text="full, tenant or base.")
    database: Str = models.CharField(max_length=255)
    #: The throwaway target: a database name, or a data directory for a base backup.
    target: Str = models.CharField(max_length=1024, blank=True, default="")
    started_at: When = models.DateTimeField(default=timezone.now)
    finished_at: OptWhen = models.DateTimeField(null=True, blank=True)
    rto_seconds: OptFloat = models.FloatField(null=True, blank=True)
    ok: models.BooleanField[bool | None, bool | None] = models.BooleanField(null=True)
    #: ``[{"table": ..., "expected": n, "found": m}, ...]`` where the rows disagreed.
    mismatches: models.JSONField[list[Any], list[Any]] = models.JSONField(default=list, blank=True)
    error: Text = models.TextField(blank=True, default="")
    host: Str = models.CharField(max_length=255, blank=True, default="")
    pid: OptInt = models.IntegerField(null=True, blank=True)
    data: Json = models.JSONField(default=dict, blank=True)

    if TYPE_CHECKING:
        backup_id: str | None

    class Meta:
        ordering = ("-started_at", "-id")
        indexes = (
            models.Index(
                fields=("database", "kind", "started_at"), name="strongroom_drill_db_kind"
            ),
        )

    def __str__(self) -> str:
        state = "running" if self.ok is None else ("ok" if self.ok else "FAILED")
        return f"drill of {self.backup_id or '-'} ({state})"


class Dashboard(Backup):
    """No table of its own: the admin's entry for the operator's dashboard (see ``admin.py``).

    A proxy of :class:`Backup`, so the admin index links to the dashboard beside the lists and
    the dashboard is shown to whoever may view backups.
    """

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
