"""Celery tasks. Thin: resolve configuration, call a service, decide about retries, return ids.

``daily_full_database_backup()`` can also be called directly (as in the seed's manual test), in
which case it runs in-process, ``backup_job_id`` stays empty and nothing is retried or queued.

Through a broker every strongroom task is ``acks_late``. A pool process that dies mid-backup
(SIGKILL, the OOM killer) makes Celery retry the task (``retry_on_worker_lost``, within the same
``BACKUP_TASK_MAX_RETRIES`` budget, so a backup that keeps killing its worker is given up); a
whole worker that dies leaves its unacknowledged message to the broker, which delivers it again.
Either way the next run takes the database's lock, finds the dead run, records it FAILED, and
this task tells the operators. Transient failures (storage unreachable, connection reset) are
retried with exponential backoff and jitter; configuration problems (missing key, missing
BYPASSRLS) never are.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery import Task, shared_task

from strongroom.conf import current_config
from strongroom.config import Config
from strongroom.core.status import VERIFIABLE
from strongroom.schedule import (
    BACKUP_TASK,
    BASE_BACKUP_TASK,
    DRILL_TASK,
    HEAL_TASK,
    PING_TASK,
    PRUNE_TASK,
    TENANT_TASK,
    VERIFY_TASK,
    intent_priority,
    is_transient,
    retry_countdown,
    settings_for_app,
    settings_source,
    wire_priority,
)
from strongroom.services import notify

log = logging.getLogger("strongroom.tasks")


class StrongroomTask(Task):  # type: ignore[type-arg]
    """Base of strongroom's tasks: late acks, and priorities on the seed's scale (10 = highest).

    ``priority`` given to ``apply_async`` (by beat's entry, ``.delay()`` or a retry) is
    translated to the broker's wire value here, so Redis, whose order is inverted, also serves
    the backup first. Publish with the task object, not ``app.send_task`` by name, to get this.
    """

    acks_late = True
    reject_on_worker_lost = True
    retry_on_worker_lost = True

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        ts = settings_for_app(self.app)
        intent = options.get("priority")
        options["priority"] = wire_priority(
            ts.priority if intent is None else int(intent), _broker_url(self), ts.max_priority
        )
        return super().apply_async(
            args, kwargs, task_id, producer, link, link_error, shadow, **options
        )

    def signature_from_request(
        self,
        request: Any = None,
        args: Any = None,
        kwargs: Any = None,
        queue: str | None = None,
        **extra_options: Any,
    ) -> Any:
        """A retry re-publishes with the wire priority it arrived with: map it back first."""
        sig = super().signature_from_request(request, args, kwargs, queue, **extra_options)
        wire = sig.options.get("priority")
        if wire is not None:
            ts = settings_for_app(self.app)
            sig.options["priority"] = intent_priority(wire, _broker_url(self), ts.max_priority)
        return sig


def _broker_url(task: Task) -> str | None:  # type: ignore[type-arg]
    conf = task.app.conf
    url = conf.broker_write_url or conf.broker_url
    return str(url) if url else None


@shared_task(bind=True, base=StrongroomTask, name=BACKUP_TASK)
def daily_full_database_backup(
    self: StrongroomTask, created_by_id: int | None = None, verify: bool | None = None
) -> str:
    """Back up the whole database to every location; return the backup id.

    The Celery task id is recorded as the backup's ``backup_job_id``. A COMPLETED or PARTIAL
    backup is followed by :func:`verify_backup` on the same queue (``verify=False`` or
    ``BACKUP_VERIFY_AFTER_BACKUP=false`` to skip, e.g. when you chain it yourself).
    """
    from strongroom.services.backup import run_full_backup

    direct = bool(self.request.called_directly)
    job_id = "" if direct else str(self.request.id or "")
    with notify.deferred() as outbox:
        config = _config_or_notify(outbox)
        ts = config.tasks
        suspects = _running_runs(config)
        try:
            report = run_full_backup(config, job_id=job_id, created_by_id=created_by_id)
        except Exception as exc:
            if not outbox.items:  # failed before the service could record and notify
                outbox.add(config, "", "FAILED", _reason(exc))
            _report_dead_runs(config, suspects, outbox)
            retries = int(self.request.retries or 0)
            if direct or not is_transient(exc) or retries >= ts.max_retries:
                outbox.note = _final_note(exc, retries, direct)
                raise
            countdown = retry_countdown(retries, ts)
            outbox.note = (
                f"transient failure; retrying in {countdown:.0f} s "
                f"(attempt {retries + 2} of {ts.max_retries + 1})"
            )
            raise self.retry(exc=exc, countdown=countdown, max_retries=ts.max_retries) from exc
        _report_dead_runs(config, suspects, outbox)
    log.info("backup %s (job %s): %s", report.id, job_id or "-", report.status)
    wants_verify = ts.verify_after if verify is None else verify
    if wants_verify and not direct and report.status in VERIFIABLE:
        verify_backup.apply_async((report.id,))
    return report.id


@shared_task(bind=True, base=StrongroomTask, name=VERIFY_TASK)
def verify_backup(self: StrongroomTask, backup_id: str | None = None) -> str:
    """Re-read every copy of a backup (the newest when none is given); return its status.

    A backup that was SKIPPED or FAILED has nothing to read and is left as it is. A backup
    that fails verification notifies the operators like a failed backup does.
    """
    from strongroom.catalog import store
    from strongroom.services.verify import verify_backup as run_verify

    with notify.deferred() as outbox:
        config = _config_or_notify(outbox)
        ts = config.tasks
        try:
            if backup_id:
                status = store.get_backup(backup_id).status
                if status not in VERIFIABLE:
                    log.info("backup %s is %s: nothing to verify", backup_id, status)
                    return str(status)
            report = run_verify(config, backup_id)
        except Exception as exc:
            retries = int(self.request.retries or 0)
            direct = bool(self.request.called_directly)
            outbox.add(config, backup_id or "", "VERIFY_FAILED", f"verification: {_reason(exc)}")
            if direct or not is_transient(exc) or retries >= ts.max_retries:
                outbox.note = _final_note(exc, retries, direct)
                raise
            countdown = retry_countdown(retries, ts)
            outbox.note = f"transient failure; retrying verification in {countdown:.0f} s"
            raise self.retry(exc=exc, countdown=countdown, max_retries=ts.max_retries) from exc
        if not report.ok:
            outbox.add(config, report.id, report.status, f"verification: {report.problems()}")
    return str(report.status)


@shared_task(bind=True, base=StrongroomTask, name=PRUNE_TASK)
def prune_backups(self: StrongroomTask, dry_run: bool = False) -> dict[str, Any]:
    """Apply the retention policy in every location (daily); return what was deleted.

    Interrupted deletions of an earlier run are finished first. Copies that could not be
    deleted are reported to the operators; the next run tries them again.
    """
    from strongroom.services.prune import prune_backups as run_prune

    with notify.deferred() as outbox:
        config = _config_or_notify(outbox)
        report = run_prune(config, dry_run=dry_run)
        if not report.ok:
            outbox.add(config, "", "PRUNE_FAILED", f"prune: {report.problems()}")
            outbox.note = "the next prune retries the copies it could not delete"
    return {
        "ok": report.ok,
        "dry_run": report.dry_run,
        "deleted": [f"{c.location}:{c.backup_id}" for c in report.deleted if c.ok],
        "kept": len(report.plan.to_keep),
    }


@shared_task(bind=True, base=StrongroomTask, name=HEAL_TASK)
def heal_backups(self: StrongroomTask, deep: bool = False) -> dict[str, Any]:
    """Re-create missing (``deep``: also corrupt) copies from a verified copy elsewhere.

    No re-dump: a copy that cannot be healed (no good copy left anywhere) is reported.
    """
    from strongroom.services.heal import heal_backups as run_heal

    with notify.deferred() as outbox:
        config = _config_or_notify(outbox)
        report = run_heal(config, None, deep=deep)
        if not report.ok:
            outbox.add(config, "", "HEAL_FAILED", f"heal: {report.problems()}")
            outbox.note = "copies that cannot be healed need a new backup or an operator"
    return {
        "ok": report.ok,
        "checked": report.checked,
        "healed": [f"{r.location}:{r.backup_id}" for r in report.healed],
        "failed": [f"{r.location}:{r.backup_id}" for r in report.failures],
    }


@shared_task(bind=True, base=StrongroomTask, name=TENANT_TASK)
def weekly_tenant_backups(self: StrongroomTask) -> dict[str, Any]:
    """Back up every tenant, one object each (weekly); return each tenant's backup or error.

    One failing tenant does not stop the others; the failures are reported to the operators
    together. Not retried as a whole: next week's run, or ``strongroom tenant backup ID``.
    """
    from strongroom.services.tenant_backup import run_all_tenant_backups

    job_id = "" if self.request.called_directly else str(self.request.id or "")
    with notify.deferred() as outbox:
        config = _config_or_notify(outbox)
        outcomes = run_all_tenant_backups(config, job_id=job_id)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            why = "; ".join(f"{o.tenant_id}: {o.error or 'not completed'}" for o in failed)
            outbox.add(config, "", "TENANT_FAILED", f"tenant backups: {why}")
            outbox.note = (
                "the other tenants were backed up; `strongroom tenant backup ID` retries one"
            )
    return {
        "ok": not failed,
        "backups": {o.tenant_id: o.report.id for o in outcomes if o.report is not None},
        "failed": {o.tenant_id: o.error for o in failed},
    }


@shared_task(bind=True, base=StrongroomTask, name=DRILL_TASK)
def weekly_restore_drill(self: StrongroomTask, backup_id: str | None = None) -> dict[str, Any]:
    """Drill the newest full, tenant and base backup (the latter two if any; weekly), or one id.

    The drill service records each result and notifies about a failed drill itself; a drill
    that cannot start (no full backup to drill, the drill server unreachable) is reported here.
    Not retried: a drill proves the state of things now, and next week's run comes anyway.
    """
    plan: list[tuple[str | None, str | None]] = (
        [(backup_id, None)] if backup_id else [(None, "full"), (None, "tenant"), (None, "base")]
    )
    with notify.deferred() as outbox:
        config = _config_or_notify(outbox)
        drills = [d for d in (_drill_one(config, w, k, outbox) for w, k in plan) if d]
    return {"ok": bool(drills) and all(d["ok"] for d in drills), "drills": drills}


def _drill_one(
    config: Config, backup_id: str | None, kind: str | None, outbox: notify.Outbox
) -> dict[str, Any] | None:
    """One drill's outcome; None when there is no tenant or base backup to drill at all."""
    from strongroom.errors import BackupNotFound, StrongroomError
    from strongroom.services.drill import run_drill

    try:
        report = run_drill(config, backup_id, kind=kind)
    except StrongroomError as exc:
        if isinstance(exc, BackupNotFound) and kind in ("tenant", "base"):
            return None
        outbox.add(config, backup_id or "", "DRILL_FAILED", f"restore drill: {exc}")
        outbox.note = "the drill did not run; `strongroom drill --latest` runs one by hand"
        return {"kind": kind, "ok": False, "error": str(exc)}
    return {
        "kind": report.kind,
        "ok": report.ok,
        "drill_id": report.drill_id,
        "backup_id": report.backup_id,
        "rto_seconds": report.rto_seconds,
        "mismatches": report.mismatches,
        "error": report.error,
    }


@shared_task(bind=True, base=StrongroomTask, name=BASE_BACKUP_TASK)
def daily_base_backup(self: StrongroomTask) -> str:
    """A physical base backup of the cluster (daily, with WAL archiving on); its id.

    Transient failures (storage, WAL not yet confirmed in a required location) are retried like
    the full backup's; the service records the final status and notifies.
    """
    from strongroom.services.base_backup import run_base_backup

    direct = bool(self.request.called_directly)
    job_id = "" if direct else str(self.request.id or "")
    with notify.deferred() as outbox:
        config = _config_or_notify(outbox)
        ts = config.tasks
        try:
            report = run_base_backup(config, job_id=job_id)
        except Exception as exc:
            if not outbox.items:
                outbox.add(config, "", "FAILED", f"base backup: {_reason(exc)}")
            retries = int(self.request.retries or 0)
            if direct or not is_transient(exc) or retries >= ts.max_retries:
                outbox.note = _final_note(exc, retries, direct)
                raise
            countdown = retry_countdown(retries, ts)
            outbox.note = f"transient failure; retrying the base backup in {countdown:.0f} s"
            raise self.retry(exc=exc, countdown=countdown, max_retries=ts.max_retries) from exc
    log.info("base backup %s (job %s): %s", report.id, job_id or "-", report.status)
    return report.id


@shared_task(bind=True, base=StrongroomTask, name=PING_TASK)
def ping(self: StrongroomTask, tag: str = "") -> dict[str, Any]:
    """Answer from the worker that took the message: proves a worker consumes the queue."""
    return {
        "tag": tag,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time_ns": time.time_ns(),
        "priority": (self.request.delivery_info or {}).get("priority"),
    }


# -- helpers ---------------------------------------------------------------------------------


def _config_or_notify(outbox: notify.Outbox) -> Config:
    """The configuration; a broken one is reported (to whatever can still be reached) and raised."""
    try:
        return current_config()
    except Exception as exc:
        outbox.add(_fallback_config(), "", "FAILED", f"configuration: {_reason(exc)}")
        outbox.note = "not retried: fix the configuration"
        raise


def _fallback_config() -> Config:
    """Just enough configuration to notify when the real one does not load."""
    from django.conf import settings

    source = settings_source(settings if settings.configured else None)
    webhook = source.get("BACKUP_NOTIFY_WEBHOOK_URL") or None
    return Config(
        database_url=str(source.get("DATABASE_URL") or ""),
        encryption_key=None,
        old_encryption_keys=(),
        locations=(),
        webhook_url=str(webhook).strip() if webhook else None,
    )


def _running_runs(config: Config) -> list[str]:
    """Runs of this database recorded as running before we start: some may be dead."""
    try:
        from strongroom.catalog import store
        from strongroom.core.postgres import ConnInfo

        return list(store.running_backups(ConnInfo.parse(config.database_url).dbname))
    except Exception:
        return []  # the run itself will report what is wrong


def _report_dead_runs(config: Config, suspects: list[str], outbox: notify.Outbox) -> None:
    """Tell the operators about runs this run found dead (the service recorded them FAILED)."""
    if not suspects:
        return
    from strongroom.catalog import store
    from strongroom.core.status import BackupStatus, FailureCause

    for backup_id in suspects:
        try:
            record = store.get_backup(backup_id)
        except Exception:
            continue
        dead = store.failure_cause(record) == FailureCause.DEAD_RUN
        if record.status == BackupStatus.FAILED and dead:
            note = "recorded FAILED by the next run of this database"
            outbox.add(config, backup_id, "FAILED", str(record.error), note=note)


def _final_note(exc: BaseException, retries: int, direct: bool) -> str:
    if direct:
        return "run directly: not retried"
    if not is_transient(exc):
        return "not retried: this needs fixing, not waiting"
    return f"not retried: gave up after {retries + 1} attempt(s)"


def _reason(exc: BaseException) -> str:
    from strongroom.errors import StrongroomError

    if isinstance(exc, StrongroomError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
