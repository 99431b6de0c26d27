"""The catalog outside a Django project: configure Django ourselves, so a first run just works.

Inside a project (``manage.py``, a Celery worker of the project) the catalog is the project's
own database and nothing here changes it. Standalone (the ``strongroom`` CLI, ``celery -A
strongroom``) we configure a minimal Django on ``STRONGROOM_CATALOG_URL``, an embedded SQLite
file under ``$XDG_DATA_HOME/strongroom/`` by default, and apply the migrations.

SQLite runs in WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` transactions because the
CLI and several Celery workers may write to the same file at once.
"""

from __future__ import annotations

import copy
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import django
from django.apps import apps
from django.conf import settings

from strongroom.errors import ConfigError

log = logging.getLogger("strongroom.catalog")

ENV_VAR = "STRONGROOM_CATALOG_URL"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "strongroom"]
SQLITE_BUSY_TIMEOUT = 30.0
_PG_MIGRATE_LOCK = 0x5354524F4E47  # "STRONG": one migrator at a time per catalog server
_FIX = f"set {ENV_VAR}=sqlite:////writable/dir/catalog.sqlite3 or fix the permissions"

_lock = threading.RLock()
#: The ``DATABASES["default"]`` we configured ourselves; None inside a Django project.
_ours: dict[str, Any] | None = None
_migrated = False


def ensure_django(catalog_url: str | None = None) -> None:
    """Make the catalog usable: Django set up and the catalog migrated.

    Inside a Django project (settings configured, or ``DJANGO_SETTINGS_MODULE`` set) this only
    finishes ``django.setup()`` if needed. Standalone, a later call naming another catalog
    (argument or environment) re-targets new connections to it (tests and tools that switch
    catalogs in one process); a later call naming none keeps the catalog in use.
    """
    global _ours, _migrated
    with _lock:
        if _ours is None and _in_project():
            _setup_project()
            return
        url = catalog_url or os.environ.get(ENV_VAR)
        if not url and _ours is not None:
            database = _ours  # nothing asked for: keep the catalog in use
        else:
            database = database_settings(url or default_catalog_url())
        if _ours is None:
            settings.configure(**standalone_settings(copy.deepcopy(database)))
            _ours = database  # Django fills defaults into its own copy, not this one
            django.setup()
        elif _ours != database:
            _retarget(copy.deepcopy(database))
            _ours, _migrated = database, False
        if not _migrated:
            prepare_catalog(database)
            migrate_quietly(database)
            _migrated = True


def _in_project() -> bool:
    return bool(settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE"))


def _setup_project() -> None:
    if not apps.ready and not apps.loading:
        django.setup()
    if not apps.is_installed("strongroom"):
        raise ConfigError(
            'this Django project does not install strongroom: add "strongroom" to '
            "INSTALLED_APPS and run manage.py migrate"
        )


def default_catalog_url() -> str:
    """``sqlite:///$XDG_DATA_HOME/strongroom/catalog.sqlite3`` (``~/.local/share`` if unset)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    else:
        try:
            base = Path.home() / ".local" / "share"
        except RuntimeError:
            raise ConfigError(f"no home directory for the default catalog: {_FIX}") from None
    return f"sqlite:///{base / 'strongroom' / 'catalog.sqlite3'}"


def standalone_settings(database: dict[str, Any]) -> dict[str, Any]:
    """The minimal settings of a standalone catalog."""
    return {
        "INSTALLED_APPS": list(INSTALLED_APPS),
        "DATABASES": {"default": database},
        "USE_TZ": True,
        "TIME_ZONE": "UTC",
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "LOGGING_CONFIG": None,  # the CLI and Celery own logging
    }


# -- catalog URLs ------------------------------------------------------------------------------


def database_settings(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry from ``sqlite:///abs/path``, ``postgresql://...`` or a conninfo."""
    url = url.strip()
    if url.startswith("sqlite://"):
        return _sqlite(url.removeprefix("sqlite://"))
    if os.path.isabs(url):
        return _sqlite(url)
    if url.startswith(("postgresql://", "postgres://")) or ("=" in url and "://" not in url):
        return _postgres(url)
    scheme = url.split("://", 1)[0] if "://" in url else "(no scheme)"
    raise ConfigError(
        f"{ENV_VAR} has unsupported scheme {scheme!r}: use sqlite:////abs/path/catalog.sqlite3 "
        "or postgresql://user@host/dbname"
    )


def _sqlite(path: str) -> dict[str, Any]:
    path = "/" + path.lstrip("/") if path.startswith("/") else path
    if not path or not os.path.isabs(path):
        raise ConfigError(
            f"{ENV_VAR} must name an absolute SQLite path (sqlite:////abs/path), not {path!r}"
        )
    options: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT}
    if django.VERSION >= (5, 1):
        options["transaction_mode"] = "IMMEDIATE"  # no read-then-write upgrade deadlocks
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": options}


