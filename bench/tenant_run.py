"""One tenant's backup and restore against the full backup and restore of the same database.

    .venv/bin/python bench/tenant_run.py --size-gb 1 [--repeats 3] [--out docs/benchmarks.md]
        [--incident 0.5] [--reference /path/to/other/checkout]

It starts a throwaway PostgreSQL cluster, fills the RLS-forced demo shop to ``--size-gb`` GiB
with ten tenants of equal size (each about 10% of the rows), and then measures, round by round
so machine noise hits every candidate alike, each as the CLI in a subprocess, to ``local``:

* ``strongroom backup`` (the nightly full backup) and ``strongroom restore ID -j 2`` of it into a
  new, empty database (the baseline of both targets);
* ``strongroom tenant backup T`` of the measured tenant;
* ``strongroom tenant restore <tenant backup> --target shop --replace``: the tenant's rows
  replaced in place, in the live database with every other tenant;
* ``strongroom tenant restore <full backup> --tenant T --target shop --replace``: the same
  tenant taken out of the nightly full backup (extraction).

The incident each tenant restore undoes is ``--incident`` of the tenant's sales deleted (their
lines with them, by cascade) and every customer of it changed. With ``--reference`` (another
checkout with its own ``.venv``, e.g. the main branch) both tenant restores are also run, in the
same rounds, by that checkout's CLI: the previous code measured in the same machine state.

Targets: tenant restore ≤ 0.25x the full restore, extraction ≤ 0.5x (ratios of medians within
this invocation). Every run records its wall time, the CPU seconds of each program in its
process tree (``strongroom``'s Python, ``pg_restore``, ``pg_dump``) and of the PostgreSQL server
meanwhile, and the stages strongroom reports. After each tenant restore the per-table digests
of every tenant are compared with the database before it: the restored tenant's must be back,
every other tenant's untouched.

Results are printed, written as a section of ``--out`` below its notes marker (so
``bench/run.py`` keeps it when it rewrites the file, and a re-run of this script replaces only
its own section), and in full to ``docs/benchmarks-tenant.json``. Servers and files are removed
at the end, also on failure, Ctrl-C or SIGTERM. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from procmon import Measured, tree_cpu
from run import (
    BACKUP_ROLE,
    DB,
    GIB,
    NOTES_MARKER,
    ROOT,
    Bench,
    _terminate_cleanly,
    log,
    machine,
    precompile,
)
from strongroom.sandbox.demo_data import APP_ROLE, populate_to_size
from strongroom.sandbox.pgcluster import PgCluster

TENANTS = 10
#: Server statements at least this long are logged and summed per kind and table.
LOG_MIN_MS = 100
_DURATION = re.compile(r"duration: ([\d.]+) ms  (?:statement|execute [^:]*): (.*)")
_TEMP_FILE = re.compile(r"temporary file: path \"[^\"]*\", size (\d+)")
_KINDS = (
    ("CREATE INDEX", re.compile(r"CREATE (?:UNIQUE )?INDEX \S+ ON (?:ONLY )?(\S+)")),
    ("ADD CONSTRAINT", re.compile(r"ALTER TABLE (?:ONLY )?(\S+)")),
    ("COPY", re.compile(r"COPY (\S+)")),
    ("DELETE", re.compile(r"DELETE FROM (?:ONLY )?(\S+)")),
    ("INSERT", re.compile(r"INSERT INTO (\S+)")),
    ("UPDATE", re.compile(r"UPDATE (?:ONLY )?(\S+)")),
)
BEGIN = "<!-- tenant benchmark: begin (bench/tenant_run.py rewrites this section) -->"
END = "<!-- tenant benchmark: end -->"

#: name -> (label, what it is divided by, target ratio)
STEPS: dict[str, tuple[str, str, float | None]] = {
    "full_backup": ("strongroom backup (full, every tenant)", "", None),
    "full_restore": ("strongroom restore -j 2 into a new database (full)", "", None),
    "tenant_backup": ("strongroom tenant backup T", "full_backup", None),
    "tenant_restore": ("strongroom tenant restore <tenant backup> --replace", "full_restore", 0.25),
    "extract_restore": (
        "strongroom tenant restore <full backup> --tenant T --replace",
        "full_restore",
        0.5,
    ),
    "tenant_restore_ref": (
        "reference: strongroom tenant restore <tenant backup> --replace",
        "full_restore",
        None,
    ),
    "extract_restore_ref": (
        "reference: strongroom tenant restore <full backup> --tenant T --replace",
        "full_restore",
        None,
    ),
}
PROGRAMS = ("strongroom", "pg_restore", "pg_dump")


@dataclass
class Results:
    db_bytes: int = 0
    runs: dict[str, list[Measured]] = field(default_factory=dict)
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, run: Measured, report: dict[str, Any], bench: TenantBench) -> None:
        report = {
            **report,
            "server_statements": bench.statements,
            "server_temp_file_bytes": bench.temp_bytes,
        }
        self.runs.setdefault(name, []).append(run)
        self.reports.setdefault(name, []).append(report)
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in cpu_split(run).items())
        log(f"  {name}: {run.wall:.2f} s (CPU s: {cpu})")

    def median(self, name: str) -> float:
        return statistics.median(r.wall for r in self.runs[name])

    def ratio(self, name: str) -> float | None:
        base = STEPS[name][1]
        return self.median(name) / self.median(base) if base and base in self.runs else None

    def cpu(self, name: str) -> dict[str, float]:
        """Median CPU seconds per program (and the server) over the runs of ``name``."""
        splits = [cpu_split(r) for r in self.runs[name]]
        keys = sorted({k for s in splits for k in s})
        return {k: statistics.median(s.get(k, 0.0) for s in splits) for k in keys}

    def stages(self, name: str) -> dict[str, float]:
        found = [r.get("stages") or {} for r in self.reports[name]]
        keys = list(dict.fromkeys(k for s in found for k in s))
        return {k: statistics.median(float(s.get(k, 0.0)) for s in found) for k in keys}


def statement_seconds(log_text: str) -> dict[str, float]:
    """Seconds of logged server statements by ``KIND table`` (the others as ``other``)."""
    totals: dict[str, float] = {}
    for match in _DURATION.finditer(log_text):
        seconds, statement = float(match.group(1)) / 1000, match.group(2).strip()
        label = "other"
        for kind, pattern in _KINDS:
            found = pattern.match(statement)
            if found:
                label = f"{kind} {found.group(1).replace(chr(34), '')}"
                break
        totals[label] = totals.get(label, 0.0) + seconds
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def temp_file_bytes(log_text: str) -> int:
    """Bytes of the temporary files the server wrote (sorts and hashes past ``work_mem``)."""
    return sum(int(m.group(1)) for m in _TEMP_FILE.finditer(log_text))


def cpu_split(run: Measured) -> dict[str, float]:
    """CPU seconds of the command's programs by name, the rest of its tree, and the server."""
    by_name = run.cpu_by_name()
    split = {
        "strongroom": sum(v for k, v in by_name.items() if k.startswith(("strongroom", "python")))
    }
    for program in PROGRAMS[1:]:
        if by_name.get(program):
            split[program] = by_name[program]
    split["other"] = max(run.cpu_seconds - sum(split.values()), 0.0)
    split["postgres server"] = run.other_cpu.get("postgres", 0.0)
    return split


