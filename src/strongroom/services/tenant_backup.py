"""The tenant backup: one tenant's rows of every tenant table, through the one store path.

The export (:mod:`strongroom.core.postgres.tenant_export`) is checked before any record exists,
so an unknown tenant id or a role that cannot read under the RLS policy is one line and nothing
stored. Then, holding the database's lock (one run per database at a time, as the full backup),
the framed stream goes through ``storing.ObjectUpload`` as ``<db>/tenant/...``: compressed,
encrypted, hashed, every location, manifest last, catalogued ``TENANT_BACKUP`` with
``tenant_id`` and its own retention series ``tenant:<id>``. The export's header carries the
database's schema (``pg_dump --schema-only`` in the export's snapshot), so a tenant can also be
restored into a new database. ``--all`` runs each tenant on its
own and reports each; one failing tenant does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import postgres, tenant_format
from strongroom.core.manifest import Manifest, database_prefix, object_key_for
from strongroom.core.pipeline import StreamResult
from strongroom.core.postgres.tenant_export import (
    SchemaDump,
    TenantScope,
    TenantSession,
    model_snapshot,
    tenant_session,
)
from strongroom.core.postgres.tenants import rows_per_tenant, tenant_ids
from strongroom.core.status import BackupStatus
from strongroom.errors import PreflightError, StrongroomError
from strongroom.services.backup import BackupReport, finish_run, run_locked
from strongroom.services.runtime import Runtime
from strongroom.services.storing import ObjectUpload, Stored, stream_fields

log = logging.getLogger("strongroom.tenant_backup")

Progress = Callable[[int, int], None]


def scope_of(config: Config) -> TenantScope:
    """The configured tenant model (``STRONGROOM_TENANT_*``)."""
    return TenantScope(
        config.tenant_table, config.tenant_column, config.tenant_setting, config.tenant_role
    )


def run_tenant_backup(
    config: Config, tenant_id: str, *, job_id: str = "", progress: Progress | None = None
) -> BackupReport:
    """Back up one tenant; always leaves a final status once a record exists."""
    runtime = Runtime.build(config)
    target = postgres.ConnInfo.parse(config.database_url)
    schema = SchemaDump(timeout=config.pg_dump_timeout, bindir=config.pg_bindir)
    with tenant_session(target, scope_of(config), tenant_id, schema_dump=schema) as session:
        record = store.start_backup(
            backup_type="TENANT_BACKUP", database=target.dbname, tenant_id=tenant_id, job_id=job_id
        )
        return run_locked(
            config,
            target,
            record.id,
            lambda: _TenantRun(runtime, target, record.id, session, progress).run(),
        )


@dataclass
class TenantOutcome:
    """One tenant of an ``--all`` run: its backup's report, or why it has none."""

    tenant_id: str
    report: BackupReport | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.report is not None and self.report.status == BackupStatus.COMPLETED


def run_all_tenant_backups(
    config: Config, *, job_id: str = "", progress: Progress | None = None
) -> list[TenantOutcome]:
    """Every tenant, one object each; a failure is reported and the next tenant goes on."""
    outcomes: list[TenantOutcome] = []
    for tenant in list_tenant_ids(config):
        try:
            report = run_tenant_backup(config, tenant, job_id=job_id, progress=progress)
            outcomes.append(TenantOutcome(tenant, report, report.error))
        except StrongroomError as exc:
            log.warning("tenant %s: %s", tenant, exc)
            outcomes.append(TenantOutcome(tenant, None, str(exc)))
    return outcomes


def list_tenant_ids(config: Config) -> list[str]:
    """Every tenant id, read by a role that sees every tenant (the full backup's role)."""
    return [t.tenant_id for t in tenant_rows(config, with_counts=False)]


@dataclass
class TenantSummary:
    """A tenant as ``strongroom tenant list`` shows it."""

    tenant_id: str
    rows: int = 0
    newest_backup: dict[str, Any] | None = field(default=None)


def tenant_rows(config: Config, *, with_counts: bool = True) -> list[TenantSummary]:
    """Tenant ids with their rows over every tenant table (one snapshot)."""
    target = postgres.ConnInfo.parse(config.database_url)
    with model_snapshot(target, scope_of(config)) as (_, conn, model, bypasses):
        if not bypasses:
            raise PreflightError(
                f"listing every tenant needs a role that sees all of {model.tenant_table}: use "
                "the full backup's role (BYPASSRLS, `strongroom setup-role`) in DATABASE_URL"
            )
        ids = tenant_ids(conn, model)
        counts = rows_per_tenant(conn, model) if with_counts else {}
    return [TenantSummary(t, counts.get(t, 0)) for t in ids]


class _TenantRun:
    """One tenant backup's state while it runs."""

    def __init__(
        self,
        runtime: Runtime,
        target: postgres.ConnInfo,
        backup_id: str,
        session: TenantSession,
        progress: Progress | None,
    ) -> None:
        self.rt = runtime
        self.target = target
        self.id = backup_id
        self.session = session
        self.progress = progress
        self.started = datetime.now(UTC)
        self.key = object_key_for(
            target.dbname, "tenant", backup_id, self.started, runtime.codec.extension
        )

    def run(self) -> BackupReport:
        upload = ObjectUpload(self.rt, self.id, self.key, self.progress)
        upload.check_required()
        upload.cleanup(database_prefix(self.target.dbname) + "tenant/", self.started)
        stored = upload.stream(self.session.start, self._manifest)
        return finish_run(stored, self._metadata(stored))

    def _manifest(self, result: StreamResult, exported: dict[str, int]) -> Manifest:
        s = self.session
        return Manifest(
            id=self.id,
            kind="tenant",
            database=self.target.dbname,
            server_version=s.server_version,
            pg_dump_version="",
            started_at=self.started,
            finished_at=datetime.now(UTC),
            table_rows=exported,
            tenant_id=s.tenant_id,
            extra=self._extra(),
            **stream_fields(self.rt, self.key, result),
        )

    def _extra(self) -> dict[str, Any]:
        s = self.session
        return {
            "format": tenant_format.FORMAT,
            "tenant_table": str(s.model.tenant_table),
            "tenant_key": s.model.tenant_key,
            "tenant_column": s.model.tenant_column,
            "tenant_setting": s.scope.setting,
            "tables": [t.describe() for t in s.model.tables],
            "shared_tables": [str(t) for t in s.model.shared],
            "linked_tables": [str(t) for t in s.model.linked],
            "roles": s.roles,
            "schema_included": s.schema is not None,
            "schema_bytes": len(s.schema or b""),
        }

    def _metadata(self, stored: Stored) -> dict[str, Any]:
        manifest = stored.manifest
        if manifest is None:
            return {"codec": self.rt.codec.name, "codec_level": self.rt.codec.level}
        return {
            "manifest": manifest.to_dict(),
            "codec": manifest.codec,
            "codec_level": manifest.codec_level,
            "codec_levels": manifest.codec_levels,
            "key_id": manifest.key_id,
            "table_rows": manifest.table_rows,
            "server_version": manifest.server_version,
        }
