"""Configuration: one typed ``Config`` built from any mapping of the seed's setting names.

The same names work as environment variables (standalone CLI, ``celery -A strongroom``), as
``NAME=value`` lines of a config file under them (:mod:`strongroom.configfile`), and as Django
settings (see :mod:`strongroom.conf`, which layers ``settings`` over both). This
module imports no Django so the CLI can run in a disaster, when the application is gone.

Secrets (keys, S3 credentials, database passwords) are kept as given and never rendered by
``Config.describe()``.
"""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from strongroom.errors import ConfigError
from strongroom.numbers import MAX_SECONDS, Number, seconds, whole

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
    "BACKUP_COMPRESSION_MIN_LEVEL",
    "BACKUP_COMPRESSION_ADAPT",
    "BACKUP_PG_DUMP_TIMEOUT",
    "BACKUP_LOCATION_TIMEOUT",
    "BACKUP_CHECK_TIMEOUT",
    "BACKUP_PG_BINDIR",
    "BACKUP_RESTORE_JOBS",
    "BACKUP_RESTORE_SCRATCH_DIR",
    "BACKUP_RESTORE_LOCK_TIMEOUT",
    "BACKUP_MAX_AGE_HOURS",
    "BACKUP_NOTIFY_WEBHOOK_URL",
    # restore drills (strongroom.services.drill)
    "BACKUP_DRILL_TARGET_URL",
    "BACKUP_DRILL_MAX_AGE_DAYS",
    "BACKUP_DRILL_SCRATCH_DIR",
    "BACKUP_DRILL_SERVER_TIMEOUT",
    "BACKUP_DRILL_OS_USER",
    "BACKUP_DRILL_AMCHECK_INDEXES",
    "STRONGROOM_CATALOG_URL",
    "STRONGROOM_LOCATIONS",
    "STRONGROOM_REQUIRED_LOCATIONS",
    "STRONGROOM_METRICS_TOKEN",
    # the tenant model of tenant backups (strongroom.core.postgres.tenants)
    "STRONGROOM_TENANT_TABLE",
    "STRONGROOM_TENANT_COLUMN",
    "STRONGROOM_TENANT_SETTING",
    "STRONGROOM_TENANT_ROLE",
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
    "BACKUP_TENANT_SCHEDULE_DAY",
    "BACKUP_TENANT_SCHEDULE_HOUR",
    "BACKUP_TENANT_TASK_PRIORITY",
    "BACKUP_DRILL_SCHEDULE_DAY",
    "BACKUP_DRILL_SCHEDULE_HOUR",
    "BACKUP_DRILL_TASK_PRIORITY",
    "CELERY_BROKER_URL",
    # physical base backups and point-in-time recovery (strongroom.services.base_backup)
    "BACKUP_WAL_ARCHIVING",
    "BACKUP_BASE_BACKUP_HOUR",
    "BACKUP_BASE_BACKUP_TIMEOUT",
    "BACKUP_BASE_BACKUP_COMPRESS_ON",
    "BACKUP_WAL_CONFIRM_TIMEOUT",
    # continuous WAL archiving (strongroom.services.wal_push, wal_fetch, wal_verify)
    "STRONGROOM_PGDATA",
    "BACKUP_WAL_SPOOL_DIR",
    "BACKUP_WAL_PUSH_PARALLEL",
    "BACKUP_WAL_PUSH_AHEAD",
    "BACKUP_WAL_ASYNC",
    "BACKUP_WAL_ASYNC_IDLE_SECONDS",
    "BACKUP_WAL_ASYNC_WAIT_SECONDS",
    "BACKUP_WAL_COMPRESSION_LEVEL",
    "BACKUP_WAL_OPTIONAL_TIMEOUT",
    "BACKUP_WAL_SKIP_DOWN_SECONDS",
    "BACKUP_WAL_PREFETCH",
    "BACKUP_WAL_FETCH_RETRIES",
    "BACKUP_WAL_MAX_AGE_SECONDS",
)
#: General names whose values are secret (the backends mark their own).
GENERAL_SECRETS = (
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_ENCRYPTION_OLD_KEYS",
    "STRONGROOM_METRICS_TOKEN",
)
#: The variable naming a config file when ``--config`` is not given.
CONFIG_FILE_VAR = "STRONGROOM_CONFIG"

