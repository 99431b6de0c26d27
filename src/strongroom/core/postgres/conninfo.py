"""Where the database is: a parsed connection target, and the environment libpq children get.

Nothing of the connection (the password least of all) ever needs to appear in a child's argv:
:meth:`ConnInfo.env` hands it over as the variables libpq reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from strongroom.errors import ConfigError, PostgresError

# libpq connection keywords and the environment variables libpq reads for them.
_ENV_FOR = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "channel_binding": "PGCHANNELBINDING",
    "require_auth": "PGREQUIREAUTH",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}

# libpq variables with no connection keyword: where its files are, and session defaults.
_LIBPQ_ONLY = frozenset(
    {
        "PGSERVICEFILE",
        "PGSYSCONFDIR",
        "PGLOCALEDIR",
        "PGREQUIRESSL",
        "PGTZ",
        "PGDATESTYLE",
        "PGGEQO",
    }
)
LIBPQ_VARIABLES = frozenset(_ENV_FOR.values()) | _LIBPQ_ONLY

# What any child process needs besides libpq's own: finding binaries, ~/.pgpass, locale, time.
PROCESS_VARIABLES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})


def process_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of ``environ`` (default: this process's) any child may see: no secret of ours.

    An allow-list, not a deny-list: the encryption keys, storage credentials and whatever a
    Django or Celery deployment exports are never handed to pg_dump or pg_restore, whose
    environment any process of the same user can read under /proc.
    """
    source = os.environ if environ is None else environ
    return {
        k: v
        for k, v in source.items()
        if k in PROCESS_VARIABLES or k.startswith("LC_") or k in LIBPQ_VARIABLES
    }


@dataclass(frozen=True)
class ConnInfo:
    """A parsed connection target; ``str()`` never reveals the password."""

    params: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> ConnInfo:
        """Parse a ``postgresql://`` URL or a libpq key=value string."""
        if not url:
            raise ConfigError(
                "DATABASE_URL is not set: point it at the database to back up, "
                "e.g. postgresql://strongroom_backup@db.example:5432/shop"
            )
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"DATABASE_URL is not a valid PostgreSQL URL: {redact(exc)}"
            ) from None
        return cls(params)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("USER", "")

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    def with_db(self, dbname: str) -> ConnInfo:
        return ConnInfo({**self.params, "dbname": dbname})

    def conninfo(self) -> str:
        return make_conninfo(**self.params)

    def env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for libpq children: :func:`process_env` with this target, password included.

        libpq variables already set (``PGPASSFILE``, ``PGSSLROOTCERT``, ...) pass, as they do for
        this process's own connections; the URL's parameters win over them, as in libpq.
        """
        env = process_env(environ)
        for key, value in self.params.items():
            if key in _ENV_FOR:
                env[_ENV_FOR[key]] = value
        return env

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.conninfo(), **kwargs)
        except psycopg.OperationalError as exc:
            raise PostgresError(f"cannot connect to {self}: {redact(exc)}") from None

    def __str__(self) -> str:
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        return f"database {self.dbname!r} on {host}:{port} as {self.user or 'default user'}"


def redact(exc: BaseException) -> str:
    """First line of a driver error, with anything password-like removed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)
