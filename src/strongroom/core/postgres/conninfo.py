"""Where the database is: a parsed connection target, and the environment libpq children get.

Nothing of the connection (the password least of all) ever needs to appear in a child's argv:
:meth:`ConnInfo.env` hands it over as the variables libpq reads.
"""

from __future__ import annotations

import os
import re
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
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
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

    def env(self) -> dict[str, str]:
        """Environment for libpq children: the process env plus this target, password included."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
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
