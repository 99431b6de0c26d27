"""The Celery wiring as pure logic: beat entry, queue, priority translation, retries, limits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from strongroom import schedule
from strongroom.config import load_task_settings
from strongroom.errors import (
    ConfigError,
    KeyConfigError,
    LocationUnavailable,
    ObjectNotFound,
    PreflightError,
    StorageError,
)

NO_ENV: dict[str, str] = {}


def test_default_beat_entry_is_the_seeds() -> None:
    entries = schedule.beat_schedule({}, env=NO_ENV)
    assert list(entries) == [
        "daily-full-database-backup",
        "daily-prune-backups",
        "daily-heal-backups",
        "strongroom-weekly-tenant-backups",
        "strongroom-weekly-restore-drill",
    ]
    entry = entries["daily-full-database-backup"]
    assert entry["task"] == "strongroom.tasks.daily_full_database_backup"
    assert entry["schedule"] == crontab(hour=2, minute=0)
    assert entry["options"] == {"queue": "backups", "priority": 10}


def test_prune_and_heal_run_daily_after_the_backup_below_its_priority() -> None:
    entries = schedule.beat_schedule({}, env=NO_ENV)
    prune, heal = entries["daily-prune-backups"], entries["daily-heal-backups"]
    assert prune["task"] == "strongroom.tasks.prune_backups"
    assert prune["schedule"] == crontab(hour=4, minute=0)
    assert heal["task"] == "strongroom.tasks.heal_backups"
    assert heal["schedule"] == crontab(hour=5, minute=0)
    for entry in (prune, heal):
        assert entry["options"]["queue"] == "backups"
        assert entry["options"]["priority"] < 10


def test_weekly_tenant_backups_run_sunday_at_three_below_the_full_backup() -> None:
    entry = schedule.beat_schedule({}, env=NO_ENV)["strongroom-weekly-tenant-backups"]
    assert entry["task"] == "strongroom.tasks.weekly_tenant_backups"
    assert entry["schedule"] == crontab(day_of_week="sun", hour=3, minute=0)
    assert entry["options"] == {"queue": "backups", "priority": 8}
    moved = schedule.beat_schedule(
        {"BACKUP_TENANT_SCHEDULE_DAY": "sat", "BACKUP_TENANT_SCHEDULE_HOUR": 1}, env=NO_ENV
    )["strongroom-weekly-tenant-backups"]
    assert moved["schedule"] == crontab(day_of_week="sat", hour=1, minute=0)
    off = schedule.beat_schedule({"BACKUP_TENANT_SCHEDULE_HOUR": "off"}, env=NO_ENV)
    assert "strongroom-weekly-tenant-backups" not in off


def test_the_weekly_restore_drill_runs_saturday_at_six_below_every_backup() -> None:
    entries = schedule.beat_schedule({}, env=NO_ENV)
    entry = entries["strongroom-weekly-restore-drill"]
    assert entry["task"] == "strongroom.tasks.weekly_restore_drill"
    assert entry["schedule"] == crontab(day_of_week="sat", hour=6, minute=0)
    assert entry["options"] == {"queue": "backups", "priority": 5}
    backups = (entries["daily-full-database-backup"], entries["strongroom-weekly-tenant-backups"])
    assert all(entry["options"]["priority"] < b["options"]["priority"] for b in backups)
    moved = schedule.beat_schedule(
        {"BACKUP_DRILL_SCHEDULE_DAY": "wed", "BACKUP_DRILL_SCHEDULE_HOUR": 7}, env=NO_ENV
    )["strongroom-weekly-restore-drill"]
    assert moved["schedule"] == crontab(day_of_week="wed", hour=7, minute=0)
    off = schedule.beat_schedule({"BACKUP_DRILL_SCHEDULE_HOUR": "off"}, env=NO_ENV)
    assert "strongroom-weekly-restore-drill" not in off
    ts = schedule.task_settings({}, env=NO_ENV)
    assert schedule.time_limits(ts)["strongroom.tasks.weekly_restore_drill"]["time_limit"] > 0
    assert schedule.task_routes(ts)["strongroom.tasks.weekly_restore_drill"]["queue"] == "backups"


def test_maintenance_hours_are_settings_and_can_be_switched_off() -> None:
    entries = schedule.beat_schedule({"BACKUP_PRUNE_HOUR": "off", "BACKUP_HEAL_HOUR": 23}, NO_ENV)
    assert "daily-prune-backups" not in entries
    assert entries["daily-heal-backups"]["schedule"] == crontab(hour=23, minute=0)
    with pytest.raises(ConfigError, match="BACKUP_PRUNE_HOUR"):
        schedule.beat_schedule({"BACKUP_PRUNE_HOUR": "25"}, env=NO_ENV)


def test_beat_entry_follows_settings_objects_mappings_and_env() -> None:
    django_like = SimpleNamespace(BACKUP_SCHEDULE_HOUR=3, BACKUP_QUEUE="dr", BACKUP_TASK_PRIORITY=7)
    env = {"BACKUP_SCHEDULE_MINUTE": "30", "BACKUP_SCHEDULE_HOUR": "4"}
    entry = schedule.beat_schedule(django_like, env=env)["daily-full-database-backup"]
    assert entry["schedule"] == crontab(hour=3, minute=30)  # settings win, env fills the rest
    assert entry["options"] == {"queue": "dr", "priority": 7}
    entry = schedule.beat_schedule(None, env=env)["daily-full-database-backup"]
    assert entry["schedule"] == crontab(hour=4, minute=30)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BACKUP_SCHEDULE_HOUR", "24"),
        ("BACKUP_SCHEDULE_MINUTE", "-1"),
        ("BACKUP_TASK_PRIORITY", "11"),
        ("BACKUP_SCHEDULE_HOUR", "two"),
        ("BACKUP_VERIFY_AFTER_BACKUP", "perhaps"),
    ],
)
def test_bad_schedule_settings_are_config_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        schedule.beat_schedule({name: value}, env=NO_ENV)


def test_priority_means_highest_on_both_brokers() -> None:
    assert schedule.wire_priority(10, "amqp://guest@localhost//") == 10
    assert schedule.wire_priority(10, "pyamqp://localhost") == 10
    assert schedule.wire_priority(10, None) == 10  # Celery's default broker is AMQP
    # Redis serves 0 first and clamps above 9 to 9 (the lowest): the seed's 10 must become 0.
    assert schedule.wire_priority(10, "redis://localhost:6379/0") == 0
    assert schedule.wire_priority(9, "rediss://localhost") == 1
    assert schedule.wire_priority(1, "redis://localhost") == 9
    assert schedule.wire_priority(0, "redis://localhost") == 9
    assert schedule.wire_priority(99, "redis://localhost") == 0


@pytest.mark.parametrize("url", ["redis://h/0", "amqp://h//", "sqs://"])
def test_priority_order_is_kept_and_translation_round_trips(url: str) -> None:
    wires = [schedule.wire_priority(p, url) for p in range(11)]
    if schedule.broker_kind(url) == "redis":
        assert wires == sorted(wires, reverse=True)  # higher intent, earlier step
    else:
        assert wires == sorted(wires)
    for p in range(1, 11):
        wire = schedule.wire_priority(p, url)
        assert schedule.intent_priority(wire, url) == p
        assert schedule.wire_priority(schedule.intent_priority(wire, url), url) == wire


def test_backups_queue_is_declared_with_max_priority() -> None:
    ts = load_task_settings({})
    queue = schedule.backup_queue(ts)
    assert isinstance(queue, Queue)
    assert queue.name == "backups"
    assert queue.queue_arguments == {"x-max-priority": 10}


def test_time_limits_follow_the_pg_dump_timeout() -> None:
    ts = load_task_settings({"BACKUP_PG_DUMP_TIMEOUT": "600"})
    assert 600 < ts.soft_time_limit < ts.time_limit
    limits = schedule.time_limits(ts)[schedule.BACKUP_TASK]
    assert limits == {
        "soft_time_limit": ts.soft_time_limit,
        "time_limit": ts.time_limit,
        "max_retries": ts.max_retries,  # also bounds Celery's retries of a lost worker
        "default_retry_delay": ts.retry_backoff,
    }
    default = load_task_settings({})
    assert default.soft_time_limit > 3600
    with pytest.raises(ConfigError, match="must exceed BACKUP_PG_DUMP_TIMEOUT"):
        load_task_settings({"BACKUP_PG_DUMP_TIMEOUT": "600", "BACKUP_TASK_SOFT_TIME_LIMIT": "500"})
    with pytest.raises(ConfigError, match="must exceed BACKUP_TASK_SOFT_TIME_LIMIT"):
        load_task_settings(
            {"BACKUP_TASK_SOFT_TIME_LIMIT": "4000", "BACKUP_TASK_TIME_LIMIT": "4000"}
        )


def test_the_base_backup_task_is_limited_after_its_own_timeouts() -> None:
    default = load_task_settings({})
    limits = schedule.time_limits(default)[schedule.BASE_BACKUP_TASK]
    assert limits["max_retries"] == default.max_retries  # a lost worker is retried a bounded time
    assert 3600 + 60 < limits["soft_time_limit"] < limits["time_limit"]
    long = load_task_settings(
        {"BACKUP_BASE_BACKUP_TIMEOUT": "20000", "BACKUP_WAL_CONFIRM_TIMEOUT": "600"}
    )
    soft, hard = schedule.base_backup_limits(long)
    assert 20600 < soft < hard and long.soft_time_limit < 20600  # the dump's stay as they are
    assert schedule.time_limits(long)[schedule.BACKUP_TASK]["time_limit"] == long.time_limit
    options = schedule.transport_options(long, "redis://h/0", None)
    assert options["visibility_timeout"] > hard  # Redis never hands a running one to another


def test_redis_transport_options_cover_priority_and_long_backups() -> None:
    ts = load_task_settings({})
    opts = schedule.transport_options(ts, "redis://h/0", {"visibility_timeout": 60, "sep": "#"})
    assert opts["priority_steps"] == list(range(10))
    assert opts["sep"] == "#"  # kept: it names the keys that may hold queued messages
    assert opts["visibility_timeout"] > ts.time_limit
    assert schedule.transport_options(ts, "amqp://h//", {"x": 1}) == {"x": 1}


def test_transient_errors_are_retried_configuration_errors_never() -> None:
    assert schedule.is_transient(LocationUnavailable("r2 unreachable", location="r2"))
    assert schedule.is_transient(StorageError("500 from S3"))
    assert schedule.is_transient(ConnectionResetError(104, "Connection reset by peer"))
    assert schedule.is_transient(TimeoutError())
    refused = LocationUnavailable("r2 refused our credentials", location="r2")
    refused.transient = False
    assert not schedule.is_transient(refused)
    assert not schedule.is_transient(ObjectNotFound("gone"))
    assert not schedule.is_transient(ConfigError("BACKUP_ENCRYPTION_KEY is not set"))
    assert not schedule.is_transient(KeyConfigError("bad key"))
    assert not schedule.is_transient(PreflightError("role cannot bypass RLS"))
    assert not schedule.is_transient(ValueError("a bug"))


def test_retry_backoff_grows_and_is_capped() -> None:
    ts = load_task_settings(
        {"BACKUP_TASK_RETRY_BACKOFF": "10", "BACKUP_TASK_RETRY_BACKOFF_MAX": "50"}
    )
    assert [schedule.retry_countdown(n, ts, jitter=False) for n in range(4)] == [10, 20, 40, 50]
    for n in range(6):
        exact = schedule.retry_countdown(n, ts, jitter=False)
        assert exact / 2 <= schedule.retry_countdown(n, ts) <= exact


def test_configure_app_keeps_the_projects_queues_and_routes() -> None:
    app = Celery("project", set_as_current=False)
    app.conf.update(
        broker_url="redis://localhost:6379/0",
        task_routes={"shop.tasks.*": {"queue": "shop"}},
        task_annotations={"shop.tasks.slow": {"time_limit": 5}},
    )
    ts = schedule.configure_app(app, {"BACKUP_PG_DUMP_TIMEOUT": "100"}, env=NO_ENV)
    names = [q.name for q in app.conf.task_queues]
    assert names == ["celery", "backups"]  # the default queue stays consumed by plain workers
    backups = app.conf.task_queues[-1]
    assert backups.queue_arguments == {"x-max-priority": 10}
    assert app.conf.task_routes[0] == {"shop.tasks.*": {"queue": "shop"}}
    assert app.conf.task_routes[1][schedule.BACKUP_TASK] == {
        "queue": "backups",
        "routing_key": "backups",
    }
    assert app.conf.task_annotations[0][schedule.BACKUP_TASK]["time_limit"] == ts.time_limit
    assert app.conf.broker_transport_options["visibility_timeout"] > ts.time_limit
    assert schedule.settings_for_app(app) is ts
    assert "beat_schedule" not in app.conf.changes  # the project merges the entry itself


def test_standalone_app_is_found_by_celery_dash_a(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.app.utils import find_app

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("BACKUP_SCHEDULE_HOUR", "2")
    import strongroom.celery

    app = strongroom.celery.make_app()
    found = find_app("strongroom")
    assert isinstance(found, Celery)
    assert found.main == "strongroom"
    entry = app.conf.beat_schedule["daily-full-database-backup"]
    assert entry["options"] == {"queue": "backups", "priority": 10}
    assert app.conf.task_default_queue == "backups"
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["priority_steps"] == list(range(10))


def test_tasks_are_late_acked_with_time_limits_from_the_settings() -> None:
    import strongroom.tasks  # noqa: F401  (registers the shared tasks)

    app = Celery("limits", set_as_current=False)
    app.conf.update(broker_url="redis://127.0.0.1:1/0")
    ts = schedule.configure_app(app, {"BACKUP_PG_DUMP_TIMEOUT": "120"}, env=NO_ENV)
    for name in (schedule.BACKUP_TASK, schedule.VERIFY_TASK):
        task = app.tasks[name]
        assert task.acks_late is True
        assert task.reject_on_worker_lost is True
        assert task.retry_on_worker_lost is True
        assert task.max_retries == ts.max_retries
        assert 120 < task.soft_time_limit == ts.soft_time_limit < task.time_limit == ts.time_limit
    base = app.tasks[schedule.BASE_BACKUP_TASK]  # its own limits, after pg_basebackup's timeout
    assert base.acks_late is True and base.max_retries == ts.max_retries
    assert (base.soft_time_limit, base.time_limit) == schedule.base_backup_limits(ts)
