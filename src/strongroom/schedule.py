"""Celery wiring for strongroom: the beat entry, the ``backups`` queue, priority and retries.

Everything here is derived from the same settings as the rest of strongroom (Django settings
over the environment, or the environment alone), so the standalone ``celery -A strongroom`` app
and a Django project's own Celery app behave the same.

Priority. The seed asks for priority 10, meaning *highest*, which is RabbitMQ's reading: the
queue is declared with ``x-max-priority`` (10) and a larger number is delivered first. Celery's
Redis transport reads priorities the other way round (0 is delivered first, anything above 9 is
clamped to 9, the *lowest*), so sending the seed's 10 unchanged to Redis would make backups the
last thing a worker picks up. Strongroom keeps the seed's scale everywhere a person writes a
priority (settings, the beat entry, ``apply_async(priority=...)``) and translates it to the
broker's wire value when the message is published (:func:`wire_priority`).
"""

from __future__ import annotations

import os
import random
import weakref
from collections import ChainMap
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from strongroom.config import (
    HARD_LIMIT_MARGIN,
    SOFT_LIMIT_MARGIN,
    TaskSettings,
    environment,
    load_task_settings,
)
from strongroom.errors import StrongroomError

BACKUP_TASK = "strongroom.tasks.daily_full_database_backup"
VERIFY_TASK = "strongroom.tasks.verify_backup"
PING_TASK = "strongroom.tasks.ping"
PRUNE_TASK = "strongroom.tasks.prune_backups"
HEAL_TASK = "strongroom.tasks.heal_backups"
TENANT_TASK = "strongroom.tasks.weekly_tenant_backups"
DRILL_TASK = "strongroom.tasks.weekly_restore_drill"
BASE_BACKUP_TASK = "strongroom.tasks.daily_base_backup"
TASK_NAMES = (
    BACKUP_TASK,
    VERIFY_TASK,
    PING_TASK,
    PRUNE_TASK,
    HEAL_TASK,
    TENANT_TASK,
    DRILL_TASK,
    BASE_BACKUP_TASK,
)
#: The seed's name for the beat entry.
ENTRY_NAME = "daily-full-database-backup"
PRUNE_ENTRY = "daily-prune-backups"
HEAL_ENTRY = "daily-heal-backups"
TENANT_ENTRY = "strongroom-weekly-tenant-backups"
DRILL_ENTRY = "strongroom-weekly-restore-drill"
BASE_BACKUP_ENTRY = "strongroom-daily-base-backup"
#: Maintenance runs below backups: a prune or heal queued at 02:00 never delays the dump.
MAINTENANCE_PRIORITY = 3

#: Redis transport: its priority range, delivered lowest number first.
REDIS_MIN_PRIORITY = 0
REDIS_MAX_PRIORITY = 9
#: Extra seconds a Redis broker waits before handing an unacknowledged backup to another worker,
#: beyond the task's hard time limit (``visibility_timeout``; see :func:`celery_settings`).
VISIBILITY_MARGIN = 600.0

_REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel", "sentinels")
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")

SettingsLike = Mapping[str, Any] | object | None


def settings_source(settings: SettingsLike = None, env: Mapping[str, str] | None = None) -> Any:
    """A mapping view of ``settings`` (a mapping, a settings object or module) over ``env``.

    ``None`` means the environment over the config file named by ``STRONGROOM_CONFIG`` (the
    standalone CLI and ``celery -A strongroom``).
    Django settings (or a settings module's ``globals()``) take precedence, as in
    :func:`strongroom.conf.config_from_django`.
    """
    environ: Mapping[str, Any] = environment() if env is None else env
    if settings is None:
        return ChainMap({}, dict(environ))
    if isinstance(settings, Mapping):
        layered = dict(settings)
    else:
        from strongroom.config import setting_names

        layered = {n: getattr(settings, n) for n in setting_names() if hasattr(settings, n)}
    return ChainMap(layered, dict(environ))


def task_settings(
    settings: SettingsLike = None, env: Mapping[str, str] | None = None
) -> TaskSettings:
    """The resolved :class:`TaskSettings` (schedule, queue, priority, retries, time limits)."""
    return load_task_settings(settings_source(settings, env))


