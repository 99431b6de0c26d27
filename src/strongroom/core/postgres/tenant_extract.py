"""One tenant's rows out of a nightly full backup: pg_dump's TABLE DATA, filtered as a stream.

A full backup is a pg_dump custom-format archive holding every tenant's rows. ``pg_restore
--data-only -f - -L <list>`` writes the TABLE DATA entries of the tenant tables (and of their
partitions) as ``COPY schema.table (cols) FROM stdin;`` blocks of COPY text, each ended by
``\\.``; of each block only the lines whose tenant-column field equals the tenant id pass. The
archive itself is never loaded: the stream goes through in blocks of about a MiB, and each block
is searched in C (``bytes.find``) for the id between its field delimiters, so Python touches
only the tenant's lines, not every row of every tenant.

The tenant model (which tables, which column, their types) is the *target's*
(:func:`~strongroom.core.postgres.tenants.discover`): that is the schema the rows go into. A
partition's rows are yielded under its partitioned parent's name. A table in the archive the
target does not know is passed over unless it holds the tenant column; then it is refused by
name (its rows would have nowhere to go). The tenant's entry of the tenant table is read first,
so an id the backup does not hold is known before the big tables stream.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from strongroom.core.postgres.binaries import StderrDrain, find_binary
from strongroom.core.postgres.children import spawn, terminate
from strongroom.core.postgres.conninfo import ConnInfo
from strongroom.core.postgres.tables import SYSTEM_SCHEMAS
from strongroom.core.postgres.tenant_export import TenantScope
from strongroom.core.postgres.tenant_rows import TableRows
from strongroom.core.postgres.tenants import Column, TenantModel, TenantTable, discover
from strongroom.errors import PostgresError, RestoreError, TenantNotFound

#: Bytes of pg_restore output filtered at once: big enough that per-block costs vanish.
BLOCK = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux: a bigger pipe means fewer, larger reads from pg_restore
_TERMINATOR = b"\\.\n"

_LEAVES_SQL = """
SELECT t.relid, n.nspname, c.relname
FROM unnest(%s::oid[]) AS root(oid), pg_partition_tree(root.oid) t
JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.isleaf
"""
_ALL_TABLES_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s)
"""


@dataclass(frozen=True)
class _Plan:
    """What the target says about the archive's tables: where each one's rows go."""

    model: TenantModel
    #: (schema, table) of every leaf holding tenant rows -> the tenant table it belongs to.
    leaves: dict[tuple[str, str], TenantTable]
    #: (schema, table) of every table the target has (tenant or shared).
    known: frozenset[tuple[str, str]]


def _plan(conn: psycopg.Connection[Any], scope: TenantScope, key: str | None) -> _Plan:
    model = discover(conn, scope.table, scope.column, key=key)
    leaves: dict[tuple[str, str], TenantTable] = {}
    for table in model.tables:
        leaves[(table.ref.schema, table.ref.name)] = table
    partitioned = {t.oid: t for t in model.tables if t.partitioned}
    if partitioned:
        for oid in partitioned:
            for _, schema, name in conn.execute(_LEAVES_SQL, ([oid],)).fetchall():
                leaves[(str(schema), str(name))] = partitioned[oid]
    rows = conn.execute(_ALL_TABLES_SQL, (list(SYSTEM_SCHEMAS),)).fetchall()
    return _Plan(model, leaves, frozenset((str(s), str(n)) for s, n in rows))


def canonical_tenant_id(conn: psycopg.Connection[Any], model: TenantModel, tenant_id: str) -> str:
    """The id as the key's type prints it (``uuid`` lower-cased, ``int`` without zeros, ...)."""
    key = next(t for t in model.tables if t.ref == model.tenant_table)
    key_type = next(c.type for c in key.columns if c.name == model.tenant_key)
    # format_type() text comes from the server itself: safe to splice as SQL
    query = sql.SQL("SELECT %s::{}::text").format(sql.SQL(key_type))
    try:
        row = conn.execute(query, (tenant_id,)).fetchone()
    except psycopg.errors.DataError:
        raise TenantNotFound(
            f"tenant {tenant_id!r} is not a valid {key_type} ({model.tenant_table}."
            f"{model.tenant_key}): `strongroom tenant list` shows the tenant ids"
        ) from None
    assert row is not None
    return str(row[0])


