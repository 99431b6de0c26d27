"""The only place services touch the ORM: small typed functions over the catalog models.

Statuses come from :mod:`strongroom.core.status`, which also builds the models' choices: a
backup is ``IN_PROGRESS`` while it runs, then ``COMPLETED``, ``PARTIAL`` (an optional location
failed), ``FAILED`` or ``SKIPPED`` (another run held the database), and ``VERIFIED`` once every
live copy has been read back. A copy is ``PENDING``, ``STORED``, ``VERIFIED``, ``FAILED``,
``CORRUPT``, ``MISSING`` or ``DELETED``.

Importing this module does not need Django; the first call sets the catalog up if nobody has
(:func:`strongroom.catalog.bootstrap.ensure_django`). Every timestamp is timezone-aware UTC.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError as DbIntegrityError
from django.db import transaction
from django.db.models import Q

from strongroom.core.status import (
    DATA_COPY,
    LIVE_COPY_EXCLUDES,
    PROBLEM,
    RESTORABLE,
    RUNNING,
    USABLE_COPY,
    BackupStatus,
    CopyStatus,
    FailureCause,
)
from strongroom.errors import BackupNotFound

if TYPE_CHECKING:
    from strongroom.core.manifest import Manifest
    from strongroom.models import Backup, BackupCopy, BackupEvent, Drill

#: The seed's per-location path fields, kept filled for code written against the seed.
SEED_PATH_FIELDS = {"local": "local_path", "r2": "r2_path", "b2": "b2_path"}
KIND_TO_TYPE = {
    "full": "FULL_DATABASE",
    "tenant": "TENANT_BACKUP",
    "base": "BASE_BACKUP",
    "wal": "WAL_ARCHIVE",
}
#: Left out of ``backup_to_dict`` unless asked for: long, and already in the manifest.
BULKY_METADATA = ("pg_dump_log", "manifest")
_ID_ATTEMPTS = 5


def _orm() -> tuple[type[Backup], type[BackupCopy], type[BackupEvent]]:
    """The models, setting the catalog up on first use when no one else has."""
    from django.apps import apps

    if not apps.ready:
        from strongroom.catalog.bootstrap import ensure_django

        ensure_django()
    from strongroom.models import Backup, BackupCopy, BackupEvent

    return Backup, BackupCopy, BackupEvent


def _now() -> datetime:
    return datetime.now(UTC)


def _check(value: str, allowed: list[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


# -- ids and runs ------------------------------------------------------------------------------


def new_backup_id(now: datetime) -> str:
    """``20261128T020000Z-3fa9c1``: readable, sorts by start time (UTC), unique enough."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("new_backup_id needs a timezone-aware datetime")
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def saved_fraction(raw_size: int | None, compressed_size: int | None) -> float | None:
    """The seed's compression ratio: the fraction saved, ``1 - compressed / raw`` (0.8 = 80 %)."""
    if not raw_size or compressed_size is None or raw_size <= 0:
        return None
    return max(0.0, 1.0 - compressed_size / raw_size)