def _postgres(url: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params: dict[str, Any] = dict(conninfo_to_dict(url))
    except Exception as exc:  # psycopg.ProgrammingError: the message never holds the password
        raise ConfigError(f"{ENV_VAR} is not a valid PostgreSQL URL: {exc}") from None
    name = params.pop("dbname", None)
    if not name:
        raise ConfigError(f"{ENV_VAR} names no database: use postgresql://user@host/dbname")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": str(name),
        "USER": str(params.pop("user", "") or ""),
        "PASSWORD": str(params.pop("password", "") or ""),
        "HOST": str(params.pop("host", "") or ""),
        "PORT": str(params.pop("port", "") or ""),
        "OPTIONS": {k: str(v) for k, v in params.items()},
    }


def describe(database: dict[str, Any]) -> str:
    """Where the catalog is, for messages: never the password."""
    if database["ENGINE"].endswith("sqlite3"):
        return str(database["NAME"])
    user = f"{database['USER']}@" if database.get("USER") else ""
    port = f":{database['PORT']}" if database.get("PORT") else ""
    return f"postgresql://{user}{database.get('HOST') or 'localhost'}{port}/{database['NAME']}"


# -- preparing and migrating ----------------------------------------------------------------------


def prepare_catalog(database: dict[str, Any]) -> None:
    """SQLite: the directory exists and is writable, and the file is in WAL mode."""
    if not database["ENGINE"].endswith("sqlite3"):
        return
    path = Path(database["NAME"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the catalog directory {path.parent}: {exc}; {_FIX}"
        ) from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"the catalog {path} is not writable; {_FIX}")
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection uses it
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the catalog {path}: {exc}; {_FIX}") from None


def migrate_quietly(database: dict[str, Any]) -> None:
    """Apply pending migrations (none pending: one cheap query), one process at a time."""
    from django.core.management import call_command
    from django.db import DatabaseError, connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        if not executor.migration_plan(executor.loader.graph.leaf_nodes()):
            return
        with _migration_lock(database):
            call_command("migrate", verbosity=0, interactive=False)
    except DatabaseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot prepare the strongroom catalog at {describe(database)}: {reason}; "
            f"check {ENV_VAR} and that the catalog database is reachable and writable"
        ) from None


@contextmanager
def _migration_lock(database: dict[str, Any]) -> Iterator[None]:
    """Two processes starting on a fresh catalog must not both create its tables."""
    if database["ENGINE"].endswith("sqlite3"):
        import fcntl

        with open(f"{database['NAME']}.migrate-lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [_PG_MIGRATE_LOCK])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_PG_MIGRATE_LOCK])


def _retarget(database: dict[str, Any]) -> None:
    """Point new connections of this thread (and threads started later) at another catalog."""
    from django.db import connections

    connections.close_all()
    configured = connections.configure_settings({"default": database})["default"]
    connections.settings["default"] = configured
    settings.DATABASES["default"] = configured
    with suppress(AttributeError):
        del connections["default"]  # this thread's connection to the old catalog
    log.debug("catalog re-targeted to %s", describe(database))
