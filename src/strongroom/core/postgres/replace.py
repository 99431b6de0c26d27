"""Replacing a database so that a failed or interrupted restore cannot half-happen.

Restoring over a live database in place (drop its schemas, then ``pg_restore``) loses the old
data at the first step and leaves a half-restored target when anything fails later. Instead the
archive goes into a new database on the same server, ``<target>_sr_<id>``, created like the
target (encoding, locale, owner); only when pg_restore and the row-count comparison succeeded is
it swapped in by two renames, a short step that needs no other session on the target:

1. ``ALTER DATABASE target RENAME TO <target>_sr_old_<id>``
2. ``ALTER DATABASE <target>_sr_<id> RENAME TO target`` (on failure, step 1 is rolled back)
3. ``DROP DATABASE <target>_sr_old_<id>``

What belongs to the database rather than to its contents (owner, database-level GRANTs,
``ALTER DATABASE … SET`` and ``ALTER ROLE … IN DATABASE … SET`` settings, connection limit,
comment) is carried over to the new database before the swap, so a failure there also leaves the
target untouched. Not carried over: security labels, the tablespace (the new database gets the
server default) and ``ALLOW_CONNECTIONS false``.

A rename needs the target free of other sessions. :func:`wait_until_free` polls
``pg_stat_activity`` for at most the given timeout and then raises :class:`TargetBusy` naming
each session; with ``terminate`` it first forbids new connections and ends the present ones.
Every statement here runs from the server's maintenance database (``postgres``), as
``prepare_target`` does: a database cannot be renamed or dropped from inside itself.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from strongroom.core.postgres.conninfo import ConnInfo, redact
from strongroom.errors import PostgresError, RestoreError, TargetBusy

log = logging.getLogger("strongroom.restore")

MAINTENANCE_DB = "postgres"
#: PostgreSQL truncates longer names (NAMEDATALEN - 1), which would make two runs collide.
MAX_NAME_BYTES = 63
#: Settings whose value is a list of quoted items (pg_dump's ``variable_is_guc_list_quote``).
_LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)
_POLL_SECONDS = 0.2

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Session:
    """Another session connected to the target, as ``pg_stat_activity`` shows it."""

    pid: int
    user: str | None
    application: str | None
    state: str | None

    def __str__(self) -> str:
        return (
            f"pid {self.pid} (user {self.user or '?'}, application '{self.application or ''}', "
            f"state '{self.state or 'unknown'}')"
        )


@dataclass
class Replacement:
    """The names one ``--replace`` run uses: the same id ties the new and the old one together."""

    target: str
    new: str
    old: str
    #: The new database holds the target's name: from here on a failure must not drop it.
    swapped: bool = False
    #: Connections to the target were forbidden for the swap and must be allowed again on failure.
    closed_target: bool = False

    @classmethod
    def for_target(cls, target: str) -> Replacement:
        run = secrets.token_hex(4)
        return cls(
            target, _with_suffix(target, f"_sr_{run}"), _with_suffix(target, f"_sr_old_{run}")
        )


def _with_suffix(name: str, suffix: str) -> str:
    """``name + suffix`` within 63 bytes, cutting ``name`` on a character boundary."""
    room = MAX_NAME_BYTES - len(suffix.encode())
    head = name.encode()[:room].decode(errors="ignore")
    return head + suffix


@contextmanager
def maintenance(target: ConnInfo) -> Iterator[Conn]:
    """An autocommit connection to the server's maintenance database."""
    with target.with_db(MAINTENANCE_DB).connect(autocommit=True) as conn:
        yield conn


def database_exists(conn: Conn, name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    )


# -- the new database ---------------------------------------------------------------------------


def create_like(conn: Conn, target: str, new: str) -> None:
    """Create ``new`` empty, with the target's encoding, locale and owner."""
    row = conn.execute(
        "SELECT to_jsonb(d) - 'datacl', pg_get_userbyid(d.datdba) FROM pg_database d"
        " WHERE datname = %s",
        (target,),
    ).fetchone()
    if row is None:
        raise RestoreError(f"restore target database {target!r} disappeared during the restore")
    props, owner = row[0], row[1]
    options = [
        sql.SQL("TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(_encoding(conn, props["encoding"])),
            sql.Literal(props["datcollate"]),
            sql.Literal(props["datctype"]),
        ),
        *_provider_options(props),
        sql.SQL("OWNER {}").format(sql.Identifier(owner)),
    ]
    query = sql.SQL("CREATE DATABASE {} ").format(sql.Identifier(new)) + sql.SQL(" ").join(options)
    try:
        conn.execute(query)
    except psycopg.Error as exc:
        raise RestoreError(
            f"cannot create the database {new!r} to restore into before replacing {target!r}: "
            f"{redact(exc)}; --replace restores beside the target and needs a role with CREATEDB "
            f"that may act as its owner {owner!r}, and room for a second copy of the database"
        ) from None