class TenantBench(Bench):
    """run.py's servers and steps, local storage only (no S3 needed for these comparisons)."""

    def __init__(self, cluster: PgCluster, work: Path) -> None:
        super().__init__(cluster, None, work)  # type: ignore[arg-type]
        self.tenant = ""
        self.statements: dict[str, float] = {}
        self.temp_bytes = 0
        #: The share of the tenant's sales each incident deletes.
        self.incident = 0.5

    def create(self, target: int) -> int:
        """run.py's database and backup role, which may also take the tables' owner role (the
        tenant export reads under the RLS policy as the owner, `SET ROLE`)."""
        size = super().create(target)
        self.cluster.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_ROLE), sql.Identifier(BACKUP_ROLE)),
            dbname=DB,
        )
        return size

    def grow(self, target: int) -> int:
        began = time.monotonic()
        size = populate_to_size(self.app_url, target, tenants=TENANTS)
        self.cluster.execute("VACUUM (ANALYZE)", dbname=DB)
        log(f"  database is {size / GIB:.2f} GiB after {time.monotonic() - began:.0f} s")
        return self.db_size()

    def server_cpu(self) -> dict[str, float]:
        pid_file = self.cluster.data_dir / "postmaster.pid"
        return {"postgres": tree_cpu(int(pid_file.read_text().split()[0]))}

    def strongroom_env(self, locations: str, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "BACKUP_", "STRONGROOM_", "R2_", "B2_", "DJANGO_"))
        }
        env.update(
            DATABASE_URL=self.cluster.url(DB, user=BACKUP_ROLE, password=self.role_password),
            BACKUP_ENCRYPTION_KEY=self.key,
            BACKUP_LOCAL_PATH=str(self.local_dir),
            BACKUP_PG_BINDIR=self.cluster.bindir,
            STRONGROOM_LOCATIONS=locations,
            STRONGROOM_CATALOG_URL=f"sqlite:///{self.work / 'catalog.sqlite3'}",
            **extra,
        )
        return env

    def cli(
        self, args: Sequence[str], checkout: Path | None = None
    ) -> tuple[Measured, dict[str, Any]]:
        """The CLI of this checkout, or of ``checkout`` (its own ``.venv``), storage ``local``."""
        if checkout is None:
            return self.strongroom(args, "local")
        run = self._measure(
            [str(checkout / ".venv" / "bin" / "strongroom"), *args, "--json", "--no-progress"],
            env=self.strongroom_env("local"),
            stdout_path=self.work / "strongroom.json",
        ).check()
        return run, json.loads(run.stdout)

    def log_statements(self) -> None:
        """Log every server statement of ``LOG_MIN_MS`` or more, for the per-stage breakdown,
        and every temporary file (a sort or hash that spilled past ``work_mem``)."""
        self.cluster.execute(f"ALTER SYSTEM SET log_min_duration_statement = {LOG_MIN_MS}")
        self.cluster.execute("ALTER SYSTEM SET log_temp_files = 0")
        self.cluster.execute("SELECT pg_reload_conf()")

    def _measure(
        self, argv: Sequence[str], *, env: Mapping[str, str], stdout_path: Path | None = None
    ) -> Measured:
        """run.py's measurement, plus the server statements it caused (seconds by kind)."""
        offset = self.cluster.log_file.stat().st_size
        run = super()._measure(argv, env=env, stdout_path=stdout_path)
        with self.cluster.log_file.open("rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode("utf-8", "replace")
        self.statements = statement_seconds(text)
        self.temp_bytes = temp_file_bytes(text)
        return run

    def tenant_share(self) -> dict[str, Any]:
        """The measured tenant's rows against every tenant's, per table and in all."""
        with psycopg.connect(self.cluster.url(DB), autocommit=True) as conn:
            share: dict[str, Any] = {}
            mine = total = 0
            for table in ("customers", "inventory_items", "sales", "sale_items"):
                row = conn.execute(
                    sql.SQL(
                        "SELECT count(*) FILTER (WHERE tenant_id = %s), count(*) FROM {}"
                    ).format(sql.Identifier(table)),
                    (self.tenant,),
                ).fetchone()
                assert row is not None
                share[table] = [int(row[0]), int(row[1])]
                mine, total = mine + int(row[0]), total + int(row[1])
            share["all"] = [mine, total, mine / total]
            return share

    def digests(self) -> dict[str, str]:
        """Per tenant: one digest over its rows of every tenant table (order-independent)."""
        query = """
            SELECT t, md5(string_agg(h, '' ORDER BY h)) FROM (
              SELECT id::text AS t, md5(x::text) AS h FROM tenants x
              UNION ALL SELECT tenant_id::text, md5(x::text) FROM customers x
              UNION ALL SELECT tenant_id::text, md5(x::text) FROM inventory_items x
              UNION ALL SELECT tenant_id::text, md5(x::text) FROM sales x
              UNION ALL SELECT tenant_id::text, md5(x::text) FROM sale_items x) r
            GROUP BY t"""
        with psycopg.connect(self.cluster.url(DB), autocommit=True) as conn:
            return {str(t): str(d) for t, d in conn.execute(query).fetchall()}

    def spoil_tenant(self) -> None:
        """What the restore undoes: ``incident`` of the tenant's sales deleted (their lines by
        cascade), its customers changed."""
        with psycopg.connect(self.cluster.url(DB), autocommit=True) as conn:
            conn.execute(
                "DELETE FROM sales WHERE tenant_id = %s AND id IN (SELECT id FROM sales WHERE"
                " tenant_id = %s ORDER BY id LIMIT (SELECT (count(*) * %s)::bigint FROM sales"
                " WHERE tenant_id = %s))",
                (self.tenant, self.tenant, self.incident, self.tenant),
            )
            conn.execute(
                "UPDATE customers SET loyalty_points = 0 WHERE tenant_id = %s", (self.tenant,)
            )


#: The demo's tenant tables, parents first, with their key.
CHILD_TABLES = ("customers", "inventory_items", "sales", "sale_items")
#: The probe's ways (``replace all``, what the loader did before it wrote only the changes, was
#: measured and dropped: docs/benchmarks.md's notes keep its numbers).
PROBE_WAYS = (
    "diff",
    "sale_items only, into the table",
    "sale_items only, into the table, ordered by sale_id",
    "sale_items only, into a copy without foreign keys",
)


def probe_replace(bench: TenantBench, rounds: int) -> dict[str, list[dict[str, float]]]:
    """What replacing a spoiled tenant costs the server, each way rolled back.

    ``diff`` deletes only rows the backup lacks, inserts only rows the target lacks and updates
    only rows that differ, each one set-based statement per table (the loader's way); the
    ``sale_items only`` ways isolate the largest table's insert: as staged, sorted by the key
    of its largest parent (as the loader sorts it), and into a copy without foreign keys. The
    backup's rows stand in as unlogged copies taken before the spoiling (the loader's staged
    tables).
    """
    tables = CHILD_TABLES
    with psycopg.connect(bench.cluster.url(DB), autocommit=True) as conn:
        for t in tables:
            conn.execute(
                sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT * FROM {} WHERE tenant_id = %s").format(
                    sql.Identifier(f"probe_{t}"), sql.Identifier(t)
                ),
                (bench.tenant,),
            )
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(f"probe_{t}")))
    bench.spoil_tenant()
    found: dict[str, list[dict[str, float]]] = {way: [] for way in PROBE_WAYS}
    for _ in range(rounds):
        for way in found:
            found[way].append(_probe_once(bench, way, tables))
            log(f"  probe {way}: {found[way][-1]}")
    with psycopg.connect(bench.cluster.url(DB), autocommit=True) as conn:
        for t in tables:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(f"probe_{t}")))
    return found