_HOUR = whole(0, 23, "an hour of the day (0-23)")
_BACKOFF = Number("a number of seconds", low=0, high=MAX_SECONDS)
#: Every general numeric setting and the values it allows (the backends declare their own).
#: A new one is one line here; :func:`_number` refuses a name missing from this table.
NUMBERS: dict[str, Number] = {
    "BACKUP_COMPRESSION_LEVEL": Number("an integer", whole=True),  # range per codec: codecs.py
    "BACKUP_COMPRESSION_THREADS": whole(-1, 1024),  # -1 all cores, 0 the calling thread
    "BACKUP_COMPRESSION_MIN_LEVEL": Number("an integer", whole=True),  # adaptive zstd's floor
    "BACKUP_PG_DUMP_TIMEOUT": seconds(),
    "BACKUP_RESTORE_JOBS": whole(1, 64),
    "BACKUP_MAX_AGE_HOURS": Number("a number of hours", above=0, high=MAX_SECONDS / 3600),
    "BACKUP_SCHEDULE_HOUR": _HOUR,
    "BACKUP_SCHEDULE_MINUTE": whole(0, 59),
    "BACKUP_QUEUE_MAX_PRIORITY": whole(1, 255),
    "BACKUP_TASK_PRIORITY": whole(0, 255),  # and at most BACKUP_QUEUE_MAX_PRIORITY
    "BACKUP_TASK_MAX_RETRIES": whole(0, 100),
    "BACKUP_TASK_RETRY_BACKOFF": _BACKOFF,
    "BACKUP_TASK_RETRY_BACKOFF_MAX": _BACKOFF,
    "BACKUP_TASK_SOFT_TIME_LIMIT": seconds(),
    "BACKUP_TASK_TIME_LIMIT": seconds(),
    "BACKUP_PRUNE_HOUR": _HOUR,  # or off
    "BACKUP_HEAL_HOUR": _HOUR,  # or off
    "BACKUP_TENANT_SCHEDULE_HOUR": _HOUR,  # or off
    "BACKUP_TENANT_TASK_PRIORITY": whole(0, 255),  # and at most BACKUP_QUEUE_MAX_PRIORITY
    "BACKUP_RESTORE_LOCK_TIMEOUT": _BACKOFF,  # 0: do not wait for other sessions at all
    "BACKUP_LOCATION_TIMEOUT": seconds(high=24 * 3600),
    "BACKUP_CHECK_TIMEOUT": seconds(high=24 * 3600),
    "BACKUP_DRILL_MAX_AGE_DAYS": Number("a number of days", above=0, high=36600),
    "BACKUP_DRILL_SCHEDULE_HOUR": _HOUR,  # or off
    "BACKUP_DRILL_SERVER_TIMEOUT": seconds(high=24 * 3600),
    "BACKUP_DRILL_AMCHECK_INDEXES": whole(0, 100000),
    "BACKUP_DRILL_TASK_PRIORITY": whole(0, 255),  # and at most BACKUP_QUEUE_MAX_PRIORITY
    "BACKUP_BASE_BACKUP_HOUR": _HOUR,  # or off; only with BACKUP_WAL_ARCHIVING on
    "BACKUP_BASE_BACKUP_TIMEOUT": seconds(),
    "BACKUP_WAL_CONFIRM_TIMEOUT": seconds(high=24 * 3600),
    "BACKUP_WAL_PUSH_PARALLEL": whole(1, 64),
    "BACKUP_WAL_PUSH_AHEAD": whole(0, 1024),
    "BACKUP_WAL_ASYNC_IDLE_SECONDS": seconds(high=24 * 3600),
    "BACKUP_WAL_ASYNC_WAIT_SECONDS": seconds(high=24 * 3600),
    "BACKUP_WAL_COMPRESSION_LEVEL": whole(1, 22, "a compression level"),  # gzip: 1-9
    "BACKUP_WAL_OPTIONAL_TIMEOUT": seconds(high=24 * 3600),
    "BACKUP_WAL_SKIP_DOWN_SECONDS": _BACKOFF,
    "BACKUP_WAL_PREFETCH": whole(0, 64),
    "BACKUP_WAL_FETCH_RETRIES": whole(0, 100),
    "BACKUP_WAL_MAX_AGE_SECONDS": seconds(),
}


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
    #: Days a tenant backup's copy is kept (``None``: ``retention_days``).
    tenant_retention_days: int | None = None


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
    #: The weekly backup of every tenant: crontab day of week, hour (``None``: off), priority
    #: (below the daily full backup's, so a Sunday full backup is never delayed by it).
    tenant_day: str = "sun"
    tenant_hour: int | None = 3
    tenant_priority: int = 8
    #: The weekly restore drill: crontab day of week, hour (``None``: off), priority (below
    #: every backup's: a drill restores, it must never delay a dump).
    drill_day: str = "sat"
    drill_hour: int | None = 6
    drill_priority: int = 5
    #: The daily base backup's hour (UTC), or ``None``: scheduled only when WAL archiving is
    #: on (``BACKUP_WAL_ARCHIVING``), since a base backup without archived WAL restores nothing.
    base_backup_hour: int | None = None
    #: The longest a base backup's own limits let it run (``BACKUP_BASE_BACKUP_TIMEOUT`` plus
    #: ``BACKUP_WAL_CONFIRM_TIMEOUT``): its task's Celery limits come after, as the dump's do.
    base_backup_seconds: float = 3600.0 + 60.0


