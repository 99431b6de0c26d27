"""Read-only admin: the catalog is written by strongroom's services, looked at by people.

Nothing here can add, change or delete a backup, a copy, an event or a drill (superusers
included, and no bulk delete action): the history is evidence, and a copy deleted by hand would
leave storage and catalog disagreeing. Prune deletes by the retention rules; nothing else does.

The dashboard (``Dashboard``, a proxy of ``Backup`` so the admin index links to it) shows, per
database, the newest full, tenant and base backup, each location's copies and health, the last
drill and its RTO, the WAL archive's age and what ``strongroom check`` says.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from strongroom.conf import config_from_django
from strongroom.errors import StrongroomError
from strongroom.models import Backup, BackupCopy, BackupEvent, Dashboard, Drill
from strongroom.services import dashboard as dashboard_service


class _ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]
    """History is evidence: no adding, editing or deleting by hand, not even by superusers."""

    actions = None  # no "delete selected"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
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

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
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
        "last_drill_ok",
    )
    list_filter = ("status", "backup_type", "database", "tenant_id", "copies__location")
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
    list_filter = ("status", "location", "backup__backup_type", "backup__database")
    search_fields = ("backup__id", "key")
    list_select_related = ("backup",)


@admin.register(BackupEvent)
class BackupEventAdmin(_ReadOnly):
    list_display = ("created_at", "kind", "backup_id", "location", "message")
    list_filter = ("kind", "location")
    search_fields = ("backup__id", "message")
    date_hierarchy = "created_at"


@admin.register(Drill)
class DrillAdmin(_ReadOnly):
    list_display = (
        "started_at",
        "database",
        "kind",
        "backup_id",
        "ok",
        "rto_seconds",
        "target",
        "error",
    )
    list_filter = ("ok", "kind", "database")
    search_fields = ("backup__id", "target", "error")
    date_hierarchy = "started_at"


@admin.register(Dashboard)
class DashboardAdmin(_ReadOnly):
    """Not a list: the index's "Dashboard" entry opens the operator's page instead."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user: Any = request.user
        return bool(user.is_active and user.is_staff and user.has_perm("strongroom.view_backup"))

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        view = self.admin_site.admin_view(self.dashboard_view)
        return [
            path("", view, name=f"{opts.app_label}_{opts.model_name}_changelist"),
            path("<path:database>/", view, name=f"{opts.app_label}_{opts.model_name}_database"),
        ]

    def dashboard_view(self, request: HttpRequest, database: str | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            return HttpResponse("forbidden\n", status=403, content_type="text/plain")
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": f"Backups of {database}" if database else "Backup dashboard",
            "opts": self.model._meta,
            "database": database,
        }
        try:
            context["board"] = dashboard_service.build(config_from_django(), database=database)
        except StrongroomError as exc:
            context["problem"] = str(exc)
        return TemplateResponse(request, "admin/strongroom/dashboard.html", context)