def _probe_once(bench: TenantBench, way: str, tables: Sequence[str]) -> dict[str, float]:
    bench.quiesce()
    before, began = bench.server_cpu()["postgres"], time.perf_counter()
    with psycopg.connect(bench.cluster.url(DB), autocommit=False) as conn:
        for statement in _probe_statements(way, tables):
            conn.execute(statement, {"t": bench.tenant})
        conn.rollback()
    wall = time.perf_counter() - began
    return {"wall": round(wall, 2), "server_cpu": round(bench.server_cpu()["postgres"] - before, 2)}


def _probe_statements(way: str, tables: Sequence[str]) -> list[sql.SQL | sql.Composed]:
    if way.startswith("sale_items only"):
        return _probe_foreign_keys(way)
    out: list[sql.SQL | sql.Composed] = []
    mine = sql.SQL("tenant_id = %(t)s")
    for t in reversed(tables):  # children first
        table, kept = sql.Identifier(t), sql.Identifier(f"probe_{t}")
        out.append(
            sql.SQL(
                "DELETE FROM {} x WHERE {} AND NOT EXISTS (SELECT 1 FROM {} k WHERE k.id = x.id)"
            ).format(table, mine, kept)
        )
    for t in tables:  # parents first
        table, kept = sql.Identifier(t), sql.Identifier(f"probe_{t}")
        out.append(
            sql.SQL(
                "INSERT INTO {} SELECT k.* FROM {} k"
                " WHERE NOT EXISTS (SELECT 1 FROM {} x WHERE x.id = k.id)"
            ).format(table, kept, table)
        )
    for t in tables:
        out.append(_probe_update(t))
    return out


