"""Configuration: one typed ``Config`` built from any mapping of the seed's setting names.

The same names work as environment variables (standalone CLI, ``celery -A strongroom``), as
``NAME=value`` lines of a config file under them (:mod:`strongroom.configfile`), and as Django
settings (see :mod:`strongroom.conf`, which layers ``settings`` over both). This
module imports no Django so the CLI can run in a disaster, when the application is gone.

Secrets (keys, S3 credentials, database passwords) are kept as given and never rendered by
``Config.describe()``.
"""

from __future__ import annotations

import math
import os
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from strongroom.errors import ConfigError

DEFAULT_LOCATIONS = ("local", "r2", "b2")

#: Every name read here or by :mod:`strongroom.conf`, besides those the storage backends declare
#: (see :func:`setting_names`). A config file may set exactly these and the backends' names.
GENERAL_SETTINGS = (
    "DATABASE_URL",
    "STRONGROOM_DATABASE_URL",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_ENCRYPTION_OLD_KEYS",
    "BACKUP_COMPRESSION",
    "BACKUP_COMPRESSION_LEVEL",
    "BACKUP_COMPRESSION_THREADS",
    "BACKUP_PG_DUMP_TIMEOUT",
    "BACKUP_LOCATION_TIMEOUT",
    "BACKUP_CHECK_TIMEOUT",
    "BACKUP_PG_BINDIR",
    "BACKUP_RESTORE_JOBS",
    "BACKUP_RESTORE_SCRATCH_DIR",
    "BACKUP_MAX_AGE_HOURS",
    "BACKUP_NOTIFY_WEBHOOK_URL",
    "STRONGROOM_CATALOG_URL",
    "STRONGROOM_LOCATIONS",
    "STRONGROOM_REQUIRED_LOCATIONS",
    # Celery: schedule, queue, priority, retries, time limits (strongroom.schedule)
    "BACKUP_SCHEDULE_HOUR",
    "BACKUP_SCHEDULE_MINUTE",
    "BACKUP_QUEUE",
    "BACKUP_TASK_PRIORITY",
    "BACKUP_QUEUE_MAX_PRIORITY",
    "BACKUP_TASK_MAX_RETRIES",
    "BACKUP_TASK_RETRY_BACKOFF",
    "BACKUP_TASK_RETRY_BACKOFF_MAX",
    "BACKUP_TASK_SOFT_TIME_LIMIT",
    "BACKUP_TASK_TIME_LIMIT",
    "BACKUP_VERIFY_AFTER_BACKUP",
    "BACKUP_PRUNE_HOUR",
    "BACKUP_HEAL_HOUR",
    "CELERY_BROKER_URL",
)
#: General names whose values are secret (the backends mark their own).
GENERAL_SECRETS = ("BACKUP_ENCRYPTION_KEY", "BACKUP_ENCRYPTION_OLD_KEYS")
#: The variable naming a config file when ``--config`` is not given.
CONFIG_FILE_VAR = "STRONGROOM_CONFIG"


def setting_names() -> tuple[str, ...]:
    """Every known setting: the general ones, then each registered location's."""
    from strongroom.core.storage import setting_names as location_settings

    return (*GENERAL_SETTINGS, *location_settings())


def secret_names() -> frozenset[str]:
    """Settings whose values are secret: keys and the backends' credentials."""
    from strongroom.core.storage import secret_setting_names

    return frozenset((*GENERAL_SECRETS, *secret_setting_names()))


@dataclass(frozen=True)
class LocationSpec:
    """One configured storage location: a backend kind plus its options."""

    name: str
    kind: str
    required: bool
    retention_days: int
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Why this location cannot be used (missing settings); empty when configured.
    problem: str = ""


@dataclass(frozen=True)
class TaskSettings:
    """How Celery runs the backup: schedule, queue, priority, retries and time limits.

    ``priority`` is the seed's scale, where 10 is the highest (RabbitMQ's meaning, on a queue
    declared with ``x-max-priority`` = ``max_priority``); :mod:`strongroom.schedule` translates
    it for Redis, whose order is inverted. Time limits default to the pg_dump timeout plus a
    margin, so pg_dump's own timeout fires (and is recorded) before Celery's.
    """

    schedule_hour: int = 2
    schedule_minute: int = 0
    queue: str = "backups"
    priority: int = 10
    max_priority: int = 10
    max_retries: int = 3
    retry_backoff: float = 60.0
    retry_backoff_max: float = 1800.0
    soft_time_limit: float = 3600.0 + 900.0
    time_limit: float = 3600.0 + 900.0 + 300.0
    verify_after: bool = True
    broker_url: str | None = None
    #: Hours (UTC) of the daily prune and heal runs; ``None`` leaves them out of the schedule.
    prune_hour: int | None = 4
    heal_hour: int | None = 5


