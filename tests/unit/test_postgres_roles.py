"""``setup-role --dry-run`` prints runnable SQL with every name quoted by the driver."""

from __future__ import annotations

from strongroom.core import postgres


def test_dry_run_sql_for_an_ordinary_role_is_the_documented_text() -> None:
    assert postgres.setup_role_sql("strongroom_backup", "shop") == [
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strongroom_backup') "
        'THEN CREATE ROLE "strongroom_backup" LOGIN; END IF; END $$',
        'ALTER ROLE "strongroom_backup" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS',
        'GRANT CONNECT ON DATABASE "shop" TO "strongroom_backup"',
        'GRANT pg_read_all_data TO "strongroom_backup"',
        'GRANT USAGE ON SCHEMA "public" TO "strongroom_backup"',
        'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "strongroom_backup"',
        'GRANT SELECT ON ALL SEQUENCES IN SCHEMA "public" TO "strongroom_backup"',
    ]


def test_quotes_and_dollars_in_names_cannot_end_a_quote_early() -> None:
    do, alter, connect, *_ = postgres.setup_role_sql("a\"b'c$$d", 'my "db"', ["s'x"])
    assert do.startswith("DO $q1$ ") and do.endswith(" $q1$")
    assert "rolname = 'a\"b''c$$d'" in do and 'CREATE ROLE "a""b\'c$$d" LOGIN' in do
    assert alter.startswith('ALTER ROLE "a""b\'c$$d" WITH')
    assert connect == 'GRANT CONNECT ON DATABASE "my ""db""" TO "a""b\'c$$d"'
    assert postgres.setup_role_sql("r", "d", ["s'x"])[4] == 'GRANT USAGE ON SCHEMA "s\'x" TO "r"'