# -- priority --------------------------------------------------------------------------------


def broker_kind(url: str | None) -> str:
    """``"redis"``, ``"amqp"`` or the URL's scheme (Celery's default broker is AMQP)."""
    if not url:
        return "amqp"
    scheme = urlsplit(url.split(";", 1)[0]).scheme.lower()
    if scheme in _REDIS_SCHEMES:
        return "redis"
    if scheme in _AMQP_SCHEMES:
        return "amqp"
    return scheme


def wire_priority(priority: int, broker_url: str | None, max_priority: int = 10) -> int:
    """The value to put on the message so ``priority`` (10 = highest) means that on the broker.

    AMQP: unchanged, capped at the queue's ``x-max-priority``. Redis: inverted, ``max_priority``
    becomes 0 (served first) and anything at or below ``max_priority - 9`` becomes 9.
    Other transports get the value unchanged.
    """
    priority = max(0, min(int(priority), max_priority))
    if broker_kind(broker_url) == "redis":
        return max(REDIS_MIN_PRIORITY, min(REDIS_MAX_PRIORITY, max_priority - priority))
    return priority


def intent_priority(wire: int, broker_url: str | None, max_priority: int = 10) -> int:
    """Inverse of :func:`wire_priority` (a retried task carries the wire value it arrived with)."""
    if broker_kind(broker_url) == "redis":
        return max(0, min(max_priority, max_priority - int(wire)))
    return max(0, min(int(wire), max_priority))


# -- queue, routes, beat ---------------------------------------------------------------------


def backup_queue(ts: TaskSettings) -> Queue:
    """The ``backups`` queue; on RabbitMQ declared with ``x-max-priority`` so priority works.

    RabbitMQ refuses to redeclare an existing queue with different arguments: a ``backups``
    queue created earlier without ``x-max-priority`` must be deleted once (see docs/celery.md).
    """
    return Queue(
        ts.queue,
        routing_key=ts.queue,
        queue_arguments={"x-max-priority": ts.max_priority},
    )


def publish_options(ts: TaskSettings) -> dict[str, Any]:
    """Queue and (seed-scale) priority for publishing a backup task by hand."""
    return {"queue": ts.queue, "priority": ts.priority}


def task_routes(ts: TaskSettings) -> dict[str, dict[str, Any]]:
    """Every strongroom task goes to the backups queue."""
    return {name: {"queue": ts.queue, "routing_key": ts.queue} for name in TASK_NAMES}