#: Seconds between pg_dump's deadline and the task's soft limit: the upload, manifests and row
#: counts finish in that time; between the soft and the hard limit the run records FAILED.
SOFT_LIMIT_MARGIN = 900.0
HARD_LIMIT_MARGIN = 300.0


#: zstd's level for WAL files unless ``BACKUP_WAL_COMPRESSION_LEVEL`` says otherwise: wal-push
#: runs while PostgreSQL waits and is CPU-bound under a write burst, and a segment compresses
#: to within a few percent at 1 of its size at 3 for a third less CPU (docs/benchmarks.md).
WAL_ZSTD_LEVEL = 1


@dataclass(frozen=True)
class WalSettings:
    """Continuous WAL archiving: where its state lives and how hard it pushes and fetches."""

    #: The cluster's data directory, where it is readable (``check``, ``wal-push`` outside it).
    pgdata: str | None = None
    #: Push markers and prefetched segments: outside ``pg_wal``, writable by the server's user.
    spool_dir: str | None = None
    #: Segments one ``wal-push`` uploads at once (the asked one and ``.ready`` ones ahead).
    push_parallel: int = 4
    #: ``.ready`` segments one ``wal-push`` takes on ahead of the archiver's calls (0: none).
    #: Each pushing call pays ~0.5 s of CPU before its first upload (imports, two S3 clients),
    #: so a backlog is cheaper in fewer, longer calls; memory is bounded by ``push_parallel``.
    push_ahead: int = 32
    #: A background uploader (``wal-uploader``, started by ``wal-push``) pushes ``.ready``
    #: files as they appear, in one long-lived process, and ``wal-push`` waits for its record.
    async_push: bool = False
    #: Seconds the uploader stays after its last push (its start-up is paid once per stay).
    async_idle_seconds: float = 60.0
    #: Seconds ``wal-push`` waits for the uploader's record before pushing the file itself.
    async_wait_seconds: float = 30.0
    #: Seconds an optional location may take for one segment before it is left to ``heal``.
    optional_timeout: float = 10.0
    #: Seconds an optional location that failed is skipped by later pushes (0: never skip).
    skip_down_seconds: float = 60.0
    #: Segments ``wal-fetch`` fetches ahead of recovery into the spool.
    prefetch: int = 4
    #: Extra rounds over the locations before ``wal-fetch`` gives up on unreachable storage.
    fetch_retries: int = 3
    #: ``check`` fails when the last archived segment is older while WAL waits.
    max_age_seconds: float = 3600.0
    #: The codec's level for WAL files (``None``: :data:`WAL_ZSTD_LEVEL` for zstd, else the
    #: backup's ``BACKUP_COMPRESSION_LEVEL``; no compression has no level); each file's
    #: manifest records the one used.
    compression_level: int | None = None


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
    #: Adaptive zstd's floor (``None``: level 1); ``codec_level`` is then its ceiling.
    codec_min_level: int | None = None
    #: Whether the level adapts to the CPU left over (``None``: yes for zstd).
    codec_adapt: bool | None = None
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
    #: Seconds ``restore --replace`` waits for other sessions to leave the target before the swap.
    restore_lock_timeout: float = 30.0
    stale_after_hours: float = 26.0
    webhook_url: str | None = None
    #: The server restore drills restore into (``None``: the backed-up server, DATABASE_URL).
    drill_target_url: str | None = None
    #: ``check`` fails when restorable backups older than this exist and no drill passed within.
    drill_max_age_days: float = 8.0
    #: Where a base backup drill restores its throwaway data directory (None: the temp dir).
    drill_scratch_dir: str | None = None
    #: How long a base drill's server may take to start, replay and be promoted.
    drill_server_timeout: float = 600.0
    #: The OS user a base drill's server runs as when strongroom runs as root.
    drill_os_user: str = "postgres"
    #: How many of the largest B-tree indexes a base drill checks with amcheck (0: none).
    drill_amcheck_indexes: int = 10
    lock_timeout: float = 0.0
    tenant_table: str = "tenants"
    tenant_column: str = "tenant_id"
    tenant_setting: str = "app.current_tenant"
    #: The role tenant exports read as; ``None``: each table's owner (``SET ROLE``).
    tenant_role: str | None = None
    #: The bearer token that lets a scraper read ``strongroom.views.metrics`` (None: staff only).
    metrics_token: str | None = field(default=None, repr=False)
    #: Seconds pg_basebackup may run, its wait for the backup's WAL to be archived included.
    base_backup_timeout: float = 3600.0
    #: Where a zstd base backup is compressed: ``server`` (PostgreSQL 15+, else the client) or
    #: ``client`` (spares the database server's CPU; the whole tar crosses the network).
    base_backup_compress_on: str = "server"
    #: Seconds a base backup waits for its WAL segments' manifests in every required location.
    wal_confirm_timeout: float = 60.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    tasks: TaskSettings = field(default_factory=TaskSettings)
    wal: WalSettings = field(default_factory=WalSettings)

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