#: Seconds between pg_dump's deadline and the task's soft limit: the upload, manifests and row
#: counts finish in that time; between the soft and the hard limit the run records FAILED.
SOFT_LIMIT_MARGIN = 900.0
HARD_LIMIT_MARGIN = 300.0


@dataclass(frozen=True)
class Config:
    """Everything a backup, verify or restore needs to know."""

    database_url: str
    encryption_key: str | None
    old_encryption_keys: tuple[str, ...]
    locations: tuple[LocationSpec, ...]
    codec: str = "zstd"
    codec_level: int | None = None
    codec_threads: int = -1
    pg_dump_timeout: float = 3600.0
    #: Seconds a location may stay silent in a backup (its pre-stream steps, or accepting
    #: nothing mid-stream) before it is dropped (optional) or fails the run (required).
    location_timeout: float = 60.0
    #: Seconds ``strongroom check`` waits for all location probes together.
    check_timeout: float = 15.0
    pg_bindir: str | None = None
    catalog_url: str | None = None
    restore_jobs: int = 2
    #: Where restore keeps the verified archive for pg_restore -j (default: the system temp dir).
    restore_scratch_dir: str | None = None
    stale_after_hours: float = 26.0
    webhook_url: str | None = None
    lock_timeout: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    tasks: TaskSettings = field(default_factory=TaskSettings)

    def location(self, name: str) -> LocationSpec:
        """The location called ``name``; a ``ConfigError`` lists the configured ones."""
        for spec in self.locations:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.locations)
        raise ConfigError(f"no location named {name!r} is configured (configured: {known})")


