"""One tenant's rows put back: into the live shared database, or exported into a new one.

The source is a tenant backup, or a nightly full backup with ``--tenant`` naming whose rows to
take out of it. As for the full restore, nothing unproven reaches PostgreSQL: the copy is
decrypted into a private scratch file and loading starts only once the whole object
authenticated and its SHA-256 matched, falling back to the next location on any failure (the
fetch is ``services/restore.py``'s). Then:

* **In place** (the target holds the schema and every other tenant): one transaction replaces
  the tenant's rows (``core/postgres/tenant_load.py``); any failure rolls it back.
* **Into a new or empty database**: the database is created if missing and the backup's schema
  created in it (``core/postgres/tenant_schema.py``): the tables first, the tenant's rows
  copied straight in, then indexes, keys and policies.
  A failure drops a database this run created, or empties an existing one again, as the full
  restore does.

The report holds the rows restored per table against the backup's own counts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core import postgres
from strongroom.core.manifest import Manifest
from strongroom.core.postgres import tenant_extract, tenant_schema
from strongroom.core.postgres.tenant_export import TenantScope
from strongroom.core.postgres.tenant_file import ExportRows
from strongroom.core.postgres.tenant_load import load_tenant
from strongroom.core.postgres.tenant_rows import TenantRows
from strongroom.errors import (
    BackupNotFound,
    ConfigError,
    IntegrityError,
    StrongroomError,
    TargetNotEmpty,
    WrongBackupKind,
    WrongKeyError,
)
from strongroom.services.discovery import CopyRef, find_copies, scan_manifests
from strongroom.services.restore import (
    RowsCompared,
    fetch_verified,
    lock_timeout,
    make_scratch,
    undo_target,
)
from strongroom.services.runtime import Runtime
from strongroom.services.tenant_backup import scope_of

KINDS = ("tenant", "full")


@dataclass
class TenantRestoreReport(RowsCompared):
    id: str
    kind: str
    tenant_id: str
    source: str
    target: str
    #: ``in place`` (the live database) or ``new database`` (created or empty, schema made here).
    mode: str
    seconds: float = 0.0
    table_rows: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)


def restore_tenant(
    config: Config,
    backup_id: str | None,
    target_url: str,
    *,
    tenant_id: str | None = None,
    replace: bool = False,
    from_location: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> TenantRestoreReport:
    """Restore one tenant from ``backup_id`` (None: the tenant's newest tenant backup)."""
    runtime = Runtime.build(config)
    target = postgres.ConnInfo.parse(target_url)
    wait = lock_timeout(config)
    if backup_id is None:
        backup_id = _latest_tenant_backup(runtime, tenant_id)
    passed_over: list[str] = []
    copies = find_copies(runtime, backup_id, from_location, passed_over)
    peeked = _peek_manifest(runtime, copies)
    if peeked is not None:
        _tenant_of(peeked, tenant_id)  # a wrong kind or tenant: one line before any download
    empty = _target_is_empty(target)
    started = time.monotonic()
    stages: dict[str, float] = {}
    scratch = make_scratch(config.restore_scratch_dir)
    try:
        archive = scratch / "backup"
        copy, manifest, skipped = fetch_verified(
            runtime, copies, archive, progress, scratch, kinds=KINDS
        )
        tenant = _tenant_of(manifest, tenant_id)
        stages["fetch"] = time.monotonic() - started
        load = _Load(config, target, manifest, tenant, archive, scratch, replace, wait)
        since = time.monotonic()
        restored, expected = load.into_new() if empty else load.in_place()
        stages["load"] = time.monotonic() - since
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = TenantRestoreReport(
        manifest.id,
        manifest.kind,
        load.tenant,
        copy.location.name,
        str(target),
        "new database" if empty else "in place",
        time.monotonic() - started,
        skipped=passed_over + skipped,
        stages=stages,
    )
    for table in sorted(set(expected) | set(restored)):
        report.table_rows[table] = (expected.get(table, 0), restored.get(table))
    return report


@dataclass
class _Load:
    """One verified copy on its way into the target."""

    config: Config
    target: postgres.ConnInfo
    manifest: Manifest
    tenant: str
    archive: Path
    scratch: Path
    replace: bool
    wait: float

    @property
    def scope(self) -> TenantScope:
        """A tenant backup says which model it was taken with; a full backup: the settings."""
        scope = scope_of(self.config)
        extra = self.manifest.extra if self.manifest.kind == "tenant" else {}
        return TenantScope(
            _table_name(extra.get("tenant_table")) or scope.table,
            str(extra.get("tenant_column") or scope.column),
            str(extra.get("tenant_setting") or scope.setting),
            scope.role,
        )

    def in_place(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._rows() as rows:
            self.tenant = rows.tenant_id  # as the key's type prints it (a full backup's source)
            restored = load_tenant(
                self.target, self.scope, rows, replace=self.replace, lock_timeout=self.wait
            )
            return restored, rows.expected_rows

    def into_new(self) -> tuple[dict[str, int], dict[str, int]]:
        """The backup's tables, the tenant's rows copied straight in, then its indexes, keys and
        policies (pg_restore's pre-data and post-data sections); a failure is undone."""
        if self.manifest.kind == "full":
            with self._new_database():
                tenant_schema.create_pre_data(self.target, self.archive, bindir=self.bindir)
                with self._rows() as rows:  # the extraction reads the new tables' model
                    restored = self._load_empty(rows)
                    self.tenant = rows.tenant_id  # as the key's type prints it, once read
                tenant_schema.create_post_data(self.target, self.archive, bindir=self.bindir)
            return restored, rows.expected_rows
        with self._rows() as rows:
            schema = self._schema_archive(rows)
            with self._new_database():
                tenant_schema.create_pre_data(self.target, schema, bindir=self.bindir)
                restored = self._load_empty(rows)
                tenant_schema.create_post_data(self.target, schema, bindir=self.bindir)
            return restored, rows.expected_rows

    def _load_empty(self, rows: TenantRows) -> dict[str, int]:
        return load_tenant(
            self.target,
            self.scope,
            rows,
            replace=True,
            empty=True,
            key=self._tenant_key(),
            lock_timeout=self.wait,
        )

    @property
    def bindir(self) -> str | None:
        return self.config.pg_bindir

    @contextmanager
    def _new_database(self) -> Iterator[None]:
        """Create the target if missing; on any failure drop it again, or empty it again."""
        created = postgres.prepare_target(self.target)
        mark = None if created else postgres.mark_target(self.target)
        try:
            yield
        except BaseException:
            undo_target(self.target, mark)
            raise

    @contextmanager
    def _rows(self) -> Iterator[TenantRows]:
        if self.manifest.kind == "full":
            with tenant_extract.dump_tenant_rows(
                self.archive, self.target, self.scope, self.tenant, bindir=self.bindir
            ) as extracted:
                yield extracted
            return
        with self.archive.open("rb") as plain:
            rows = ExportRows(plain, self.manifest.table_rows)
            if rows.tenant_id != self.tenant:
                raise IntegrityError(
                    f"backup {self.manifest.id} holds tenant {rows.tenant_id!r} inside, its "
                    f"manifest says {self.tenant!r}: it cannot be trusted for a restore"
                )
            yield rows

    def _schema_archive(self, rows: TenantRows) -> Path:
        """A tenant backup's schema-only archive, as a file for pg_restore."""
        assert isinstance(rows, ExportRows)
        schema = tenant_schema.schema_from_header(rows.header)
        if schema is None:
            raise ConfigError(
                f"tenant backup {self.manifest.id} was taken by a version that did not store the "
                "schema, so it restores only into a database that has it: create the schema "
                "there first (or restore a full backup), then run this again"
            )
        path = self.scratch / "schema.dump"
        path.write_bytes(schema)
        return path

    def _tenant_key(self) -> str | None:
        key = self.manifest.extra.get("tenant_key") if self.manifest.kind == "tenant" else None
        return str(key) if key else None


def _table_name(value: Any) -> str:
    """``public.tenants`` as the manifest writes it, quoted for ``to_regclass``."""
    if not value:
        return ""
    schema, _, name = str(value).partition(".")
    return f'"{schema}"."{name}"' if name else str(value)


def _tenant_of(manifest: Manifest, wanted: str | None) -> str:
    """Whose rows this restore takes from ``manifest``; a wrong kind or tenant is one line."""
    if manifest.kind == "tenant":
        if wanted and wanted != manifest.tenant_id:
            raise ConfigError(
                f"backup {manifest.id} is tenant {manifest.tenant_id}'s, not {wanted}'s: pick "
                f"one of `strongroom list --tenant {wanted}`, or leave out --tenant"
            )
        return str(manifest.tenant_id)
    if manifest.kind == "full":
        if not wanted:
            raise ConfigError(
                f"backup {manifest.id} is a full backup of every tenant: name the one to "
                "restore with --tenant TENANT_ID"
            )
        return wanted
    raise WrongBackupKind(
        f"backup {manifest.id} is a {manifest.kind} backup: a tenant restore takes a tenant "
        "backup or a full backup (`strongroom list`)"
    )


def _peek_manifest(runtime: Runtime, copies: list[CopyRef]) -> Manifest | None:
    """The first copy's authenticated manifest, read before any download (None: none reads)."""
    for copy in copies:
        try:
            return Manifest.from_document(
                copy.location.get_bytes(copy.manifest_key), runtime.keyring
            )
        except WrongKeyError:
            raise
        except StrongroomError:
            continue
    return None


def _target_is_empty(target: postgres.ConnInfo) -> bool:
    """Missing or without tables: an export into a new database, not a restore in place."""
    try:
        postgres.prepare_target(target, create=False)
    except TargetNotEmpty:
        return False
    return True


def _latest_tenant_backup(runtime: Runtime, tenant_id: str | None) -> str:
    """``--latest``: the tenant's newest restorable tenant backup (catalog, else storage)."""
    if not tenant_id:
        raise ConfigError("--latest needs --tenant TENANT_ID: whose newest backup to restore")
    database = _configured_database(runtime)
    try:
        found = store.latest_backup(database, backup_type="TENANT_BACKUP", tenant_id=tenant_id)
        return str(found.id)
    except BackupNotFound:
        pass
    for location in runtime.locations:
        try:
            manifests = scan_manifests(location, database)
        except StrongroomError:
            continue
        ids = [m.id for _, m in manifests if m.kind == "tenant" and m.tenant_id == tenant_id]
        if ids:
            return ids[-1]
    raise BackupNotFound(
        f"no tenant backup of {tenant_id} in the catalog or in storage: "
        f"`strongroom tenant backup {tenant_id}` makes one, or name a full backup's id"
    )


def _configured_database(runtime: Runtime) -> str | None:
    try:
        return postgres.ConnInfo.parse(runtime.config.database_url).dbname or None
    except ConfigError:
        return None