def _probe_foreign_keys(way: str) -> list[sql.SQL | sql.Composed]:
    """The tenant's sale_items inserted with their three foreign-key checks (as staged, or
    sorted by ``sale_id``), and without.

    Both first put the spoiled sales back (the same work in each). The copy (``LIKE ...
    INCLUDING INDEXES``) has the same four indexes but starts empty, so its index upkeep is
    somewhat cheaper than the real table's: the difference is an upper bound on the checks.
    """
    sales_back = sql.SQL(  # the spoiled sales first, in both: their items refer to them
        "INSERT INTO sales SELECT k.* FROM probe_sales k"
        " WHERE NOT EXISTS (SELECT 1 FROM sales x WHERE x.id = k.id)"
    )
    delete = sql.SQL("DELETE FROM sale_items WHERE tenant_id = %(t)s")
    if "into the table" in way:
        ordered = " ORDER BY sale_id" if way.endswith("ordered by sale_id") else ""
        return [
            sales_back,
            delete,
            sql.SQL("INSERT INTO sale_items SELECT * FROM probe_sale_items" + ordered),
        ]
    return [
        sales_back,
        delete,
        sql.SQL("CREATE TEMP TABLE probe_copy (LIKE sale_items INCLUDING INDEXES)"),
        sql.SQL("INSERT INTO probe_copy SELECT * FROM probe_sale_items"),
    ]