def _encoding(conn: Conn, number: int) -> str:
    row = conn.execute("SELECT pg_encoding_to_char(%s)", (number,)).fetchone()
    return str(row[0]) if row else "UTF8"


def _provider_options(props: dict[str, Any]) -> list[sql.Composable]:
    """ICU or builtin locale options (PostgreSQL 15+; the column names differ by version)."""
    provider = props.get("datlocprovider", "c")
    locale = props.get("datlocale") or props.get("daticulocale")
    if provider == "i" and locale:
        return [sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale))]
    if provider == "b" and locale:
        return [sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale))]
    return []


def carry_over(conn: Conn, target: str, new: str) -> None:
    """Give ``new`` what belongs to the target database itself, not to its contents."""
    db = sql.Identifier(new)
    for statement in _grants(conn, target, db) + _settings(conn, target, db):
        conn.execute(statement)
    row = conn.execute(
        "SELECT datconnlimit, shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname = %s",
        (target,),
    ).fetchone()
    if row and row[0] != -1:
        conn.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(row[0]))
        )
    if row and row[1] is not None:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(row[1])))


def _grants(conn: Conn, target: str, db: sql.Identifier) -> list[sql.Composed]:
    """The target's explicit ACL as GRANTs; a NULL ACL (the defaults) needs none."""
    rows = conn.execute(
        "SELECT a.grantee, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
        " a.privilege_type, a.is_grantable"
        " FROM pg_database d, aclexplode(d.datacl) a"
        " WHERE d.datname = %s AND a.grantee <> d.datdba",
        (target,),
    ).fetchall()
    explicit = conn.execute(
        "SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", (target,)
    ).fetchone()
    if not explicit or not explicit[0]:
        return []
    statements: list[sql.Composed] = [sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db)]
    for grantee_oid, grantee, privilege, grantable in rows:
        who = sql.SQL("PUBLIC") if grantee_oid == 0 else sql.Identifier(grantee)
        statements.append(
            sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege),  # a keyword from aclexplode: CREATE, TEMPORARY, CONNECT
                db,
                who,
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )
    return statements


def _settings(conn: Conn, target: str, db: sql.Identifier) -> list[sql.Composed]:
    """``ALTER DATABASE … SET`` and ``ALTER ROLE … IN DATABASE … SET`` of the target."""
    rows = conn.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,"
        " unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d"
        " ON d.oid = s.setdatabase WHERE d.datname = %s",
        (target,),
    ).fetchall()
    statements: list[sql.Composed] = []
    for role, item in rows:
        name, _, value = str(item).partition("=")
        head = (
            sql.SQL("ALTER DATABASE {}").format(db)
            if role is None
            else sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), db)
        )
        statements.append(
            sql.SQL("{} SET {} = {}").format(
                head, sql.Identifier(name), _setting_value(name, value)
            )
        )
    return statements


def _setting_value(name: str, value: str) -> sql.Composable:
    """As pg_dump writes it: list settings item by item, every other value as one literal."""
    if name.lower() not in _LIST_SETTINGS:
        return sql.Literal(value)
    return sql.SQL(", ").join(sql.Literal(item) for item in _split_list(value))


def _split_list(value: str) -> list[str]:
    """Split ``a, "b c", d`` as PostgreSQL's ``SplitGUCList`` does (``""`` quotes a ``"``)."""
    items: list[str] = []
    current, quoted, i = "", False, 0
    while i < len(value):
        char = value[i]
        if char == '"' and quoted and value[i + 1 : i + 2] == '"':
            current, i = current + '"', i + 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    if current.strip() or items:
        items.append(current.strip())
    return items


def drop(conn: Conn, name: str) -> None:
    """Drop ``name`` even while pg_restore is still connected to it (its sessions end)."""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- other sessions -----------------------------------------------------------------------------


def other_sessions(conn: Conn, name: str) -> list[Session]:
    rows = conn.execute(
        "SELECT pid, usename, application_name, state FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid",
        (name,),
    ).fetchall()
    return [Session(int(r[0]), r[1], r[2], r[3]) for r in rows]