def start_backup(
    *,
    backup_type: str,
    database: str,
    tenant_id: str | None = None,
    job_id: str = "",
    created_by_id: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Backup:
    """Record a new run as ``IN_PROGRESS``, owned by this host and process."""
    Backup, _, _ = _orm()
    _check(backup_type, Backup.Type.values, "backup type")
    at = now or _now()
    fields: dict[str, Any] = {
        "backup_type": backup_type,
        "database": database,
        "tenant_id": tenant_id,
        "backup_job_id": job_id or "",
        "created_by_id": created_by_id,
        "metadata": dict(metadata or {}),
        "status": BackupStatus.IN_PROGRESS,
        "created_at": at,
        "started_at": at,
        "heartbeat_at": at,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    for attempt in range(_ID_ATTEMPTS):
        try:
            with transaction.atomic():
                return Backup.objects.create(id=new_backup_id(at), **fields)
        except DbIntegrityError:  # the same id in the same second: draw another
            if attempt == _ID_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def heartbeat(backup_id: str) -> None:
    """The run is alive (called every few seconds while it streams)."""
    Backup, _, _ = _orm()
    Backup.objects.filter(id=backup_id).update(heartbeat_at=_now())


def mark_running(backup_id: str) -> None:
    """The run holds the database's lock: refresh its heartbeat and owner."""
    Backup, _, _ = _orm()
    Backup.objects.filter(id=backup_id).update(
        heartbeat_at=_now(), host=socket.gethostname(), pid=os.getpid()
    )


def finish_backup(backup_id: str, *, status: str, error: str = "", **fields: Any) -> Backup:
    """Final status of a run, with its results (any ``Backup`` field; ``metadata`` is merged).

    Sets ``finished_at`` and ``backup_duration_seconds``; computes ``compression_ratio`` from
    the raw and compressed sizes when they are given without it. FAILED, PARTIAL and SKIPPED
    are also logged as events, so the reason survives a later verify.
    """
    Backup, _, _ = _orm()
    _check(status, Backup.Status.values, "backup status")
    allowed = {f.attname for f in Backup._meta.concrete_fields} - {"id", "status", "error"}
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"finish_backup got unknown field(s): {', '.join(sorted(unknown))}")
    with transaction.atomic():
        backup = _locked(backup_id)
        at = _now()
        backup.status, backup.error, backup.finished_at = status, error, at
        backup.backup_duration_seconds = (
            at - (backup.started_at or backup.created_at)
        ).total_seconds()
        extra = fields.pop("metadata", None)
        if extra:
            backup.metadata = {**(backup.metadata or {}), **extra}
        if "compression_ratio" not in fields and "raw_size_bytes" in fields:
            fields["compression_ratio"] = saved_fraction(
                fields["raw_size_bytes"], fields.get("compressed_size_bytes")
            )
        for name, value in fields.items():
            setattr(backup, name, value)
        backup.save()
        if status in PROBLEM:
            record_event(backup_id, status.lower(), message=error)
    return backup


def _locked(backup_id: str) -> Backup:
    Backup, _, _ = _orm()
    try:
        return Backup.objects.select_for_update().get(id=backup_id)
    except Backup.DoesNotExist:
        raise _not_found(backup_id) from None


def _not_found(backup_id: str) -> BackupNotFound:
    return BackupNotFound(
        f"backup {backup_id} is not in the catalog: `strongroom list` shows the known ones, "
        "`strongroom catalog rebuild --from LOCATION` recovers them from storage"
    )


# -- copies ------------------------------------------------------------------------------------


def record_copy(
    backup_id: str,
    location: str,
    *,
    key: str,
    manifest_key: str,
    status: str,
    size_bytes: int | None = None,
    checksum: str = "",
    error: str = "",
    duration_seconds: float | None = None,
) -> BackupCopy:
    """Create or replace the copy of a backup in one location (and the seed's path field)."""
    Backup, Copy, _ = _orm()
    _check(status, Copy.Status.values, "copy status")
    values: dict[str, Any] = {
        "key": key,
        "manifest_key": manifest_key,
        "status": status,
        "size_bytes": size_bytes,
        "checksum": checksum,
        "error": error,
        "duration_seconds": duration_seconds,
    }
    if status == CopyStatus.VERIFIED:
        values["verified_at"] = _now()
    with transaction.atomic():
        if not Backup.objects.filter(id=backup_id).exists():
            raise _not_found(backup_id)
        copy, _ = Copy.objects.update_or_create(
            backup_id=backup_id, location=location, defaults=values
        )
        _sync_seed_path(backup_id, location, status, key)
    return copy


def _sync_seed_path(backup_id: str, location: str, status: str, key: str) -> None:
    """The seed's ``local_path``/``r2_path``/``b2_path``: the key while a good copy is there."""
    Backup, _, _ = _orm()
    field = SEED_PATH_FIELDS.get(location)
    if field is None:
        return
    value = key if status in USABLE_COPY else ""
    Backup.objects.filter(id=backup_id).update(**{field: value})


def record_copy_check(backup_id: str, location: str, *, status: str, error: str = "") -> None:
    """The result of reading one copy back (``VERIFIED``, ``CORRUPT``, ``MISSING``, ...)."""
    _, Copy, _ = _orm()
    _check(status, Copy.Status.values, "copy status")
    at = _now()
    values: dict[str, Any] = {"status": status, "error": error, "updated_at": at}
    if status == CopyStatus.VERIFIED:
        values["verified_at"] = at
    with transaction.atomic():
        if not Copy.objects.filter(backup_id=backup_id, location=location).update(**values):
            key, manifest_key = _sibling_keys(backup_id)  # every location uses the same keys
            record_copy(backup_id, location, key=key, manifest_key=manifest_key, status=status)
            Copy.objects.filter(backup_id=backup_id, location=location).update(**values)
        else:
            _sync_seed_path(backup_id, location, status, _copy_key(backup_id, location))


def _sibling_keys(backup_id: str) -> tuple[str, str]:
    _, Copy, _ = _orm()
    row = Copy.objects.filter(backup_id=backup_id).exclude(key="").first()
    return (row.key, row.manifest_key) if row else ("", "")


def _copy_key(backup_id: str, location: str) -> str:
    _, Copy, _ = _orm()
    keys = Copy.objects.filter(backup_id=backup_id, location=location).values_list("key", flat=True)
    return next(iter(keys), "")


def copies_of(backup_id: str) -> list[BackupCopy]:
    """Every copy row of a backup, by location name (empty when it has none)."""
    _, Copy, _ = _orm()
    return list(Copy.objects.filter(backup_id=backup_id).order_by("location"))


def get_copy(backup_id: str, location: str) -> BackupCopy:
    _, Copy, _ = _orm()
    try:
        return Copy.objects.get(backup_id=backup_id, location=location)
    except Copy.DoesNotExist:
        raise BackupNotFound(
            f"backup {backup_id} has no copy in location {location} in the catalog"
        ) from None


def mark_copy_deleted(
    backup_id: str, location: str, *, event: str = "pruned", message: str = ""
) -> None:
    """The copy is gone on purpose (prune): status ``DELETED`` and an event, together."""
    _, Copy, _ = _orm()
    with transaction.atomic():
        Copy.objects.filter(backup_id=backup_id, location=location).update(
            status=CopyStatus.DELETED, error="", updated_at=_now()
        )
        _sync_seed_path(backup_id, location, CopyStatus.DELETED, "")
        record_event(backup_id, event, location=location, message=message)


# -- verification ------------------------------------------------------------------------------


def finish_verify(
    backup_id: str, *, status: str, error: str = "", verified_at: datetime | None = None
) -> Backup:
    """A verification's verdict on the whole backup; ``verified_at`` only moves when given."""
    Backup, _, _ = _orm()
    _check(status, Backup.Status.values, "backup status")
    with transaction.atomic():
        backup = _locked(backup_id)
        backup.status, backup.error = status, error
        if verified_at is not None:
            backup.verified_at = verified_at
        backup.save(update_fields=["status", "error", "verified_at"])
        kind = "verified" if status == BackupStatus.VERIFIED else "verify-failed"
        record_event(backup_id, kind, message=error, data={"status": status})
    return backup


def mark_verified(backup_id: str, *, verified_at: datetime | None = None) -> Backup:
    """Every live copy read back and matched: ``VERIFIED``."""
    return finish_verify(backup_id, status=BackupStatus.VERIFIED, verified_at=verified_at or _now())


# -- reading -----------------------------------------------------------------------------------


def get_backup(backup_id: str) -> Backup:
    """The backup, or ``BackupNotFound`` saying how to find the known ones."""
    Backup, _, _ = _orm()
    try:
        return Backup.objects.get(id=backup_id)
    except Backup.DoesNotExist:
        raise _not_found(backup_id) from None


def latest_backup(
    database: str | None = None,
    restorable: bool = True,
    *,
    backup_type: str | None = "FULL_DATABASE",
    tenant_id: str | None = None,
) -> Backup:
    """The newest backup (restorable ones only by default; full backups unless told otherwise)."""
    Backup, _, _ = _orm()
    rows = Backup.objects.all()
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    if database:
        rows = rows.filter(database=database)
    if restorable:
        rows = rows.filter(status__in=RESTORABLE)
    if backup_type:
        rows = rows.filter(backup_type=backup_type)
    found = rows.order_by("-created_at", "-id").first()
    if found is None:
        what = "restorable backup" if restorable else "backup"
        of = f" of {database}" if database else ""
        raise BackupNotFound(
            f"no {what}{of} in the catalog: run `strongroom backup`, or "
            "`strongroom catalog rebuild --from LOCATION` to recover the catalog from storage"
        )
    return found


def list_backups(
    database: str | None = None, limit: int | None = 50, *, tenant_id: str | None = None
) -> list[Backup]:
    """Newest first, with their copies prefetched (one tenant's backups when ``tenant_id``)."""
    Backup, _, _ = _orm()
    rows = Backup.objects.prefetch_related("copies").order_by("-created_at", "-id")
    if database:
        rows = rows.filter(database=database)
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    return list(rows[:limit] if limit else rows)


def running_backups(database: str | None = None, *, exclude: str | None = None) -> list[str]:
    """Ids of the runs recorded as ``IN_PROGRESS`` (alive or not)."""
    Backup, _, _ = _orm()
    rows = Backup.objects.filter(status__in=RUNNING)
    if database:
        rows = rows.filter(database=database)
    if exclude:
        rows = rows.exclude(id=exclude)
    return list(rows.order_by("created_at", "id").values_list("id", flat=True))


def healable_backup_ids() -> list[str]:
    """Finished backups with at least one copy that holds (or should hold) data, newest first."""
    Backup, _, _ = _orm()
    rows = Backup.objects.exclude(status__in=RUNNING).filter(copies__status__in=DATA_COPY)
    ids = rows.order_by("-created_at", "-id").values_list("id", flat=True)
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class CopyRow:
    """One copy as the retention policy sees it (see ``strongroom.core.retention.CopyFacts``)."""

    backup_id: str
    database: str
    location: str
    created_at: datetime
    backup_status: str
    copy_status: str
    series: str = ""


def series_of(backup_type: str, tenant_id: str | None) -> str:
    """Independent chains of one database: "" for full backups, ``tenant:<id>``, ``base``,
    ``wal``."""
    if backup_type == "TENANT_BACKUP":
        return f"tenant:{tenant_id or ''}"
    if backup_type == "BASE_BACKUP":
        return "base"
    if backup_type == "WAL_ARCHIVE":
        return "wal"
    return ""


def copy_facts(database: str | None = None) -> list[CopyRow]:
    """Every copy in the catalog (``DELETED`` ones too: the policy ignores them)."""
    _, Copy, _ = _orm()
    rows = Copy.objects.all()
    if database:
        rows = rows.filter(backup__database=database)
    values = rows.order_by("backup__created_at", "backup_id", "location").values_list(
        "backup_id",
        "backup__database",
        "location",
        "backup__created_at",
        "backup__status",
        "status",
        "backup__backup_type",
        "backup__tenant_id",
    )
    return [
        CopyRow(bid, db, loc, created, b_status, c_status, series_of(b_type, tenant))
        for bid, db, loc, created, b_status, c_status, b_type, tenant in values
    ]


# -- events ------------------------------------------------------------------------------------


def record_event(
    backup_id: str | None,
    kind: str,
    *,
    location: str = "",
    message: str = "",
    data: Mapping[str, Any] | None = None,
) -> BackupEvent:
    """Append to the log (verified, healed, pruned, marked_failed, skipped, ...)."""
    _, _, Event = _orm()
    return Event.objects.create(
        backup_id=backup_id,
        kind=kind,
        location=location,
        message=message,
        data=dict(data or {}),
        created_at=_now(),
    )


def events_of(backup_id: str, kind: str | None = None) -> list[BackupEvent]:
    """A backup's events, oldest first."""
    _, _, Event = _orm()
    rows = Event.objects.filter(backup_id=backup_id)
    if kind:
        rows = rows.filter(kind=kind)
    return list(rows.order_by("id"))


def pending_copy_events(intent: str, done: str) -> list[tuple[str, str, str]]:
    """(backup id, location, message) of each ``intent`` event with no ``done`` event after it."""
    _, _, Event = _orm()
    rows = (
        Event.objects.filter(kind__in=(intent, done), backup_id__isnull=False)
        .order_by("id")
        .values_list("backup_id", "location", "kind", "message")
    )
    pending: dict[tuple[str, str], str] = {}
    for backup_id, location, kind, message in rows:
        if kind == intent:
            pending[(backup_id, location)] = message
        else:
            pending.pop((backup_id, location), None)
    return [(backup_id, location, message) for (backup_id, location), message in pending.items()]


# -- dead runs ---------------------------------------------------------------------------------


def stale_in_progress(older_than: timedelta, *, check_pids: bool = True) -> list[Backup]:
    """``IN_PROGRESS`` runs that are dead: silent for ``older_than``, or their process is gone.

    The process check (``check_pids``) only applies to runs of this host (same hostname);
    others are judged by their heartbeat alone.
    """
    Backup, _, _ = _orm()
    cutoff = _now() - older_than
    running = Backup.objects.filter(status__in=RUNNING)
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    stale = list(running.filter(silent))
    if check_pids:
        here = running.exclude(silent).filter(host=socket.gethostname(), pid__isnull=False)
        stale += [b for b in here if b.pid is not None and not pid_alive(b.pid)]
    return sorted(stale, key=lambda b: (b.created_at, b.id))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return True  # no /proc (not Linux): kill(0) said it exists


def mark_failed(
    backup_id: str, reason: str, *, cause: FailureCause = FailureCause.DEAD_RUN
) -> bool:
    """A run found dead becomes ``FAILED`` with ``reason``; False if it had already finished.

    ``cause`` is kept in the metadata (``failure_cause``) so other modules act on the fact,
    not on the wording of ``reason``.
    """
    Backup, Copy, _ = _orm()
    with transaction.atomic():
        backup = Backup.objects.select_for_update().filter(id=backup_id).first()
        if backup is None or backup.status not in RUNNING:
            return False
        at = _now()
        backup.status, backup.error, backup.finished_at = BackupStatus.FAILED, reason, at
        started = backup.started_at or backup.created_at
        backup.backup_duration_seconds = (at - started).total_seconds()
        backup.metadata = {**(backup.metadata or {}), "failure_cause": str(cause)}
        backup.save(
            update_fields=["status", "error", "finished_at", "backup_duration_seconds", "metadata"]
        )
        Copy.objects.filter(backup_id=backup_id, status=CopyStatus.PENDING).update(
            status=CopyStatus.FAILED, error=reason, updated_at=at
        )
        record_event(
            backup_id,
            "marked_failed",
            message=reason,
            data={"host": backup.host, "pid": backup.pid, "cause": str(cause)},
        )
    return True


def failure_cause(backup: Backup) -> FailureCause | None:
    """The recorded cause of a FAILED run (``mark_failed``), or None."""
    value = (backup.metadata or {}).get("failure_cause")
    try:
        return FailureCause(value) if value else None
    except ValueError:
        return None


def fail_stale(*, older_than: timedelta, reason: str, include_dead_pids: bool = False) -> list[str]:
    """Mark stale runs ``FAILED`` with ``reason``; return their ids.

    By default only runs silent for ``older_than``: the backup service finds the others through
    the database lock, with its own reason. ``include_dead_pids`` also fails runs whose process
    on this host is gone (their reason says so).
    """
    failed = []
    for backup in stale_in_progress(older_than, check_pids=include_dead_pids):
        why = reason
        if include_dead_pids and _process_gone(backup):
            why = f"{reason} (process {backup.pid} on {backup.host} is gone)"
        cause = FailureCause.DEAD_RUN if why != reason else FailureCause.STALE_RUN
        if mark_failed(backup.id, why, cause=cause):
            failed.append(backup.id)
    return failed


def _process_gone(backup: Backup) -> bool:
    return (
        backup.host == socket.gethostname() and backup.pid is not None and not pid_alive(backup.pid)
    )


# -- rebuilding from manifests -----------------------------------------------------------------


def import_manifest(manifest: Manifest, *, manifest_key: str, copies: Mapping[str, str]) -> Backup:
    """Upsert a backup from its authenticated manifest, with the copies found in storage.

    ``copies`` maps location to ``STORED``, ``MISSING`` or ``CORRUPT``. Idempotent: a copy
    already ``VERIFIED`` stays so while its object is there; nothing new is marked VERIFIED.
    """
    Backup, Copy, _ = _orm()
    for status in copies.values():
        _check(status, Copy.Status.values, "copy status")
    with transaction.atomic():
        backup = Backup.objects.select_for_update().filter(id=manifest.id).first()
        if backup is None:
            backup = Backup(id=manifest.id, created_at=manifest.started_at)
        _apply_manifest(backup, manifest)
        backup.save()
        for location, status in copies.items():
            _import_copy(backup.id, location, status, manifest, manifest_key)
        backup.refresh_from_db()  # the copies filled the seed's path fields
        _settle_imported(backup)
        backup.save(update_fields=["status", "error"])
    return backup


def _apply_manifest(backup: Backup, m: Manifest) -> None:
    backup.backup_type = KIND_TO_TYPE.get(m.kind, "FULL_DATABASE")
    backup.database, backup.tenant_id = m.database, m.tenant_id
    backup.filename = m.object_key.rsplit("/", 1)[-1]
    backup.size_bytes, backup.checksum = m.stored_size, m.sha256
    backup.raw_size_bytes, backup.compressed_size_bytes = m.raw_size, m.compressed_size
    backup.compression_ratio = saved_fraction(m.raw_size, m.compressed_size)
    backup.started_at, backup.finished_at = m.started_at, m.finished_at
    backup.backup_duration_seconds = (m.finished_at - m.started_at).total_seconds()
    backup.metadata = {
        **(backup.metadata or {}),
        "manifest": m.to_dict(),
        "codec": m.codec,
        "codec_level": m.codec_level,
        "codec_levels": m.codec_levels,
        "key_id": m.key_id,
        "table_rows": m.table_rows,
        "server_version": m.server_version,
        "pg_dump_version": m.pg_dump_version,
    }


_IMPORT_ERRORS: dict[str, str] = {
    CopyStatus.MISSING: "object missing from storage (found by catalog rebuild)",
    CopyStatus.CORRUPT: "object size differs from the manifest (found by catalog rebuild)",
}


def _import_copy(
    backup_id: str, location: str, status: str, m: Manifest, manifest_key: str
) -> None:
    _, Copy, _ = _orm()
    row = Copy.objects.filter(backup_id=backup_id, location=location).first()
    if row is not None and row.status == CopyStatus.VERIFIED and status == CopyStatus.STORED:
        status = CopyStatus.VERIFIED  # the rebuild saw the object; earlier evidence still holds
    Copy.objects.update_or_create(
        backup_id=backup_id,
        location=location,
        defaults={
            "key": m.object_key,
            "manifest_key": manifest_key,
            "status": status,
            "size_bytes": m.stored_size if status in USABLE_COPY else None,
            "checksum": m.sha256,
            "error": _IMPORT_ERRORS.get(status, ""),
        },
    )
    _sync_seed_path(backup_id, location, status, m.object_key)


def _settle_imported(backup: Backup) -> None:
    """The backup's status from its copies, the same however often it is rebuilt."""
    rows = copies_of(backup.id)
    live = [c for c in rows if c.status not in LIVE_COPY_EXCLUDES]
    broken = [c for c in live if c.status not in USABLE_COPY]
    failed = [c for c in rows if c.status == CopyStatus.FAILED]
    if len(broken) == len(live):
        problems = "; ".join(f"{c.location}: {c.status.lower()}" for c in broken) or "none"
        backup.status, backup.error = BackupStatus.FAILED, f"no intact copy found ({problems})"
    elif broken:
        backup.status = BackupStatus.PARTIAL
        backup.error = "; ".join(f"{c.location}: {c.status.lower()}" for c in broken)
    elif backup.status == BackupStatus.VERIFIED:
        pass  # every live copy is there; the earlier read-back still holds
    elif failed:  # a location failed when the backup ran
        backup.status = BackupStatus.PARTIAL
        backup.error = "; ".join(f"{c.location}: {c.error or 'failed'}" for c in failed)
    else:
        backup.status, backup.error = BackupStatus.COMPLETED, ""


# -- restore drills ----------------------------------------------------------------------------


def _drill_model() -> type[Drill]:
    _orm()  # sets the catalog up on first use
    from strongroom.models import Drill

    return Drill


def start_drill(
    *,
    backup_id: str,
    kind: str,
    database: str,
    target: str,
    data: Mapping[str, Any] | None = None,
) -> Drill:
    """Record a drill as running (``ok`` None), owned by this host and process.

    Recorded before its target exists, so a drill killed at any point leaves a record that
    names the target the next drill must drop.
    """
    Drill = _drill_model()
    return Drill.objects.create(
        backup_id=backup_id,
        kind=kind,
        database=database,
        target=target,
        started_at=_now(),
        host=socket.gethostname(),
        pid=os.getpid(),
        data=dict(data or {}),
    )


def finish_drill(
    drill_id: int,
    *,
    ok: bool,
    rto_seconds: float | None = None,
    mismatches: list[dict[str, Any]] | None = None,
    error: str = "",
    data: Mapping[str, Any] | None = None,
) -> Drill:
    """A drill's verdict; its backup is marked (``last_drill_at``, ``last_drill_ok``) and logged."""
    Backup, _, _ = _orm()
    Drill = _drill_model()
    with transaction.atomic():
        drill = Drill.objects.select_for_update().get(pk=drill_id)
        drill.finished_at, drill.ok, drill.error = _now(), ok, error
        drill.rto_seconds = rto_seconds
        drill.mismatches = list(mismatches or [])
        drill.data = {**(drill.data or {}), **dict(data or {})}
        drill.save()
        if drill.backup_id:
            Backup.objects.filter(id=drill.backup_id).update(
                last_drill_at=drill.finished_at, last_drill_ok=ok
            )
            record_event(
                drill.backup_id,
                "drill-passed" if ok else "drill-failed",
                message=error,
                data={"drill": drill.pk, "rto_seconds": rto_seconds, "target": drill.target},
            )
    return drill


def note_drill(drill_id: int, data: Mapping[str, Any]) -> None:
    """Merge facts into a running drill's ``data`` (a base drill's postmaster pid, say), so a
    drill killed later leaves a record naming what the next drill must stop."""
    Drill = _drill_model()
    with transaction.atomic():
        drill = Drill.objects.select_for_update().get(pk=drill_id)
        drill.data = {**(drill.data or {}), **dict(data)}
        drill.save(update_fields=["data"])


def get_drill(drill_id: int) -> Drill:
    return _drill_model().objects.get(pk=drill_id)


def drills_by_target(targets: list[str]) -> dict[str, Drill]:
    """The newest drill record naming each target (targets no record names are absent)."""
    found: dict[str, Drill] = {}
    for drill in _drill_model().objects.filter(target__in=targets).order_by("started_at", "id"):
        found[drill.target] = drill
    return found


def newest_drills(
    database: str | None = None,
    *,
    kind: str | None = None,
    backup_id: str | None = None,
    finished: bool | None = None,
    passed: bool | None = None,
    limit: int | None = 20,
) -> list[Drill]:
    """Drills newest first: of one database, kind or backup; finished ones; passed or failed."""
    rows = _drill_model().objects.all()
    if database:
        rows = rows.filter(database=database)
    if kind:
        rows = rows.filter(kind=kind)
    if backup_id:
        rows = rows.filter(backup_id=backup_id)
    if finished is not None:
        rows = rows.filter(ok__isnull=not finished)
    if passed is not None:
        rows = rows.filter(ok=passed)
    rows = rows.order_by("-started_at", "-id")
    return list(rows[:limit] if limit else rows)


def restorable_backup_before(
    database: str | None, before: datetime, backup_types: tuple[str, ...] = ("FULL_DATABASE",)
) -> bool:
    """Whether a restorable backup of these types finished before ``before`` (a drill is due)."""
    Backup, _, _ = _orm()
    rows = Backup.objects.filter(status__in=RESTORABLE, backup_type__in=backup_types)
    if database:
        rows = rows.filter(database=database)
    return rows.filter(created_at__lt=before).exists()


def drill_to_dict(drill: Drill) -> dict[str, Any]:
    """JSON-ready view of one drill (``drill --json``, metrics, the admin; stable key names)."""
    return {
        "id": drill.pk,
        "backup_id": drill.backup_id,
        "kind": drill.kind,
        "database": drill.database,
        "target": drill.target,
        "started_at": _iso(drill.started_at),
        "finished_at": _iso(drill.finished_at),
        "rto_seconds": drill.rto_seconds,
        "ok": drill.ok,
        "status": "RUNNING" if drill.ok is None else ("PASSED" if drill.ok else "FAILED"),
        "mismatches": list(drill.mismatches or []),
        "error": drill.error,
        "host": drill.host,
        "pid": drill.pid,
        "data": dict(drill.data or {}),
    }


# -- output ------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def backup_to_dict(backup: Backup, *, with_metadata: bool = False) -> dict[str, Any]:
    """JSON-ready view of a backup and its copies (``--json`` output; stable key names)."""
    metadata = dict(backup.metadata or {})
    if not with_metadata:
        metadata = {k: v for k, v in metadata.items() if k not in BULKY_METADATA}
    return {
        "id": backup.id,
        "status": backup.status,
        "restorable": backup.is_restorable,
        "backup_type": backup.backup_type,
        "database": backup.database,
        "tenant_id": backup.tenant_id,
        "filename": backup.filename,
        "size_bytes": backup.size_bytes,
        "size_mb": backup.get_size_mb(),
        "raw_size_bytes": backup.raw_size_bytes,
        "compressed_size_bytes": backup.compressed_size_bytes,
        "checksum": backup.checksum,
        "compression_ratio": backup.compression_ratio,
        "backup_duration_seconds": backup.backup_duration_seconds,
        "backup_job_id": backup.backup_job_id,
        "created_by_id": backup.created_by_id,
        "created_at": _iso(backup.created_at),
        "started_at": _iso(backup.started_at),
        "finished_at": _iso(backup.finished_at),
        "verified_at": _iso(backup.verified_at),
        "last_drill_at": _iso(backup.last_drill_at),
        "last_drill_ok": backup.last_drill_ok,
        "heartbeat_at": _iso(backup.heartbeat_at),
        "host": backup.host,
        "pid": backup.pid,
        "error": backup.error,
        "local_path": backup.local_path,
        "r2_path": backup.r2_path,
        "b2_path": backup.b2_path,
        "metadata": metadata,
        "copies": [copy_to_dict(c) for c in backup.copies.all()],
    }


def copy_to_dict(copy: BackupCopy) -> dict[str, Any]:
    return {
        "location": copy.location,
        "key": copy.key,
        "manifest_key": copy.manifest_key,
        "status": copy.status,
        "size_bytes": copy.size_bytes,
        "checksum": copy.checksum,
        "error": copy.error,
        "duration_seconds": copy.duration_seconds,
        "verified_at": _iso(copy.verified_at),
        "updated_at": _iso(copy.updated_at),
    }


# -- overview: metrics and the admin dashboard -------------------------------------------------
#: Backup types by the short kind the commands, drills and metric labels use.
TYPE_TO_KIND = {backup_type: kind for kind, backup_type in KIND_TO_TYPE.items()}


def newest_backups(*, restorable: bool, database: str | None = None) -> list[Backup]:
    """The newest finished backup of each database and type (restorable ones only, if asked).

    One ``DISTINCT`` query, then one per (database, type) pair answered by the catalog's index:
    cheap enough for a metrics scrape every minute (the catalog has a row per backup, not per
    WAL segment).
    """
    Backup, _, _ = _orm()
    rows = Backup.objects.exclude(status__in=RUNNING)
    if database:
        rows = rows.filter(database=database)
    if restorable:
        rows = rows.filter(status__in=RESTORABLE)
    pairs = sorted(rows.order_by().values_list("database", "backup_type").distinct())
    found = (
        rows.filter(database=db, backup_type=kind).order_by("-created_at", "-id").first()
        for db, kind in pairs
    )
    return [b for b in found if b is not None]


def copy_counts(database: str | None = None) -> list[tuple[str, str, str, str, int]]:
    """(database, backup type, location, copy status, copies), pruned copies left out."""
    from django.db.models import Count

    _, Copy, _ = _orm()
    rows = Copy.objects.exclude(status=CopyStatus.DELETED)
    if database:
        rows = rows.filter(backup__database=database)
    grouped = (
        rows.order_by()
        .values_list("backup__database", "backup__backup_type", "location", "status")
        .annotate(n=Count("id"))
    )
    return sorted((db, kind, loc, status, n) for db, kind, loc, status, n in grouped)


def catalog_databases() -> list[str]:
    """Every database the catalog holds a backup or a drill of, by name."""
    Backup, _, _ = _orm()
    names = set(Backup.objects.order_by().values_list("database", flat=True).distinct())
    names |= set(_drill_model().objects.order_by().values_list("database", flat=True).distinct())
    return sorted(names)


def newest_drill_of_each(*, passed: bool | None = None, database: str | None = None) -> list[Drill]:
    """The newest finished drill of each database and kind (passed or failed ones, if asked)."""
    rows = _drill_model().objects.filter(ok__isnull=False)
    if database:
        rows = rows.filter(database=database)
    if passed is not None:
        rows = rows.filter(ok=passed)
    pairs = sorted(rows.order_by().values_list("database", "kind").distinct())
    found = (
        rows.filter(database=db, kind=kind).order_by("-started_at", "-id").first()
        for db, kind in pairs
    )
    return [d for d in found if d is not None]


def newest_event(kind: str) -> BackupEvent | None:
    """The newest event of ``kind`` (``wal_verify``: the newest archive check), or None."""
    _, _, Event = _orm()
    return Event.objects.filter(kind=kind).order_by("-created_at", "-id").first()


def release_connections() -> None:
    """Close this thread's catalog connections (a worker thread's, before it ends)."""
    from django.db import connections

    connections.close_all()
