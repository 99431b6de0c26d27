"""Read-mostly admin: the catalog is written by strongroom's services, looked at by people."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from strongroom.models import Backup, BackupCopy, BackupEvent


class _ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]
    """History is evidence: no adding or editing by hand (deleting stays for superusers)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class BackupCopyInline(admin.TabularInline):  # type: ignore[type-arg]
    model = BackupCopy
    extra = 0
    can_delete = False
    fields = ("location", "status", "key", "size_bytes", "error", "verified_at", "updated_at")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Backup)
class BackupAdmin(_ReadOnly):
    list_display = (
        "id",
        "backup_type",
        "database",
        "tenant_id",
        "status",
        "size_mb",
        "compression",
        "backup_duration_seconds",
        "created_at",
        "verified_at",
    )
    list_filter = ("status", "backup_type", "database")
    search_fields = ("id", "database", "tenant_id", "backup_job_id", "checksum")
    date_hierarchy = "created_at"
    inlines = (BackupCopyInline,)

    @admin.display(description="size (MB)", ordering="size_bytes")
    def size_mb(self, obj: Backup) -> float:
        return obj.get_size_mb()

    @admin.display(description="saved", ordering="compression_ratio")
    def compression(self, obj: Backup) -> str:
        return "-" if obj.compression_ratio is None else f"{obj.compression_ratio * 100:.1f}%"


@admin.register(BackupCopy)
class BackupCopyAdmin(_ReadOnly):
    list_display = ("backup", "location", "status", "size_bytes", "verified_at", "updated_at")
    list_filter = ("status", "location", "backup__database")
    search_fields = ("backup__id", "key")
    list_select_related = ("backup",)


@admin.register(BackupEvent)
class BackupEventAdmin(_ReadOnly):
    list_display = ("created_at", "kind", "backup_id", "location", "message")
    list_filter = ("kind", "location")
    search_fields = ("backup__id", "message")
    date_hierarchy = "created_at"