def _number(source: Mapping[str, Any], name: str, default: Any) -> Any:
    """``name`` parsed by its entry in :data:`NUMBERS`, or ``default`` when unset or blank."""
    value = _get(source, name)
    return default if value is None else NUMBERS[name](name, value)


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
            name,
            kind.kind,
            name in required,
            read.retention_days,
            read.options,
            read.problem,
            read.tenant_retention_days,
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
        codec_level=_number(source, "BACKUP_COMPRESSION_LEVEL", None),
        codec_threads=_number(source, "BACKUP_COMPRESSION_THREADS", -1),
        codec_min_level=_number(source, "BACKUP_COMPRESSION_MIN_LEVEL", None),
        codec_adapt=_optional_bool(source, "BACKUP_COMPRESSION_ADAPT"),
        pg_dump_timeout=_number(source, "BACKUP_PG_DUMP_TIMEOUT", 3600.0),
        location_timeout=_number(source, "BACKUP_LOCATION_TIMEOUT", 60.0),
        check_timeout=_number(source, "BACKUP_CHECK_TIMEOUT", 15.0),
        pg_bindir=_get(source, "BACKUP_PG_BINDIR"),
        catalog_url=_get(source, "STRONGROOM_CATALOG_URL"),
        restore_jobs=_number(source, "BACKUP_RESTORE_JOBS", 2),
        restore_scratch_dir=_get(source, "BACKUP_RESTORE_SCRATCH_DIR") or None,
        restore_lock_timeout=_number(source, "BACKUP_RESTORE_LOCK_TIMEOUT", 30.0),
        stale_after_hours=_number(source, "BACKUP_MAX_AGE_HOURS", 26.0),
        webhook_url=_get(source, "BACKUP_NOTIFY_WEBHOOK_URL"),
        drill_target_url=_get(source, "BACKUP_DRILL_TARGET_URL") or None,
        drill_max_age_days=_number(source, "BACKUP_DRILL_MAX_AGE_DAYS", 8.0),
        drill_scratch_dir=_get(source, "BACKUP_DRILL_SCRATCH_DIR") or None,
        drill_server_timeout=_number(source, "BACKUP_DRILL_SERVER_TIMEOUT", 600.0),
        drill_os_user=str(_get(source, "BACKUP_DRILL_OS_USER") or "postgres"),
        drill_amcheck_indexes=_number(source, "BACKUP_DRILL_AMCHECK_INDEXES", 10),
        tenant_table=str(_get(source, "STRONGROOM_TENANT_TABLE") or "tenants"),
        tenant_column=str(_get(source, "STRONGROOM_TENANT_COLUMN") or "tenant_id"),
        tenant_setting=str(_get(source, "STRONGROOM_TENANT_SETTING") or "app.current_tenant"),
        tenant_role=_get(source, "STRONGROOM_TENANT_ROLE") or None,
        metrics_token=_get(source, "STRONGROOM_METRICS_TOKEN") or None,
        base_backup_timeout=_number(source, "BACKUP_BASE_BACKUP_TIMEOUT", 3600.0),
        base_backup_compress_on=_compress_on(source),
        wal_confirm_timeout=_number(source, "BACKUP_WAL_CONFIRM_TIMEOUT", 60.0),
        tasks=load_task_settings(source),
        wal=load_wal_settings(source),
    )