def _probe_update(t: str) -> sql.Composed:
    """``UPDATE`` the rows whose columns differ from the kept copy's (matched by id)."""
    columns = {
        "customers": ("name", "email", "phone", "loyalty_points", "created_at"),
        "inventory_items": ("sku", "name", "karat", "weight_grams", "cost_price", "sale_price",
                            "quantity", "attributes", "photo", "created_at"),
        "sales": ("customer_id", "sold_at", "total", "status", "notes"),
        "sale_items": ("sale_id", "item_id", "quantity", "unit_price"),
    }[t]  # fmt: skip
    sets = sql.SQL(", ").join(sql.SQL("{0} = k.{0}").format(sql.Identifier(c)) for c in columns)
    return sql.SQL(
        "UPDATE {} x SET {} FROM {} k WHERE x.id = k.id AND x.tenant_id = %(t)s"
        " AND ROW(x.*) IS DISTINCT FROM ROW(k.*)"
    ).format(sql.Identifier(t), sets, sql.Identifier(f"probe_{t}"))


def tenant_restore(
    bench: TenantBench,
    args: Sequence[str],
    before: Mapping[str, str],
    checkout: Path | None = None,
) -> Any:
    bench.spoil_tenant()
    run, doc = bench.cli(
        ["tenant", "restore", *args, "--target", bench.cluster.url(DB), "--replace"], checkout
    )
    if doc.get("status") != "RESTORED":
        raise RuntimeError(f"tenant restore {' '.join(args)}: {doc.get('status')}")
    after = bench.digests()
    if after != before:
        changed = sorted(t for t in before if after.get(t) != before[t])
        raise RuntimeError(f"tenant restore {' '.join(args)} left tenants changed: {changed}")
    return run, doc


def measure_all(
    bench: TenantBench, repeats: int, probe: bool, reference: Path | None = None
) -> Results:
    result = Results(bench.db_size())
    bench.dump_floor()  # warm-up, not counted
    before = bench.digests()
    bench.log_statements()
    for index in range(repeats):
        log(f"round {index + 1} of {repeats}")
        run, full = bench.backup("local")
        result.add("full_backup", run, full, bench)
        name = bench.new_target()
        args = [
            "restore",
            full["id"],
            "--from",
            "local",
            "-j",
            "2",
            "--target",
            bench.cluster.url(name),
        ]
        run, doc = bench.cli(args)
        bench.drop(name)
        if doc.get("status") != "RESTORED":
            raise RuntimeError(f"full restore of {full['id']}: {doc.get('status')}")
        result.add("full_restore", run, doc, bench)
        run, tb = bench.cli(["tenant", "backup", bench.tenant])
        if tb.get("status") != "COMPLETED":
            raise RuntimeError(f"tenant backup: {tb.get('status')}: {tb.get('error')}")
        result.add("tenant_backup", run, tb, bench)
        run, doc = tenant_restore(bench, [tb["id"]], before)
        result.add("tenant_restore", run, doc, bench)
        run, doc = tenant_restore(bench, [full["id"], "--tenant", bench.tenant], before)
        result.add("extract_restore", run, doc, bench)
        if reference is not None:
            run, doc = tenant_restore(bench, [tb["id"]], before, reference)
            result.add("tenant_restore_ref", run, doc, bench)
            extract = [full["id"], "--tenant", bench.tenant]
            run, doc = tenant_restore(bench, extract, before, reference)
            result.add("extract_restore_ref", run, doc, bench)
    if probe:
        log("probe: replacing the spoiled tenant, all rows against only the differences")
        result.info["probe"] = probe_replace(bench, 2)
    last_full, last_tenant = result.reports["full_backup"][-1], result.reports["tenant_backup"][-1]
    result.info |= {
        "full_raw_dump_bytes": last_full.get("raw_size_bytes"),
        "full_stored_bytes": last_full.get("size_bytes"),
        "tenant_raw_bytes": last_tenant.get("raw_size_bytes"),
        "tenant_stored_bytes": last_tenant.get("size_bytes"),
        "tenant_rows": result.reports["tenant_restore"][-1].get("tables"),
    }
    return result