def wait_until_free(conn: Conn, name: str, *, timeout: float, terminate: bool) -> None:
    """Return once no other session is connected to ``name``; raise ``TargetBusy`` at timeout."""
    if terminate:
        set_allow_connections(conn, name, allow=False)
        for session in other_sessions(conn, name):
            conn.execute("SELECT pg_terminate_backend(%s)", (session.pid,))
    deadline = time.monotonic() + timeout
    while True:
        busy = other_sessions(conn, name)
        if not busy:
            return
        if time.monotonic() >= deadline:
            raise TargetBusy(_busy_message(name, busy, timeout, terminate))
        time.sleep(_POLL_SECONDS)


def _busy_message(name: str, busy: list[Session], timeout: float, terminate: bool) -> str:
    sessions = ", ".join(str(s) for s in busy)
    fix = (
        "they could not be terminated: end them as a superuser"
        if terminate
        else "end them, raise BACKUP_RESTORE_LOCK_TIMEOUT, or pass --terminate-sessions to end them"
    )
    return (
        f"restore target database {name!r} is still in use by {len(busy)} other session(s) "
        f"after {timeout:g} s: {sessions}; {fix}"
    )


def set_allow_connections(conn: Conn, name: str, *, allow: bool) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")
        )
    )


# -- the swap -----------------------------------------------------------------------------------


def rename(conn: Conn, old: str, new: str) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def swap(conn: Conn, names: Replacement, *, timeout: float, terminate: bool) -> None:
    """Put ``names.new`` in the target's place; the target is untouched if this raises.

    A session may connect between the check and the rename: the rename then fails with
    "being accessed by other users" and the wait resumes, still bounded by ``timeout``.
    """
    deadline = time.monotonic() + timeout
    names.closed_target = terminate
    while True:
        left = max(0.0, deadline - time.monotonic())
        wait_until_free(conn, names.target, timeout=left, terminate=terminate)
        try:
            rename(conn, names.target, names.old)
            break
        except psycopg.errors.ObjectInUse:
            if time.monotonic() >= deadline:
                raise TargetBusy(
                    _busy_message(
                        names.target, other_sessions(conn, names.target), timeout, terminate
                    )
                ) from None
    try:
        rename(conn, names.new, names.target)
    except BaseException:
        rename(conn, names.old, names.target)  # roll the first step back
        raise
    names.swapped = True


# -- the whole replacement ----------------------------------------------------------------------


def wait_for_target(target: ConnInfo, *, timeout: float, terminate: bool) -> bool:
    """Before any download: whether the target exists and, if so, that a swap could happen.

    Refuses a role that cannot create the new database, and (unless ``terminate``, which ends
    the sessions only at swap time) waits, bounded, for other sessions to leave the target: an
    operator learns the target is busy now, not after an hour of pg_restore.
    """
    with maintenance(target) as conn:
        if not database_exists(conn, target.dbname):
            return False
        row = conn.execute(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if not row or not row[0]:
            raise RestoreError(
                f"--replace restores into a new database beside {target.dbname!r} and swaps "
                f"names at the end; {target.user or 'this role'} may not create databases: "
                "grant it CREATEDB, or restore into a new database yourself"
            )
        if not terminate:
            wait_until_free(conn, target.dbname, timeout=timeout, terminate=False)
    return True


@contextmanager
def replacement(target: ConnInfo) -> Iterator[Replacement]:
    """A new database beside the target, dropped again unless :func:`swap_in` put it in place.

    Any exit that is not a completed swap (an error, a row-count mismatch, Ctrl-C, SIGTERM)
    drops the new database, ending pg_restore's sessions in it; the target is never touched.
    """
    names = Replacement.for_target(target.dbname)
    try:
        with maintenance(target) as conn:
            create_like(conn, names.target, names.new)
        yield names
    finally:
        _finish(target, names)


def swap_in(target: ConnInfo, names: Replacement, *, timeout: float, terminate: bool) -> None:
    """Carry the target's own properties over, swap the names, drop the old database."""
    with maintenance(target) as conn:
        try:
            carry_over(conn, names.target, names.new)
        except psycopg.Error as exc:
            raise RestoreError(
                f"restored, but cannot give the new database the settings of {names.target!r}: "
                f"{redact(exc)}; the target was left as it was"
            ) from None
        swap(conn, names, timeout=timeout, terminate=terminate)


def _finish(target: ConnInfo, names: Replacement) -> None:
    """Drop whichever database is not the target now; say so if that fails."""
    leftover = names.old if names.swapped else names.new
    try:
        with maintenance(target) as conn:
            if names.closed_target and not names.swapped:
                with suppress(psycopg.Error):
                    set_allow_connections(conn, names.target, allow=True)
            drop(conn, leftover)
    except (psycopg.Error, PostgresError) as exc:
        log.error(
            "could not drop the database %r this restore left: %s; drop it with "
            "DROP DATABASE %s WITH (FORCE)",
            leftover,
            redact(exc),
            leftover,
        )