def load_wal_settings(source: Mapping[str, Any]) -> WalSettings:
    """The WAL archiving settings (all optional: archiving works with the defaults)."""
    defaults = WalSettings()
    return WalSettings(
        pgdata=_get(source, "STRONGROOM_PGDATA") or None,
        spool_dir=_get(source, "BACKUP_WAL_SPOOL_DIR") or None,
        push_parallel=_number(source, "BACKUP_WAL_PUSH_PARALLEL", defaults.push_parallel),
        push_ahead=_number(source, "BACKUP_WAL_PUSH_AHEAD", defaults.push_ahead),
        async_push=_bool(source, "BACKUP_WAL_ASYNC", defaults.async_push),
        async_idle_seconds=_number(
            source, "BACKUP_WAL_ASYNC_IDLE_SECONDS", defaults.async_idle_seconds
        ),
        async_wait_seconds=_number(
            source, "BACKUP_WAL_ASYNC_WAIT_SECONDS", defaults.async_wait_seconds
        ),
        optional_timeout=_number(source, "BACKUP_WAL_OPTIONAL_TIMEOUT", defaults.optional_timeout),
        skip_down_seconds=_number(
            source, "BACKUP_WAL_SKIP_DOWN_SECONDS", defaults.skip_down_seconds
        ),
        prefetch=_number(source, "BACKUP_WAL_PREFETCH", defaults.prefetch),
        fetch_retries=_number(source, "BACKUP_WAL_FETCH_RETRIES", defaults.fetch_retries),
        max_age_seconds=_number(source, "BACKUP_WAL_MAX_AGE_SECONDS", defaults.max_age_seconds),
        compression_level=_wal_level(source),
    )


def _compress_on(source: Mapping[str, Any]) -> str:
    value = str(_get(source, "BACKUP_BASE_BACKUP_COMPRESS_ON") or "server").strip().lower()
    if value not in ("server", "client"):
        raise ConfigError(
            f"BACKUP_BASE_BACKUP_COMPRESS_ON {value!r} is invalid; use server or client"
        )
    return value


def _optional_bool(source: Mapping[str, Any], name: str) -> bool | None:
    """``None`` when unset (or empty): the component picks its default."""
    value = _get(source, name)
    if value is None or value == "":
        return None
    return _bool(source, name, False)