def copy_text(value: str) -> bytes:
    """``value`` as a field of COPY text: what pg_dump writes for it (UTF-8 archives)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace("\b", "\\b")
        .replace("\f", "\\f")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
        .replace("\v", "\\v")
    )
    return escaped.encode("utf-8")


# -- the archive's table of contents ---------------------------------------------------------


def _captured(argv: list[str], env: dict[str, str], what: str) -> str:
    """A short pg_restore run's output; its failure is one line with its last error."""
    proc = spawn(argv, env=env, stdout=subprocess.PIPE)
    try:
        out, err = proc.communicate()
    except BaseException:
        terminate(proc)
        raise
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()
        raise RestoreError(
            f"pg_restore could not read {what} (exit {proc.returncode}): "
            f"{tail[-1] if tail else 'no output'}"
        )
    return out.decode("utf-8", "replace")


def _table_of_contents(archive: Path, env: dict[str, str], bindir: str | None) -> list[str]:
    argv = [find_binary("pg_restore", bindir), "-l", str(archive)]
    return _captured(argv, env, f"the table of contents of {archive.name}").splitlines()


_PRIMARY_KEY = re.compile(r"\bPRIMARY KEY \((.*?)\)(?: |;|$)", re.MULTILINE)


def archived_key(
    archive: Path, toc: list[str], table: tuple[str, str], env: dict[str, str], bindir: str | None
) -> str | None:
    """The tenant table's primary key column as the archive defines it (post-data section).

    Needed where the target has the tables but not yet their constraints: a new database
    whose rows go in before its indexes and keys. None when the archive has no such key.
    """
    prefix = f"{table[0]} {table[1]} "
    entries = [line for line in toc if (_entry(line, "CONSTRAINT") or "").startswith(prefix)]
    if not entries:
        return None
    fd, name = tempfile.mkstemp(prefix="tenant-key-", suffix=".list", dir=archive.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write("".join(line + "\n" for line in entries))
        argv = [find_binary("pg_restore", bindir), "-f", "-", "-L", name, str(archive)]
        script = _captured(argv, env, f"the constraints of {archive.name}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
    for match in _PRIMARY_KEY.finditer(script):
        columns = parse_identifiers(match.group(1))
        if len(columns) == 1:
            return columns[0]
    return None


def _entry(line: str, kind: str) -> str | None:
    """``schema name ...`` of a ``kind`` line (``TABLE DATA``) of ``pg_restore -l``, else None."""
    marker = f" {kind} "
    if line.startswith(";") or marker not in line:
        return None
    head, _, rest = line.partition(marker)
    return rest if head.split(";", 1)[0].strip().isdigit() else None


def select_entries(lines: list[str], plan: _Plan) -> list[str]:
    """The TABLE DATA lines to restore: the tenant table's first, then every tenant leaf's,
    then those of tables the target does not know (checked for the tenant column as they pass).
    """
    first: list[str] = []
    tenant: list[str] = []
    unknown: list[str] = []
    tenant_ref = plan.model.tenant_table
    for line in lines:
        rest = _entry(line, "TABLE DATA")
        if rest is None:
            continue
        match = _named(rest, plan.leaves.keys()) or _named(rest, plan.known)
        if match is None:
            unknown.append(line)
        elif match in plan.leaves:
            is_key = match == (tenant_ref.schema, tenant_ref.name)
            (first if is_key else tenant).append(line)
    return first + tenant + unknown


def _named(rest: str, names: Any) -> tuple[str, str] | None:
    """Which (schema, table) a TOC entry's ``schema table owner`` text names (spaces allowed)."""
    for schema, table in names:
        prefix = f"{schema} {table}"
        if rest == prefix or rest.startswith(prefix + " "):
            return (schema, table)
    return None


# -- COPY statements -------------------------------------------------------------------------


def parse_identifiers(text: str) -> list[str]:
    """``a, "B c", "d""e"`` or ``public."T"``: identifiers as fmtId writes them, unquoted."""
    names: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " ,.":
            i += 1
        if i >= n:
            break
        if text[i] == '"':
            j, part = i + 1, []
            while j < n:
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        part.append('"')
                        j += 2
                        continue
                    break
                part.append(text[j])
                j += 1
            names.append("".join(part))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in " ,.":
                j += 1
            names.append(text[i:j])
            i = j
    return names


@dataclass(frozen=True)
class CopyStatement:
    schema: str
    table: str
    columns: tuple[str, ...]


def parse_copy(line: str) -> CopyStatement | None:
    """``COPY schema.table (cols) FROM stdin;`` as pg_dump writes it, else None."""
    if not line.startswith("COPY ") or not line.endswith(" FROM stdin;"):
        return None
    body = line[len("COPY ") : -len(" FROM stdin;")]
    open_ = _outside_quotes(body, "(")
    if open_ < 0 or not body.endswith(")"):
        return None
    name = parse_identifiers(body[:open_].strip())
    if len(name) != 2:
        return None
    return CopyStatement(name[0], name[1], tuple(parse_identifiers(body[open_ + 1 : -1])))


def _outside_quotes(text: str, char: str) -> int:
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c == char and not quoted:
            return i
    return -1


# -- the filter ------------------------------------------------------------------------------


class LineFilter:
    """Picks the lines of COPY text whose field ``index`` (of ``width``) equals ``value``.

    Work is proportional to the matching lines: the block is searched for the value with its
    delimiters on both sides; each hit is then checked to be field ``index`` by counting the
    tabs before it on its line (escaped tabs are ``\\t``, so every raw tab is a delimiter).
    """

    def __init__(self, value: bytes, index: int, width: int) -> None:
        self.index = index
        before = b"\n" if index == 0 else b"\t"
        after = b"\n" if index == width - 1 else b"\t"
        self.needle = before + value + after
        self.last = index == width - 1

    def pick(self, lines: bytes) -> tuple[bytes, int]:
        """The matching lines of ``lines`` (whole lines, each ending in a newline) and how many."""
        region = b"\n" + lines
        needle, index = self.needle, self.index
        out: list[bytes] = []
        pos = region.find(needle)
        while pos >= 0:
            start = pos + 1 if index == 0 else region.rfind(b"\n", 0, pos) + 1
            end = pos + len(needle) if self.last else region.find(b"\n", pos + len(needle)) + 1
            if index == 0 or region.count(b"\t", start, pos) == index - 1:
                out.append(region[start:end])
                pos = region.find(needle, end - 1)  # the newline may open the next hit
            else:
                pos = region.find(needle, pos + 1)
        return b"".join(out), len(out)


# -- the extraction --------------------------------------------------------------------------


class FullBackupRows:
    """One tenant's rows of a full backup's archive (a ``TenantRows``), read in one pass.

    What the target says (the tenant model, the id's canonical form) is read when the block
    opens if the target already holds the schema, else on the first call to :meth:`tables`,
    so a new database may get its pre-data section in between.
    """

    def __init__(
        self,
        archive: Path,
        target: ConnInfo,
        scope: TenantScope,
        tenant_id: str,
        bindir: str | None = None,
    ) -> None:
        self.archive = archive
        self.target = target
        self.scope = scope
        self.bindir = bindir
        self._tenant_id = tenant_id
        #: The tenant's rows per tenant table, counted as they pass: complete with ``tables()``.
        self._counts: dict[str, int] = {}
        self._plan: _Plan | None = None
        self._toc: list[str] = []
        self._list: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._drain: StderrDrain | None = None
        self._buffer = bytearray()
        self._eof = False

    @property
    def tenant_id(self) -> str:
        """The id as the key's type prints it, once the target was read (as given before)."""
        return self._tenant_id

    @property
    def expected_rows(self) -> dict[str, int]:
        return self._counts

    def prepare(self) -> _Plan:
        """Read the target's tenant model and the archive's contents (once)."""
        if self._plan is None:
            env = self.target.env()
            self._toc = _table_of_contents(self.archive, env, self.bindir)
            with self.target.connect(autocommit=True) as conn:
                key = None
                table = _tenant_table_name(conn, self.scope)
                if table is not None and not _has_primary_key(conn, self.scope):
                    key = archived_key(self.archive, self._toc, table, env, self.bindir)
                plan = _plan(conn, self.scope, key)
                self._tenant_id = canonical_tenant_id(conn, plan.model, self._tenant_id)
            self._counts.update({str(t.ref): 0 for t in plan.model.tables})
            self._plan = plan
        return self._plan

    def tables(self) -> Iterator[TableRows]:
        """Each COPY block of a tenant table as :class:`TableRows`; drained if left unread."""
        plan = self.prepare()
        self._start(plan)
        value = copy_text(self._tenant_id)
        key = str(plan.model.tenant_table)
        while (line := self._line()) is not None:
            statement = parse_copy(line.decode("utf-8", "replace").rstrip("\n"))
            if statement is None:
                continue
            table = plan.leaves.get((statement.schema, statement.table))
            if table is None:
                self._refuse_if_tenant(statement)
                for _ in self._block(None, f"{statement.schema}.{statement.table}"):
                    pass
                continue
            picker = LineFilter(value, _column_index(statement, table), len(statement.columns))
            chunks = self._block(picker, str(table.ref))
            yield TableRows(str(table.ref), _columns(statement, table), "text", chunks)
            for _ in chunks:  # the consumer stopped early: skip to the block's end
                pass
            if str(table.ref) == key:
                self._require_tenant()
        self._finish()
        self._require_tenant()

    def _start(self, plan: _Plan) -> None:
        """pg_restore writing the selected TABLE DATA entries as COPY text to our pipe."""
        fd, self._list = tempfile.mkstemp(prefix="tenant-", suffix=".list", dir=self.archive.parent)
        with os.fdopen(fd, "w") as out:
            out.write("".join(line + "\n" for line in select_entries(self._toc, plan)))
        argv = [find_binary("pg_restore", self.bindir), "--data-only", "-f", "-", "-L", self._list]
        self.proc = spawn(
            [*argv, str(self.archive)], env=self.target.env(), stdout=subprocess.PIPE, bufsize=0
        )
        self._drain = StderrDrain(self.proc.stderr)
        self._drain.start()
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.stdout.fileno(), _F_SETPIPE_SZ, BLOCK)

    def close(self) -> None:
        """Stop pg_restore (its whole process group) and remove the list file. Never raises."""
        if self.proc is not None:
            if self.proc.stdout is not None:
                self.proc.stdout.close()  # a pg_restore blocked on a full pipe sees EPIPE
            terminate(self.proc, grace=2.0)
            if self._drain is not None:
                self._drain.join(timeout=10)
        if self._list is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._list)

    def _require_tenant(self) -> None:
        assert self._plan is not None
        key = self._plan.model.tenant_table
        if not self._counts[str(key)]:
            raise TenantNotFound(
                f"tenant {self.tenant_id!r} is not in this backup's {key}: "
                "`strongroom list` shows the backups, `strongroom tenant list` the tenants"
            )

    def _refuse_if_tenant(self, statement: CopyStatement) -> None:
        assert self._plan is not None
        if self._plan.model.tenant_column in statement.columns:
            raise RestoreError(
                f"the backup holds tenant rows of {statement.schema}.{statement.table}, which "
                "the target does not have: restore the target's schema first (or a partition "
                "for those rows)"
            )

    def _block(self, picker: LineFilter | None, name: str) -> Iterator[bytes]:
        """The picked lines of the current COPY block, up to and excluding its ``\\.``."""
        while True:
            self._fill()
            end = _terminator(self._buffer)
            complete = end if end >= 0 else self._buffer.rfind(b"\n") + 1
            if end < 0 and complete == 0 and self._eof:
                self._finish()
                raise RestoreError(f"pg_restore's output ended inside the rows of {name}")
            lines = bytes(self._buffer[:complete])
            del self._buffer[: complete + (len(_TERMINATOR) if end >= 0 else 0)]
            if picker is not None and lines:
                data, count = picker.pick(lines)
                self._counts[name] += count
                if data:
                    yield data
            if end >= 0:
                return

    def _fill(self) -> None:
        """Read until the buffer holds a block's worth, or the output ended."""
        while not self._eof and len(self._buffer) < BLOCK:
            self._more()

    def _more(self) -> None:
        data = self.stdout.read(BLOCK)
        if data:
            self._buffer += data
        else:
            self._eof = True

    def _line(self) -> bytes | None:
        """The next line outside COPY blocks (SQL, comments), or None at the end."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0 or (self._eof and self._buffer):
                cut = newline + 1 if newline >= 0 else len(self._buffer)
                line = bytes(self._buffer[:cut])
                del self._buffer[:cut]
                return line
            if self._eof:
                return None
            self._more()

    def _finish(self) -> None:
        """Wait for pg_restore; its failure is one line with its last error."""
        if self.proc is None:
            return
        code = self.proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=10)
        if code != 0:
            why = self._drain.last_error() if self._drain else "no output"
            raise RestoreError(
                f"pg_restore could not read the tenant's rows from the archive (exit {code}): {why}"
            )


def _terminator(buffer: bytearray) -> int:
    """Where the ``\\.`` line of the current block starts in ``buffer``, or -1."""
    if buffer.startswith(_TERMINATOR):
        return 0
    found = buffer.find(b"\n" + _TERMINATOR)
    return found + 1 if found >= 0 else -1


def _column_index(statement: CopyStatement, table: TenantTable) -> int:
    try:
        return statement.columns.index(table.filter_column)
    except ValueError:
        raise RestoreError(
            f"the backup's {statement.schema}.{statement.table} has no {table.filter_column} "
            f"column, which the target's {table.ref} is filtered on: the backup is of another "
            "schema"
        ) from None


def _columns(statement: CopyStatement, table: TenantTable) -> tuple[Column, ...]:
    """The COPY block's columns, typed as the target has them (empty type: the target lacks it;
    the loader then names the column)."""
    by_name = {c.name: c for c in table.columns}
    return tuple(by_name.get(name, Column(name, "")) for name in statement.columns)


def _tenant_table_name(conn: psycopg.Connection[Any], scope: TenantScope) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%s)",
        (scope.table,),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def _has_primary_key(conn: psycopg.Connection[Any], scope: TenantScope) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_index WHERE indrelid = to_regclass(%s) AND indisprimary", (scope.table,)
    ).fetchone()
    return row is not None


def _holds_schema(target: ConnInfo, scope: TenantScope) -> bool:
    """Whether the target exists and has the tenant table (else: a new database, made later)."""
    try:
        with target.connect(autocommit=True) as conn:
            return _tenant_table_name(conn, scope) is not None
    except (PostgresError, psycopg.Error):
        return False


@contextmanager
def dump_tenant_rows(
    archive: Path,
    target: ConnInfo,
    scope: TenantScope,
    tenant_id: str,
    *,
    bindir: str | None = None,
) -> Iterator[FullBackupRows]:
    """One tenant's rows of every tenant table in ``archive`` (a verified pg_dump -Fc file).

    A target that holds the schema is read at once (an id of the wrong type is refused here);
    a missing or empty one when ``tables()`` starts, after its pre-data section went in.
    pg_restore runs while ``tables()`` is read and is stopped (its process group killed) on the
    way out, read to the end or not; a failing pg_restore is a ``RestoreError`` with its last
    error line.
    """
    rows = FullBackupRows(archive, target, scope, tenant_id, bindir)
    try:
        if _holds_schema(target, scope):
            rows.prepare()
        yield rows
    finally:
        rows.close()