# -- report ------------------------------------------------------------------------------------


def table_lines(result: Results) -> list[str]:
    lines = [
        "| measurement | median s | runs (s) | ratio | target | CPU s (median, by program) |",
        "|---|---:|---|---:|---|---|",
    ]
    for name, (label, base, target) in STEPS.items():
        if name not in result.runs:
            continue
        ratio = result.ratio(name)
        verdict = ""
        if target is not None and ratio is not None:
            verdict = f"≤ {target}: {'met' if ratio <= target else 'MISSED'}"
        elif base:
            verdict = f"(÷ {base.replace('_', ' ')})"
        walls = ", ".join(f"{r.wall:.1f}" for r in result.runs[name])
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in result.cpu(name).items() if v >= 0.05)
        shown = "—" if ratio is None else f"{ratio:.3f}"
        lines.append(
            f"| {label} | {result.median(name):.2f} | {walls} | {shown} | {verdict} | {cpu} |"
        )
    return lines


def stage_lines(result: Results) -> list[str]:
    lines = ["| measurement | stages strongroom reports (median s) |", "|---|---|"]
    for name, (label, _, _) in STEPS.items():
        if name in result.reports:
            stages = result.stages(name)
            text = ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) or "—"
            lines.append(f"| {label} | {text} |")
    return lines


def statement_lines(result: Results) -> list[str]:
    """Where the server's time went: logged statements, median seconds per run, largest first."""
    lines = [
        f"| measurement | server statements of ≥ {LOG_MIN_MS} ms (median s per run) "
        "| temporary files (median MB per run) |",
        "|---|---|---:|",
    ]
    for name, (label, _, _) in STEPS.items():
        runs = [r.get("server_statements") or {} for r in result.reports.get(name, [])]
        keys = {k for r in runs for k in r}
        medians = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
        top = sorted(medians.items(), key=lambda kv: -kv[1])
        shown = [f"{k} {v:.1f}" for k, v in top if v >= 0.2][:8]
        reports = result.reports.get(name, [])
        spilled = [float(r.get("server_temp_file_bytes") or 0) for r in reports]
        if shown:
            total = sum(medians.values())
            temp = statistics.median(spilled) / 1e6 if spilled else 0.0
            lines.append(f"| {label} | {', '.join(shown)} (all logged: {total:.1f}) | {temp:.0f} |")
    return lines


def probe_lines(result: Results) -> list[str]:
    probe = result.info.get("probe")
    if not probe:
        return []
    lines = [
        "Replacing the spoiled tenant's rows, server side only, each in one transaction rolled "
        "back (the backup's rows pre-staged, as the loader's temporary tables are):",
        "",
        "| way | wall s (runs) | server CPU s (runs) |",
        "|---|---|---|",
    ]
    for way, runs in probe.items():
        walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
        cpus = ", ".join(f"{r['server_cpu']:.1f}" for r in runs)
        lines.append(f"| {way} | {walls} | {cpus} |")
    return [*lines, ""]