def _wal_level(source: Mapping[str, Any]) -> int | None:
    """``BACKUP_WAL_COMPRESSION_LEVEL`` (zstd 1-22, gzip 1-9, ignored with no compression).

    Checked here, not when the first segment is pushed: a bad level found by ``archive_command``
    would hold WAL on the server until someone reads its log.
    """
    level: int | None = _number(source, "BACKUP_WAL_COMPRESSION_LEVEL", None)
    if level is None:
        return None
    from strongroom.core.codecs import CODECS

    codec = str(_get(source, "BACKUP_COMPRESSION", "zstd")).lower()
    spec = CODECS.get(codec)  # an unknown codec is the runtime's line (BACKUP_COMPRESSION)
    if spec is not None and len(spec.levels) > 1 and level not in spec.levels:
        raise ConfigError(
            f"BACKUP_WAL_COMPRESSION_LEVEL {level} is out of range for {codec}; use "
            f"{spec.levels.start}-{spec.levels.stop - 1}"
        )
    return level


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


def load_task_settings(source: Mapping[str, Any]) -> TaskSettings:
    """The Celery side of the configuration, from the same names as everything else."""
    soft, hard = _time_limits(source)
    max_priority = _number(source, "BACKUP_QUEUE_MAX_PRIORITY", 10)
    backoff, backoff_max = _backoff(source)
    broker = _get(source, "CELERY_BROKER_URL")
    return TaskSettings(
        schedule_hour=_number(source, "BACKUP_SCHEDULE_HOUR", 2),
        schedule_minute=_number(source, "BACKUP_SCHEDULE_MINUTE", 0),
        queue=str(_get(source, "BACKUP_QUEUE", "backups")),
        priority=_priority(source, max_priority),
        max_priority=max_priority,
        max_retries=_number(source, "BACKUP_TASK_MAX_RETRIES", 3),
        retry_backoff=backoff,
        retry_backoff_max=backoff_max,
        soft_time_limit=soft,
        time_limit=hard,
        verify_after=_bool(source, "BACKUP_VERIFY_AFTER_BACKUP", True),
        broker_url=str(broker) if broker is not None else None,
        prune_hour=_hour_or_off(source, "BACKUP_PRUNE_HOUR", 4),
        heal_hour=_hour_or_off(source, "BACKUP_HEAL_HOUR", 5),
        tenant_day=str(_get(source, "BACKUP_TENANT_SCHEDULE_DAY") or "sun"),
        tenant_hour=_hour_or_off(source, "BACKUP_TENANT_SCHEDULE_HOUR", 3),
        tenant_priority=_priority(source, max_priority, "BACKUP_TENANT_TASK_PRIORITY", 8),
        drill_day=str(_get(source, "BACKUP_DRILL_SCHEDULE_DAY") or "sat"),
        drill_hour=_hour_or_off(source, "BACKUP_DRILL_SCHEDULE_HOUR", 6),
        drill_priority=_priority(source, max_priority, "BACKUP_DRILL_TASK_PRIORITY", 5),
        base_backup_hour=_base_backup_hour(source),
        base_backup_seconds=_number(source, "BACKUP_BASE_BACKUP_TIMEOUT", 3600.0)
        + _number(source, "BACKUP_WAL_CONFIRM_TIMEOUT", 60.0),
    )


def _base_backup_hour(source: Mapping[str, Any]) -> int | None:
    """01:00 by default once WAL archiving is on; off (``None``) otherwise, whatever the hour."""
    hour = _hour_or_off(source, "BACKUP_BASE_BACKUP_HOUR", 1)  # checked even while unused
    return hour if _bool(source, "BACKUP_WAL_ARCHIVING", False) else None


