"""The environment libpq children get is built from an allow-list, the URL winning."""

from __future__ import annotations

from strongroom.core.postgres import ConnInfo
from strongroom.core.postgres.conninfo import process_env

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/op",
    "LANG": "C.UTF-8",
    "LC_MESSAGES": "C",
    "TZ": "UTC",
    "TMPDIR": "/var/tmp",
    "PGPASSFILE": "/etc/strongroom/pgpass",
    "PGSSLROOTCERT": "/etc/ssl/db.pem",
    "PGHOST": "elsewhere.example",
    "BACKUP_ENCRYPTION_KEY": "k",
    "BACKUP_ENCRYPTION_OLD_KEYS": "o",
    "R2_SECRET_ACCESS_KEY": "s",
    "B2_ACCESS_KEY_ID": "a",
    "DATABASE_URL": "postgresql://u:pw@db/shop",
    "PYTHONPATH": "/src",
    "PGDATA": "/var/lib/postgresql",  # the server's, not libpq's
}


def test_only_libpq_and_process_variables_pass() -> None:
    assert process_env(PARENT) == {
        k: PARENT[k]
        for k in [
            "PATH",
            "HOME",
            "LANG",
            "LC_MESSAGES",
            "TZ",
            "TMPDIR",
            "PGPASSFILE",
            "PGSSLROOTCERT",
            "PGHOST",
        ]
    }


def test_the_urls_parameters_win_and_the_password_is_handed_over() -> None:
    target = ConnInfo.parse("postgresql://backup:s%20cret@db.example:6543/shop?sslmode=verify-full")
    env = target.env(PARENT)
    assert {k: v for k, v in env.items() if k.startswith("PG")} == {
        "PGHOST": "db.example",
        "PGPORT": "6543",
        "PGUSER": "backup",
        "PGPASSWORD": "s cret",
        "PGDATABASE": "shop",
        "PGSSLMODE": "verify-full",
        "PGPASSFILE": "/etc/strongroom/pgpass",
        "PGSSLROOTCERT": "/etc/ssl/db.pem",
    }
    assert "BACKUP_ENCRYPTION_KEY" not in env and "DATABASE_URL" not in env