def section(result: Results, info: Mapping[str, Any], command: str) -> str:
    m = info["machine"]
    share = info["share"]["all"]
    i = result.info
    lines = [
        BEGIN,
        "## One tenant against the whole database",
        "",
        f"Measured {info['date']} with `{command}` ({info['minutes']:.0f} min in all): a "
        f"{result.db_bytes / GIB:.2f} GiB ({result.db_bytes / 1e9:.2f} GB) demo shop of "
        f"{TENANTS} tenants; the measured tenant holds {share[0]:,} of {share[1]:,} rows of the "
        f"tenant tables ({share[2]:.1%}). Full dump {i['full_raw_dump_bytes'] / 1e9:.2f} GB "
        f"(stored {i['full_stored_bytes'] / 1e9:.3f} GB); tenant export "
        f"{i['tenant_raw_bytes'] / 1e6:.0f} MB (stored {i['tenant_stored_bytes'] / 1e6:.1f} MB).",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu'] or 'unknown'}), shared with other work while "
        f"this ran (load average {m['loadavg_start'][0]:.2f} at the start, "
        f"{info['loadavg_end'][0]:.2f} at the end): wall times are noisy, the CPU seconds are "
        "the steadier measure. Each run is the CLI as a subprocess, storage `local`; rounds "
        "alternate full backup, full restore into a new database, tenant backup, tenant restore "
        "in place, extraction from the full backup"
        + (
            f", then both tenant restores again by the reference checkout `{info['reference']}`"
            if info.get("reference")
            else ""
        )
        + f". Before each tenant restore the tenant is spoiled ({info['incident']:.0%} of its "
        "sales deleted with their lines, its customers changed); after it, every tenant's "
        "digest equals the one taken before the rounds.",
        "",
        *table_lines(result),
        "",
        "CPU s: user + system seconds of each program of the command's process tree "
        "(`strongroom` is the Python process; `other` the rest of the tree) and of the PostgreSQL "
        "server meanwhile (every backend).",
        "",
        *stage_lines(result),
        "",
        *statement_lines(result),
        "",
        *probe_lines(result),
        END,
    ]
    return "\n".join(lines)


def write_report(out: Path, result: Results, info: Mapping[str, Any], command: str) -> None:
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    new = section(result, info, command)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + new + rest.split(END, 1)[1]
    else:
        if NOTES_MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + NOTES_MARKER + "\n"
        head, notes = text.split(NOTES_MARKER, 1)
        text = head + NOTES_MARKER + "\n" + new + "\n" + notes
    out.write_text(text)
    raw = {
        **info,
        "db_bytes": result.db_bytes,
        "info": result.info,
        "ratios": {n: result.ratio(n) for n in STEPS if n in result.runs},
        "runs": {
            n: [
                {
                    "wall": m.wall,
                    "cpu_seconds": m.cpu_seconds,
                    "cpu_by_program": cpu_split(m),
                    "server_cpu_seconds": m.other_cpu,
                    "python_rss": m.root_rss,
                    "stages": rep.get("stages"),
                }
                for m, rep in zip(ms, result.reports[n], strict=True)
            ]
            for n, ms in result.runs.items()
        },
    }
    out.with_name("benchmarks-tenant.json").write_text(
        json.dumps(raw, indent=2, default=str) + "\n"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0, help="database size in GiB (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-probe", action="store_true", help="skip the replace-all/diff probe")
    p.add_argument(
        "--incident",
        type=float,
        default=0.5,
        help="share of the tenant's sales each incident deletes (default 0.5)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="another checkout (with its .venv) whose CLI also runs both tenant restores",
    )
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "bench/tenant_run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    precompile(ROOT, *([args.reference] if args.reference else []))
    work = Path(tempfile.mkdtemp(prefix="strongroom-tenant-bench-", dir=args.workdir or "/tmp"))
    with _terminate_cleanly(), contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        log(f"work directory {work}")
        cluster = stack.enter_context(PgCluster())
        log(f"PostgreSQL on {cluster.port}")
        bench = TenantBench(cluster, work)
        bench.incident = args.incident
        info: dict[str, Any] = {"machine": machine(cluster)}
        log(f"creating the demo database, {args.size_gb:g} GiB, {TENANTS} tenants")
        bench.create(int(args.size_gb * GIB))
        rows = cluster.execute("SELECT id::text FROM tenants ORDER BY slug LIMIT 1", dbname=DB)
        bench.tenant = str(rows[0][0])
        info["share"] = bench.tenant_share()
        log(f"tenant {bench.tenant}: {info['share']['all'][2]:.1%} of the rows")
        result = measure_all(bench, args.repeats, not args.no_probe, args.reference)
        info.update(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            minutes=(time.monotonic() - started) / 60,
            loadavg_end=os.getloadavg(),
            tenant=bench.tenant,
            incident=args.incident,
            reference=str(args.reference) if args.reference else None,
        )
        print("\n".join(table_lines(result)))
        print("\n".join(stage_lines(result)))
        print("\n".join(statement_lines(result)))
        print("\n".join(probe_lines(result)))
        write_report(args.out, result, info, command)
        log(f"wrote {args.out} and {args.out.with_name('benchmarks-tenant.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