def _get(source: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = source.get(name, default)
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return default
    return value


def _int(source: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = _get(source, name)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _float(source: Mapping[str, Any], name: str, default: float) -> float:
    value = _get(source, name)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _timeout(source: Mapping[str, Any], name: str, default: float) -> float:
    """A wait in seconds: finite and above zero, or every network wait could be unbounded."""
    value = _float(source, name, default)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a number of seconds above 0, got {value!r}")
    return value


def _names(source: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = _get(source, name)
    if value is None:
        return default
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def _location_specs(source: Mapping[str, Any]) -> tuple[LocationSpec, ...]:
    """Each named location as its registered backend module reads it from ``source``."""
    from strongroom.core.storage import location_type, location_types

    names = _names(source, "STRONGROOM_LOCATIONS", DEFAULT_LOCATIONS)
    required = set(_names(source, "STRONGROOM_REQUIRED_LOCATIONS", ("local",)))
    specs = []
    for name in names:
        kind = location_type(name)  # raises with the registered names
        read = kind.read(source)
        spec = LocationSpec(
            name, kind.kind, name in required, read.retention_days, read.options, read.problem
        )
        specs.append(spec)
    if not specs:
        known = ", ".join(t.name for t in location_types())
        raise ConfigError(f"STRONGROOM_LOCATIONS is empty: name at least one of {known}")
    return tuple(specs)


def load_config(source: Mapping[str, Any]) -> Config:
    """Build a ``Config`` from ``source`` (``os.environ`` or Django settings over it).

    Only shapes are checked here; keys are parsed by the keyring and locations probed by their
    backends, so each problem is reported by the component that understands it.
    """
    old = _get(source, "BACKUP_ENCRYPTION_OLD_KEYS")
    old_keys = tuple(k.strip() for k in old.split(",") if k.strip()) if isinstance(old, str) else ()
    if old is not None and not isinstance(old, str):
        old_keys = tuple(str(k) for k in old)
    return Config(
        database_url=str(_get(source, "DATABASE_URL", "") or ""),
        encryption_key=_get(source, "BACKUP_ENCRYPTION_KEY"),
        old_encryption_keys=old_keys,
        locations=_location_specs(source),
        codec=str(_get(source, "BACKUP_COMPRESSION", "zstd")),
        codec_level=_int(source, "BACKUP_COMPRESSION_LEVEL", None),
        codec_threads=_int(source, "BACKUP_COMPRESSION_THREADS", -1) or -1,
        pg_dump_timeout=_float(source, "BACKUP_PG_DUMP_TIMEOUT", 3600.0),
        location_timeout=_timeout(source, "BACKUP_LOCATION_TIMEOUT", 60.0),
        check_timeout=_timeout(source, "BACKUP_CHECK_TIMEOUT", 15.0),
        pg_bindir=_get(source, "BACKUP_PG_BINDIR"),
        catalog_url=_get(source, "STRONGROOM_CATALOG_URL"),
        restore_jobs=_int(source, "BACKUP_RESTORE_JOBS", 2) or 2,
        restore_scratch_dir=_get(source, "BACKUP_RESTORE_SCRATCH_DIR") or None,
        stale_after_hours=_float(source, "BACKUP_MAX_AGE_HOURS", 26.0),
        webhook_url=_get(source, "BACKUP_NOTIFY_WEBHOOK_URL"),
        tasks=load_task_settings(source),
    )


def _bool(source: Mapping[str, Any], name: str, default: bool) -> bool:
    value = _get(source, name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _bounded(source: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = _int(source, name, default)
    assert value is not None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def load_task_settings(source: Mapping[str, Any]) -> TaskSettings:
    """The Celery side of the configuration, from the same names as everything else."""
    dump_timeout = _float(source, "BACKUP_PG_DUMP_TIMEOUT", 3600.0)
    soft = _float(source, "BACKUP_TASK_SOFT_TIME_LIMIT", dump_timeout + SOFT_LIMIT_MARGIN)
    hard = _float(source, "BACKUP_TASK_TIME_LIMIT", soft + HARD_LIMIT_MARGIN)
    if soft <= dump_timeout:
        raise ConfigError(
            f"BACKUP_TASK_SOFT_TIME_LIMIT ({soft:g} s) must exceed BACKUP_PG_DUMP_TIMEOUT "
            f"({dump_timeout:g} s) so a slow dump is stopped and recorded by pg_dump's own timeout"
        )
    if hard <= soft:
        raise ConfigError(
            f"BACKUP_TASK_TIME_LIMIT ({hard:g} s) must exceed BACKUP_TASK_SOFT_TIME_LIMIT "
            f"({soft:g} s)"
        )
    max_priority = _bounded(source, "BACKUP_QUEUE_MAX_PRIORITY", 10, 1, 255)
    queue = str(_get(source, "BACKUP_QUEUE", "backups"))
    backoff = _float(source, "BACKUP_TASK_RETRY_BACKOFF", 60.0)
    backoff_max = _float(source, "BACKUP_TASK_RETRY_BACKOFF_MAX", 1800.0)
    if backoff < 0 or backoff_max < backoff:
        raise ConfigError(
            "BACKUP_TASK_RETRY_BACKOFF must be >= 0 and BACKUP_TASK_RETRY_BACKOFF_MAX >= it"
        )
    broker = _get(source, "CELERY_BROKER_URL")
    return TaskSettings(
        schedule_hour=_bounded(source, "BACKUP_SCHEDULE_HOUR", 2, 0, 23),
        schedule_minute=_bounded(source, "BACKUP_SCHEDULE_MINUTE", 0, 0, 59),
        queue=queue,
        priority=_bounded(source, "BACKUP_TASK_PRIORITY", 10, 0, max_priority),
        max_priority=max_priority,
        max_retries=_bounded(source, "BACKUP_TASK_MAX_RETRIES", 3, 0, 100),
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        soft_time_limit=soft,
        time_limit=hard,
        verify_after=_bool(source, "BACKUP_VERIFY_AFTER_BACKUP", True),
        broker_url=str(broker) if broker is not None else None,
        prune_hour=_hour_or_off(source, "BACKUP_PRUNE_HOUR", 4),
        heal_hour=_hour_or_off(source, "BACKUP_HEAL_HOUR", 5),
    )


def _hour_or_off(source: Mapping[str, Any], name: str, default: int) -> int | None:
    """An hour 0-23, or ``off`` to leave a maintenance task out of the beat schedule."""
    value = _get(source, name)
    if isinstance(value, str) and value.strip().lower() in ("off", "none", "false", ""):
        return None
    return _bounded(source, name, default, 0, 23)


def environment(config_file: str | None = None) -> ChainMap[str, Any]:
    """The environment over the config file (``config_file``, else ``$STRONGROOM_CONFIG``).

    A blank variable counts as unset, as everywhere else, so it does not hide the file's value.
    """
    env = {name: value for name, value in os.environ.items() if value.strip()}
    path = config_file or env.get(CONFIG_FILE_VAR)
    if not path:
        return ChainMap(env)
    from strongroom.configfile import read_config_file

    return ChainMap(env, read_config_file(path.strip(), setting_names(), secret_names()))


def config_from_env(config_file: str | None = None) -> Config:
    """The standalone configuration: environment variables over the config file, if any."""
    return load_config(environment(config_file))