def _time_limits(source: Mapping[str, Any]) -> tuple[float, float]:
    """Celery's soft and hard limits, each after the one before; a default names its source."""
    dump_timeout = _number(source, "BACKUP_PG_DUMP_TIMEOUT", 3600.0)
    soft = _number(source, "BACKUP_TASK_SOFT_TIME_LIMIT", None)
    soft_text = f"({soft:g} s)" if soft is not None else ""
    if soft is None:
        soft = dump_timeout + SOFT_LIMIT_MARGIN
        soft_text = f"({soft:g} s: BACKUP_PG_DUMP_TIMEOUT + {SOFT_LIMIT_MARGIN:g} s by default)"
    hard = _number(source, "BACKUP_TASK_TIME_LIMIT", soft + HARD_LIMIT_MARGIN)
    if soft <= dump_timeout:
        raise ConfigError(
            f"BACKUP_TASK_SOFT_TIME_LIMIT ({soft:g} s) must exceed BACKUP_PG_DUMP_TIMEOUT "
            f"({dump_timeout:g} s) so a slow dump is stopped and recorded by pg_dump's own timeout"
        )
    if hard <= soft:
        raise ConfigError(
            f"BACKUP_TASK_TIME_LIMIT ({hard:g} s) must exceed "
            f"BACKUP_TASK_SOFT_TIME_LIMIT {soft_text}"
        )
    return float(soft), float(hard)


def _backoff(source: Mapping[str, Any]) -> tuple[float, float]:
    """The first retry's delay and the cap on later ones (by default at least the first)."""
    backoff = _number(source, "BACKUP_TASK_RETRY_BACKOFF", None)
    shown = f"{backoff:g} s" if backoff is not None else "60 s by default"
    backoff = 60.0 if backoff is None else backoff
    backoff_max = _number(source, "BACKUP_TASK_RETRY_BACKOFF_MAX", max(1800.0, backoff))
    if backoff_max < backoff:
        raise ConfigError(
            f"BACKUP_TASK_RETRY_BACKOFF_MAX ({backoff_max:g} s) must be at least "
            f"BACKUP_TASK_RETRY_BACKOFF ({shown})"
        )
    return backoff, backoff_max


def _priority(
    source: Mapping[str, Any],
    max_priority: int,
    name: str = "BACKUP_TASK_PRIORITY",
    default: int = 10,
) -> int:
    """A task's priority, which the queue's maximum bounds."""
    priority: int = _number(source, name, min(default, max_priority))
    if priority > max_priority:
        raise ConfigError(
            f"{name} must be at most BACKUP_QUEUE_MAX_PRIORITY ({max_priority}), got {priority}"
        )
    return priority


def _hour_or_off(source: Mapping[str, Any], name: str, default: int) -> int | None:
    """An hour 0-23, or ``off`` to leave a maintenance task out of the beat schedule."""
    value = _get(source, name)
    if isinstance(value, str) and value.strip().lower() in ("off", "none", "false", ""):
        return None
    hour: int = _number(source, name, default)
    return hour


def environment(config_file: str | None = None, *, check_names: bool = True) -> ChainMap[str, Any]:
    """The environment over the config file (``config_file``, else ``$STRONGROOM_CONFIG``).

    A blank variable counts as unset, as everywhere else, so it does not hide the file's value.
    ``check_names=False`` skips the check of the file's names (unknown ones, secrets in a file
    others may read), which needs every backend's settings: for :func:`wal_settings_from_env`.
    """
    env = {name: value for name, value in os.environ.items() if value.strip()}
    path = config_file or env.get(CONFIG_FILE_VAR)
    if not path:
        return ChainMap(env)
    from strongroom.configfile import read_config_file

    if not check_names:
        return ChainMap(env, read_config_file(path.strip(), None, ()))
    return ChainMap(env, read_config_file(path.strip(), setting_names(), secret_names()))


def wal_settings_from_env(config_file: str | None = None) -> WalSettings:
    """Only the WAL settings, from the environment over the config file: ``wal-push``'s fast
    path (a file already pushed ahead) needs nothing else.

    The file's lines are parsed but its names are not checked against every backend's
    settings (that would import every storage backend, a quarter of the call): a call that
    pushes reads the whole configuration with :func:`config_from_env` and checks it, and only
    such a call can have made the spool record the fast path answers from.
    """
    return load_wal_settings(environment(config_file, check_names=False))


def config_from_env(config_file: str | None = None) -> Config:
    """The standalone configuration: environment variables over the config file, if any."""
    return load_config(environment(config_file))