def beat_schedule(
    settings: SettingsLike = None, env: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """The seed's beat entry and the daily maintenance, ready to merge into the beat schedule.

    Defaults: the backup at ``crontab(hour=2, minute=0)``, queue ``backups``, priority 10 (seed
    scale; the task translates it for Redis when it is published); prune at 04:00 and heal at
    05:00 on the same queue at a lower priority (``BACKUP_PRUNE_HOUR``/``BACKUP_HEAL_HOUR``,
    ``off`` to leave one out); every tenant's backup on Sunday at 03:00, priority 8
    (``BACKUP_TENANT_SCHEDULE_DAY``/``_HOUR``/``BACKUP_TENANT_TASK_PRIORITY``); the restore
    drill of the newest full backup on Saturday at 06:00, priority 5
    (``BACKUP_DRILL_SCHEDULE_DAY``/``_HOUR``/``BACKUP_DRILL_TASK_PRIORITY``); the physical
    base backup daily at 01:00 at the backup's priority, but only with ``BACKUP_WAL_ARCHIVING``
    on (``BACKUP_BASE_BACKUP_HOUR``, ``off`` to leave it out).
    """
    ts = task_settings(settings, env)
    entries: dict[str, dict[str, Any]] = {
        ENTRY_NAME: {
            "task": BACKUP_TASK,
            "schedule": crontab(hour=ts.schedule_hour, minute=ts.schedule_minute),
            "options": publish_options(ts),
        }
    }
    maintenance = {"queue": ts.queue, "priority": min(MAINTENANCE_PRIORITY, ts.max_priority)}
    for name, task, hour in (
        (PRUNE_ENTRY, PRUNE_TASK, ts.prune_hour),
        (HEAL_ENTRY, HEAL_TASK, ts.heal_hour),
    ):
        if hour is not None:
            entries[name] = {
                "task": task,
                "schedule": crontab(hour=hour, minute=ts.schedule_minute),
                "options": dict(maintenance),
            }
    if ts.tenant_hour is not None:
        entries[TENANT_ENTRY] = {
            "task": TENANT_TASK,
            "schedule": crontab(
                day_of_week=ts.tenant_day, hour=ts.tenant_hour, minute=ts.schedule_minute
            ),
            "options": {"queue": ts.queue, "priority": ts.tenant_priority},
        }
    if ts.drill_hour is not None:
        entries[DRILL_ENTRY] = {
            "task": DRILL_TASK,
            "schedule": crontab(
                day_of_week=ts.drill_day, hour=ts.drill_hour, minute=ts.schedule_minute
            ),
            "options": {"queue": ts.queue, "priority": ts.drill_priority},
        }
    if ts.base_backup_hour is not None:
        entries[BASE_BACKUP_ENTRY] = {
            "task": BASE_BACKUP_TASK,
            "schedule": crontab(hour=ts.base_backup_hour, minute=ts.schedule_minute),
            "options": publish_options(ts),
        }
    return entries


# -- retries ---------------------------------------------------------------------------------

_TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later may help: storage or connection trouble, never configuration.

    A :class:`~strongroom.errors.StrongroomError` says so itself (``transient``); a bare
    ``ConnectionError``/``TimeoutError`` (reset, refused, timed out) that escaped translation is
    transient too. Anything else (a bug, a missing key, RLS without BYPASSRLS) is not.
    """
    if isinstance(exc, StrongroomError):
        return bool(exc.transient)
    return isinstance(exc, _TRANSIENT_BUILTINS)


def retry_countdown(retries: int, ts: TaskSettings, *, jitter: bool = True) -> float:
    """Exponential backoff: ``backoff * 2**retries``, capped, jittered when asked.

    Jitter spreads the retries of many databases (or many workers) over the window instead of
    sending them all back to the same storage at the same second.
    """
    delay = float(min(ts.retry_backoff_max, ts.retry_backoff * 2.0 ** max(0, retries)))
    if jitter and delay > 0:
        return random.uniform(delay / 2, delay)  # half-jitter: never much sooner than asked
    return delay


# -- Celery configuration --------------------------------------------------------------------


def time_limits(ts: TaskSettings) -> dict[str, dict[str, float | int]]:
    """Per-task time limits and retry budget (Celery ``task_annotations``).

    ``max_retries`` and ``default_retry_delay`` also bound the retries Celery itself makes when a
    worker process dies mid-task (``retry_on_worker_lost``), so a backup that keeps getting its
    worker OOM-killed is given up instead of looping.
    """
    limits = {
        "soft_time_limit": ts.soft_time_limit,
        "time_limit": ts.time_limit,
        "max_retries": ts.max_retries,
        "default_retry_delay": ts.retry_backoff,
    }
    tasks = (BACKUP_TASK, VERIFY_TASK, PRUNE_TASK, HEAL_TASK, TENANT_TASK, DRILL_TASK)
    annotations = {name: dict(limits) for name in tasks}
    soft, hard = base_backup_limits(ts)
    annotations[BASE_BACKUP_TASK] = {**limits, "soft_time_limit": soft, "time_limit": hard}
    return annotations


def base_backup_limits(ts: TaskSettings) -> tuple[float, float]:
    """The base backup task's soft and hard limits: after its own timeouts, as the dump's are.

    pg_basebackup's timeout and the wait for its WAL fire first and are recorded; Celery's
    limits only stop a run those could not (the same margins as the dump's, never shorter).
    """
    soft = max(ts.soft_time_limit, ts.base_backup_seconds + SOFT_LIMIT_MARGIN)
    return soft, max(ts.time_limit, soft + HARD_LIMIT_MARGIN)


def celery_settings(ts: TaskSettings) -> dict[str, Any]:
    """Worker and app settings for the standalone app (a project sets its own; see docs)."""
    conf: dict[str, Any] = {
        "task_default_queue": ts.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: priority decides what runs next, and a late-acked
        # backup does not sit reserved behind another one.
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        # A broker blip must not throw away an hour of dump: the running backup carries on; the
        # redelivered copy of its message meets the advisory lock and is recorded SKIPPED.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "timezone": os.environ.get("CELERY_TIMEZONE", "").strip() or "UTC",
        "enable_utc": True,
    }
    if ts.broker_url:
        conf["broker_url"] = ts.broker_url
    return conf


def transport_options(
    ts: TaskSettings, broker_url: str | None, current: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Broker transport options that priority and acks_late need, over the project's own.

    Redis: all ten priority steps (default is four), and a visibility timeout longer than the
    task's hard limit, otherwise Redis hands a still-running backup to a second worker (which
    the advisory lock would turn into a SKIPPED run). Existing steps and separator are kept: they
    name the Redis keys, and changing them strands queued messages.
    """
    options = dict(current or {})
    if broker_kind(broker_url) == "redis":
        options.setdefault("priority_steps", list(range(REDIS_MAX_PRIORITY + 1)))
        options.setdefault("sep", ":")
        needed = max(ts.time_limit, base_backup_limits(ts)[1]) + VISIBILITY_MARGIN
        options["visibility_timeout"] = max(float(options.get("visibility_timeout", 0)), needed)
    return options


def configure_app(
    app: Celery, settings: SettingsLike = None, env: Mapping[str, str] | None = None
) -> TaskSettings:
    """Merge strongroom's queue, routes, time limits and transport options into ``app.conf``.

    Call it from a project's ``celery.py`` after ``config_from_object``. It keeps the project's
    own queues, routes and annotations (a worker started without ``-Q`` still consumes the
    default queue) and adds only what strongroom needs. The beat entry is not merged here: the
    project merges :func:`beat_schedule` into ``CELERY_BEAT_SCHEDULE`` where it can see it.
    """
    ts = task_settings(settings, env)
    conf = app.conf
    conf.task_queues = _merged_queues(conf.task_queues, conf.task_default_queue, ts)
    conf.task_routes = _merged_routes(conf.task_routes, ts)
    conf.task_annotations = _merged_annotations(conf.task_annotations, ts)
    conf.broker_transport_options = transport_options(
        ts, conf.broker_write_url or conf.broker_url, conf.broker_transport_options
    )
    _TASK_SETTINGS[app] = ts
    return ts


_TASK_SETTINGS: weakref.WeakKeyDictionary[Celery, TaskSettings] = weakref.WeakKeyDictionary()


def settings_for_app(app: Celery) -> TaskSettings:
    """What :func:`configure_app` resolved for ``app``, else the current settings."""
    found = _TASK_SETTINGS.get(app)
    if found is not None:
        return found
    from django.conf import settings

    return task_settings(settings if settings.configured else None)


def _merged_queues(existing: Any, default_queue: str, ts: TaskSettings) -> list[Queue]:
    queues = list(existing or [])
    if not queues and default_queue and default_queue != ts.queue:
        queues.append(Queue(default_queue, routing_key=default_queue))
    queues = [q for q in queues if getattr(q, "name", q) != ts.queue]
    queues.append(backup_queue(ts))
    return queues


def _merged_routes(existing: Any, ts: TaskSettings) -> Any:
    """The project's routes first (they win), then ours."""
    ours = task_routes(ts)
    if not existing:
        return ours
    if isinstance(existing, Mapping | str):
        return [existing, ours]
    return [*existing, ours]


def _merged_annotations(existing: Any, ts: TaskSettings) -> Any:
    """Ours first: Celery applies every matching annotation in order, so the project's win."""
    ours = time_limits(ts)
    if not existing:
        return ours
    if isinstance(existing, Mapping | str):
        return [ours, existing]
    return [ours, *existing]
