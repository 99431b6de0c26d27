"""WAL archiving, base backup and PITR restore against their floors, in one invocation.

    .venv/bin/python bench/wal_run.py [--scale 20] [--seconds 30] [--rounds 3] [--out FILE.md]

It starts a throwaway PostgreSQL cluster (``wal_compression = off``, ``archive_timeout`` small)
and SeaweedFS (buckets ``r2-backups``/``b2-backups``), fills it with ``pgbench -i -s SCALE`` and
then, round by round so machine noise hits every candidate alike, runs ``pgbench -T SECONDS -c 2``
with ``archive_command`` set (``ALTER SYSTEM`` + reload, the archiver stays the same process) to:

* ``cp``: ``test ! -f DIR/%f && cp %p DIR/%f``, PostgreSQL's documented example (the floor);
* ``ours_all``: ``strongroom wal-push %p`` to local + R2 + B2 (SeaweedFS on loopback);
* ``ours_local``: the same with ``STRONGROOM_LOCATIONS=local``;
* ``barman``: ``barman-cloud-wal-archive`` (``barman[cloud]`` installed into a venv in the
  bench's temporary directory, never into the project) to the R2 bucket of the same SeaweedFS.

Every archive_command runs under a timing shim that appends start, end and exit status of each
call to a file, so the per-call latency is measured the same way for all. Every 0.5 s the bench
samples ``pg_stat_archiver.archived_count`` and the number of ``.ready`` files; after pgbench
stops it waits until no ``.ready`` file is left (the drain). CPU seconds: the archiver's process
tree (it reaps every archive_command, so its children's CPU lands in its ``cutime``), the whole
PostgreSQL server, pgbench, and SeaweedFS.

Then: ``strongroom base-backup`` against ``pg_basebackup -Ft -D - -X none > /dev/null``,
alternating, with CPU seconds per program; and a PITR: more pgbench load after the last base
backup, then ``strongroom pitr-restore --latest`` into a new directory and the server started
until it has promoted.

Results are printed, written as a section of ``--out`` below its notes marker (``bench/run.py``
keeps it; a re-run replaces only this section) and in full to ``docs/benchmarks-wal.json``.
Servers and files are removed at the end, also on failure, Ctrl-C or SIGTERM. Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import site
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from procmon import Measured, measure, tree_cpu
from run import NOTES_MARKER, ROOT, _terminate_cleanly, log, machine, precompile
from strongroom.core import crypto
from strongroom.sandbox.launcher import interpreter, write_launcher
from strongroom.sandbox.pgcluster import SUPERUSER, PgCluster, archive_settings
from strongroom.sandbox.ports import free_port
from strongroom.sandbox.seaweed import SeaweedServer

SERVER_USER = "postgres"
BUCKETS = {"r2": "r2-backups", "b2": "b2-backups"}
SEGMENT = 16 << 20
#: ``BACKUP_WAL_ASYNC_IDLE_SECONDS`` of the asynchronous candidate: short, so its uploader is
#: gone (and its CPU counted) before the next candidate's run.
UPLOADER_IDLE = 8.0
SECTION_START = "<!-- wal benchmark: start -->"
SECTION_END = "<!-- wal benchmark: end -->"
CANDIDATES: tuple[str, ...] = ("cp", "ours_all", "ours_all_async", "ours_local", "barman")
LABELS = {
    "cp": "`test ! -f DIR/%f && cp %p DIR/%f` (floor)",
    "ours_all": "`strongroom wal-push %p` → local + r2 + b2",
    "ours_all_async": "`strongroom wal-push %p` → local + r2 + b2, `BACKUP_WAL_ASYNC=true`",
    "ours_local": "`strongroom wal-push %p` → local",
    "barman": "`barman-cloud-wal-archive` → one S3 bucket",
    "ours_all_ref": "`strongroom wal-push %p` → local + r2 + b2, code of `--reference REV`",
}
SHIM = """#!/bin/sh
# time one archive_command call: start end status, one line per call
log="$1"; shift
s=$(date +%s.%N)
"$@"
rc=$?
echo "$s $(date +%s.%N) $rc" >> "$log"
exit $rc
"""


def give(path: Path, mode: int | None = None) -> None:
    """Hand ``path`` to the server's OS user (the archive_command runs as that user)."""
    if mode is not None:
        os.chmod(path, mode)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def as_server(argv: Sequence[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *argv] if os.geteuid() == 0 else list(argv)


@dataclass
class ArchiveRun:
    """One pgbench load with one archive_command."""

    name: str
    load_seconds: float
    tps: float
    segments_during_load: int
    rate_during_load: float
    drain_seconds: float
    segments_total: int
    sustained_rate: float
    max_ready: int
    ready_at_end_of_load: int
    latencies: list[float]
    failures: int
    cpu: dict[str, float]
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))] if lat else None,
            "max_ms": 1000 * lat[-1] if lat else None,
            "calls": len(lat),
        }


class WalBench:
    """The servers, the archive_command candidates and the measurement steps."""

    def __init__(self, cluster: PgCluster, s3: SeaweedServer, work: Path, barman: Path) -> None:
        self.cluster = cluster
        self.s3 = s3
        self.work = work
        self.barman = barman
        self.launcher = write_launcher(work / "strongroom")
        self.shim = work / "shim.sh"
        self.shim.write_text(SHIM)
        give(self.shim, 0o755)
        for sub in ("local", "spool", "spool-local", "spool-async", "cp", "latency", "local-only"):
            (work / sub).mkdir()
            give(work / sub, 0o700)
        self.settings = {
            "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
            "BACKUP_LOCAL_PATH": str(work / "local"),
            **s3.settings("r2", BUCKETS["r2"]),
            **s3.settings("b2", BUCKETS["b2"]),
            "BACKUP_WAL_SPOOL_DIR": str(work / "spool"),
            "STRONGROOM_CATALOG_URL": f"sqlite:///{work}/catalog.sqlite3",
            "DATABASE_URL": cluster.url("postgres"),
        }
        self.config = self.write_config(work / "strongroom.env", self.settings)
        local_only = {
            **self.settings,
            "STRONGROOM_LOCATIONS": "local",
            "BACKUP_LOCAL_PATH": str(work / "local-only"),
            "BACKUP_WAL_SPOOL_DIR": str(work / "spool-local"),
        }
        self.config_local = self.write_config(work / "strongroom-local.env", local_only)
        asynchronous = {
            **self.settings,
            "BACKUP_WAL_SPOOL_DIR": str(work / "spool-async"),
            "BACKUP_WAL_ASYNC": "true",
            "BACKUP_WAL_ASYNC_IDLE_SECONDS": str(UPLOADER_IDLE),
        }
        self.config_async = self.write_config(work / "strongroom-async.env", asynchronous)
        self.barman_wrapper = self.write_barman_wrapper()
        self.counter = 0

    def write_config(self, path: Path, settings: Mapping[str, str]) -> Path:
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        give(path, 0o600)
        return path

    def write_barman_wrapper(self) -> Path:
        """A script the server's user runs: the S3 keys in its environment, never in argv."""
        env = {
            "AWS_ACCESS_KEY_ID": self.s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        lines = ["#!/bin/sh", *(f"export {k}={shlex.quote(v)}" for k, v in env.items())]
        argv = [str(self.barman / "bin" / "barman-cloud-wal-archive"), "--endpoint-url",
                self.s3.endpoint_url, "--cloud-provider", "aws-s3",
                f"s3://{BUCKETS['r2']}/barman", "bench"]  # fmt: skip
        lines.append(f'exec {shlex.join(argv)} "$1"')
        path = self.work / "barman-archive.sh"
        path.write_text("\n".join(lines) + "\n")
        give(path, 0o700)
        return path

    def command(self, name: str) -> str:
        """The archive_command of candidate ``name``, under the timing shim."""
        self.counter += 1
        lat = self.work / "latency" / f"{self.counter:02d}-{name}.log"
        inner = {
            "cp": f"sh -c 'test ! -f {self.work}/cp/$1 && cp $0 {self.work}/cp/$1' %p %f",
            "ours_all": f"{self.launcher} --config {self.config} wal-push %p",
            "ours_local": f"{self.launcher} --config {self.config_local} wal-push %p",
            "ours_all_async": f"{self.launcher} --config {self.config_async} wal-push %p",
            "barman": f"{self.barman_wrapper} %p",
            "ours_all_ref": f"{self.work / 'strongroom-ref'} --config {self.config} wal-push %p",
        }[name]
        return f"{self.shim} {lat} {inner}"

    def set_archive_command(self, command: str) -> None:
        self.cluster.execute(
            sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command))
        )
        self.cluster.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)

    # -- samples ---------------------------------------------------------------------------

    def archived(self) -> tuple[int, int]:
        row = self.cluster.execute("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
        return int(row[0]), int(row[1])

    def ready(self) -> int:
        status = self.cluster.wal_dir / "archive_status"
        return sum(1 for p in status.iterdir() if p.name.endswith(".ready"))

    def archiver_pid(self) -> int:
        rows = self.cluster.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'"
        )
        return int(rows[0][0])

    def postmaster(self) -> int:
        return int((self.cluster.data_dir / "postmaster.pid").read_text().split()[0])

    def uploader_pids(self) -> list[int]:
        """The background uploaders of this cluster (detached: not in the archiver's tree)."""
        wanted = f"wal-uploader {self.cluster.data_dir}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if wanted in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                        pids.append(int(entry.name))
        return pids

    def settle_uploader(self, cpu: dict[str, float]) -> None:
        """Add the uploader's CPU to the archiver's (it is still there, idle, right after a
        drain), then wait until it has left, so it pushes nothing of the next run."""
        uploader = sum(tree_cpu(pid) for pid in self.uploader_pids())
        cpu["uploader"] = uploader
        cpu["archiver_tree"] += uploader
        deadline = time.monotonic() + UPLOADER_IDLE + 30
        while self.uploader_pids():
            if time.monotonic() > deadline:
                raise RuntimeError("the background uploader did not leave when idle")
            time.sleep(0.1)

    def cpu_now(self) -> dict[str, float]:
        return {
            "archiver_tree": tree_cpu(self.archiver_pid()),
            "postgres_all": tree_cpu(self.postmaster()),
            "s3": tree_cpu(self.s3.pid or 0),
        }

    def pgbench_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.cluster.host, PGPORT=str(self.cluster.port), PGUSER=SUPERUSER,
                   PGDATABASE="bench")  # fmt: skip
        return env

    def pgbench_init(self, scale: int) -> None:
        self.cluster.create_database("bench")
        argv = [self.cluster.binary("pgbench"), "-i", "-q", "-s", str(scale), "bench"]
        subprocess.run(argv, env=self.pgbench_env(), check=True, capture_output=True)

    def pgbench(self, seconds: int) -> Measured:
        argv = [self.cluster.binary("pgbench"), "-n", "-T", str(seconds), "-c", "2", "bench"]
        return measure(argv, env=self.pgbench_env(), stdout_path=self.work / "pgbench.out")

    def wait_drained(self, timeout: float) -> float:
        """Switch the open segment away, then wait until no ``.ready`` file is left."""
        began = time.monotonic()
        while self.ready() > 0:
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"archive backlog not drained in {timeout:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - began

    # -- one archive run -------------------------------------------------------------------

    def archive_run(self, name: str, seconds: int, drain_timeout: float) -> ArchiveRun:
        self.wait_drained(drain_timeout)
        command = self.command(name)
        lat_file = Path(command.split()[1])
        self.set_archive_command(command)
        self.cluster.execute("CHECKPOINT")
        count0, failed0 = self.archived()
        cpu0 = self.cpu_now()
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        t0 = time.monotonic()

        def sampler() -> None:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    samples.append((time.monotonic() - t0, self.archived()[0] - count0,
                                    self.ready()))  # fmt: skip
                stop.wait(0.5)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        bench = self.pgbench(seconds).check()
        load = time.monotonic() - t0
        at_load_end = self.archived()[0] - count0
        ready_end = self.ready()
        drain = self.wait_drained(drain_timeout)
        total_time = time.monotonic() - t0
        stop.set()
        thread.join()
        count1, failed1 = self.archived()
        cpu1 = self.cpu_now()
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
        cpu["pgbench"] = bench.cpu_seconds
        if name.endswith("_async"):
            self.settle_uploader(cpu)
        tps = _tps(bench.stdout)
        latencies, failures = _latencies(lat_file)
        total = count1 - count0
        run = ArchiveRun(
            name=name,
            load_seconds=load,
            tps=tps,
            segments_during_load=at_load_end,
            rate_during_load=at_load_end / load,
            drain_seconds=drain,
            segments_total=total,
            sustained_rate=total / total_time,
            max_ready=max((s[2] for s in samples), default=0),
            ready_at_end_of_load=ready_end,
            latencies=latencies,
            failures=max(failures, failed1 - failed0),
            cpu=cpu,
            samples=samples,
        )
        s = run.summary()
        log(f"  {name}: {total} segments in {total_time:.1f} s ({run.sustained_rate:.2f}/s), "
            f"load {load:.0f} s {at_load_end} seg, drain {drain:.1f} s, max .ready "
            f"{run.max_ready}, p50 {s['p50_ms'] or 0:.0f} ms, archiver CPU "
            f"{cpu['archiver_tree']:.1f} s, failures {run.failures}")  # fmt: skip
        return run

    # -- a backlog, drained ---------------------------------------------------------------

    def backlog_run(self, name: str, rows: int, drain_timeout: float) -> dict[str, Any]:
        """Archiving paused (empty archive_command: PostgreSQL keeps marking ``.ready``), WAL
        written as fast as the server can, then ``name`` set and the backlog timed to empty:
        the archive_command's own capacity, not pgbench's rate."""
        self.wait_drained(drain_timeout)
        self.set_archive_command("")
        self.cluster.execute("CHECKPOINT")
        self.cluster.execute(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= %s",
            (rows,),
            dbname="bench",
        )
        self.cluster.execute("SELECT pg_switch_wal()")
        time.sleep(1.0)
        backlog = self.ready()
        command = self.command(name)
        lat_file = Path(command.split()[1])
        count0 = self.archived()[0]
        cpu0 = self.cpu_now()
        t0 = time.monotonic()
        self.set_archive_command(command)
        drain = self.wait_drained(drain_timeout) + 0.5  # set_archive_command's pause
        cpu1 = self.cpu_now()
        archived = self.archived()[0] - count0
        latencies, failures = _latencies(lat_file)
        lat = sorted(latencies)
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
        if name.endswith("_async"):
            self.settle_uploader(cpu)
        result = {
            "name": name,
            "backlog": backlog,
            "archived": archived,
            "seconds": time.monotonic() - t0,
            "drain_seconds": drain,
            "rate": backlog / drain,
            "calls": len(lat),
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "max_ms": 1000 * lat[-1] if lat else None,
            "failures": failures,
            "cpu": cpu,
        }
        log(f"  backlog {name}: {backlog} segments drained in {drain:.1f} s "
            f"({result['rate']:.2f}/s), {len(lat)} calls, p50 {result['p50_ms'] or 0:.0f} ms, "
            f"archiver CPU {result['cpu']['archiver_tree']:.1f} s")  # fmt: skip
        return result

    # -- base backups ----------------------------------------------------------------------

    def server_cpu(self) -> dict[str, float]:
        return {"postgres_all": tree_cpu(self.postmaster()), "s3": tree_cpu(self.s3.pid or 0)}

    def _timed(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
               stdout: Path | None = None) -> Measured:  # fmt: skip
        self.cluster.execute("CHECKPOINT")
        os.sync()
        time.sleep(1.0)
        before = self.server_cpu()
        run = measure(argv, env=env, stdout_path=stdout)
        after = self.server_cpu()
        run.other_cpu = {k: after[k] - before[k] for k in after}
        return run.check()

    def basebackup_floor(self) -> Measured:
        argv = [self.cluster.binary("pg_basebackup"), "-Ft", "-D", "-", "-X", "none",
                "-c", "fast", "-d", self.cluster.url("postgres")]  # fmt: skip
        return self._timed(argv)

    def base_backup(
        self, *, local_only: bool = False, reference: bool = False
    ) -> tuple[Measured, dict[str, Any]]:
        """``strongroom base-backup``; ``reference``: the ``--reference`` revision's."""
        out = self.work / "base.json"
        config = self.config_local if local_only else self.config
        launcher = self.work / "strongroom-ref" if reference else self.launcher
        argv = as_server([str(launcher), "--config", str(config), "base-backup",
                          "--json"])  # fmt: skip
        run = self._timed(argv, env=_clean_env(), stdout=out)
        return run, json.loads(run.stdout)

    # -- PITR ------------------------------------------------------------------------------

    def pitr(self, *, reference: bool = False) -> dict[str, Any]:
        """``pitr-restore --latest``, then the server started to promotion; ``reference``: with
        the ``--reference`` revision's ``pitr-restore`` and ``wal-fetch``."""
        suffix = "-ref" if reference else ""
        launcher = self.work / "strongroom-ref" if reference else self.launcher
        target = self.work / f"recovered{suffix}"
        socket = self.work / f"recovered{suffix}-socket"
        socket.mkdir()
        give(socket, 0o700)
        out = self.work / f"pitr{suffix}.json"
        argv = as_server([str(launcher), "--config", str(self.config), "pitr-restore",
                          "--latest", "--pgdata", str(target), "--strongroom-path",
                          str(launcher), "--json"])  # fmt: skip
        t0 = time.monotonic()
        restore = measure(argv, env=_clean_env(), stdout_path=out, cwd=self.work).check()
        restore_s = time.monotonic() - t0
        report = json.loads(restore.stdout)
        port = free_port()
        with (target / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {port}\nunix_socket_directories = "
                       f"'{socket}'\narchive_mode = off\n")  # fmt: skip
        server_log = self.work / f"recovered{suffix}.log"
        pg_ctl = as_server([self.cluster.binary("pg_ctl"), "-D", str(target), "-l",
                            str(server_log), "-w", "-t", "1800", "start"])  # fmt: skip
        t1 = time.monotonic()
        try:
            started = measure(pg_ctl, env=_clean_env())
            if started.returncode != 0:
                raise RuntimeError(f"recovered server did not start: {server_log.read_text()}")
            url = f"postgresql://{SERVER_USER}@127.0.0.1:{port}/postgres"
            while True:
                with psycopg.connect(url, autocommit=True) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    break
                if time.monotonic() - t1 > 3600:
                    raise RuntimeError("recovered server never promoted")
                time.sleep(0.2)
            promote_s = time.monotonic() - t1
            with psycopg.connect(url[: -len("postgres")] + "bench", autocommit=True) as conn:
                rows = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()
            balance_after = balance(url[: -len("postgres")] + "bench")
        finally:
            subprocess.run(
                as_server(
                    [
                        self.cluster.binary("pg_ctl"),
                        "-D",
                        str(target),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                ),
                env=_clean_env(),
                capture_output=True,
                check=False,
            )
        return {
            "restore_seconds": restore_s,
            "start_to_promoted_seconds": promote_s,
            "total_seconds": restore_s + promote_s,
            "restore_cpu": restore.cpu_by_name(),
            "history_rows_after": int(rows[0]) if rows else None,
            "balance_after": balance_after,
            "base_backup": report.get("backup_id") or report.get("id"),
            "report": report,
        }


def _drains(runs: Sequence[dict[str, Any]]) -> list[str]:
    return [f"{r['drain_seconds']:.1f}" for r in runs]


def _clean_env() -> dict[str, str]:
    prefixes = ("PG", "BACKUP_", "STRONGROOM_", "R2_", "B2_", "DJANGO_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _tps(out: str) -> float:
    match = re.search(r"tps = ([0-9.]+)", out)
    return float(match.group(1)) if match else 0.0


def _latencies(path: Path) -> tuple[list[float], int]:
    if not path.exists():
        return [], 0
    lat, failed = [], 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            lat.append(float(parts[1]) - float(parts[0]))
            failed += parts[2] != "0"
    return lat, failed


def reference_launcher(work: Path, rev: str) -> None:
    """A ``strongroom`` running the source of git revision ``rev`` (before/after, one run)."""
    src = work / "reference-src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    precompile(src)
    # the executable's entry point where the revision has one (its lean wal-push/wal-fetch)
    entry = "entry" if (src / "src/strongroom/interfaces/entry.py").is_file() else "cli"
    sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
    program = (
        "import site, sys\n"
        f"for p in {sites!r}: site.addsitedir(p)\n"
        f"sys.path.insert(0, {str(src / 'src')!r})\n"  # ahead of the editable install's path
        f"from strongroom.interfaces.{entry} import main\n"
        "sys.exit(main())\n"
    )
    command = f"exec {shlex.quote(interpreter())} -E -s -c {shlex.quote(program)}"
    path = work / "strongroom-ref"
    path.write_text(f'#!/bin/sh\n{command} "$@"\n')
    os.chmod(path, 0o755)


def install_barman(work: Path) -> tuple[Path, str]:
    """``barman[cloud]`` in its own venv (a system Python the server's OS user can run)."""
    venv = work / "barman-venv"
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "barman[cloud]"], check=True,
                   capture_output=True)  # fmt: skip
    version = subprocess.run([str(venv / "bin" / "barman-cloud-wal-archive"), "--version"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return venv, (version.stdout + version.stderr).strip()


# -- report ------------------------------------------------------------------------------------


def _med(runs: Sequence[ArchiveRun], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in runs)


def section(results: dict[str, Any], command: str) -> str:
    """The report; a phase given no rounds (``--rounds 0``, ``--backlog-rounds 0``,
    ``--base-repeats 0``, ``--pitr-seconds 0``) is left out."""
    m = results["machine"]
    lines = [
        SECTION_START,
        "## WAL archiving, base backup and PITR",
        "",
        f"Measured {results['date']} with `{command}` ({results['minutes']:.0f} min); "
        f"{m['nproc']} CPUs, load average {results['loadavg_start'][0]:.2f} at start, "
        f"{results['loadavg_end'][0]:.2f} at end (the machine is shared). "
        f"`pgbench -i -s {results['scale']}`: database {results['db_bytes'] / 1e6:.0f} MB; "
        f"each run `pgbench -n -T {results['seconds']} -c 2`, `wal_compression = off`, "
        f"`archive_timeout = {results['archive_timeout']}`; {results['rounds']} rounds, "
        f"candidates alternating. {results['barman_version']}.",
        "",
    ]
    if any(results["archive"].values()):
        lines += _archive_lines(results["archive"])
    if any(results["backlog"].values()):
        lines += _backlog_lines(results)
    if results["base"]["ours"]:
        lines += _base_and_pitr_lines(results)
    return "\n".join([*lines, SECTION_END])


def _archive_lines(runs: dict[str, list[ArchiveRun]]) -> list[str]:
    cp_rate = _med(runs["cp"], "sustained_rate")
    barman_rate = _med(runs["barman"], "sustained_rate")
    lines = [
        "| archive_command | segments (median) | sustained seg/s | seg/s during load | drain s "
        "| max `.ready` | p50 / p95 ms per call | archiver-tree CPU s | CPU ms per segment "
        "| pgbench tps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CANDIDATES:
        rs = runs[name]
        lat = sorted(x for r in rs for x in r.latencies)
        p50 = 1000 * statistics.median(lat) if lat else 0
        p95 = 1000 * lat[int(0.95 * (len(lat) - 1))] if lat else 0
        cpu = statistics.median(r.cpu["archiver_tree"] for r in rs)
        per_seg = (
            1000
            * sum(r.cpu["archiver_tree"] for r in rs)
            / max(1, sum(r.segments_total for r in rs))
        )
        lines.append(
            f"| {LABELS[name]} | {_med(rs, 'segments_total'):.0f} "
            f"| {_med(rs, 'sustained_rate'):.2f} "
            f"({', '.join(f'{r.sustained_rate:.2f}' for r in rs)}) "
            f"| {_med(rs, 'rate_during_load'):.2f} | {_med(rs, 'drain_seconds'):.1f} "
            f"| {max(r.max_ready for r in rs)} | {p50:.0f} / {p95:.0f} | {cpu:.1f} "
            f"| {per_seg:.0f} | {_med(rs, 'tps'):.0f} |"
        )
    ours = _med(runs["ours_all"], "sustained_rate")
    lines += [
        "",
        f"Targets: `wal-push` → local + r2 + b2 sustained {ours:.2f} seg/s = "
        f"{ours / barman_rate:.1f}x barman-cloud-wal-archive's {barman_rate:.2f} "
        f"(target ≥ 3x: {'met' if ours >= 3 * barman_rate else 'MISSED'}) and "
        f"{ours / cp_rate:.2f}x the cp floor's {cp_rate:.2f} (target ≥ 0.5x: "
        f"{'met' if ours >= 0.5 * cp_rate else 'MISSED'}).",
        "",
    ]
    return lines


def _backlog_lines(results: dict[str, Any]) -> list[str]:
    bl = results["backlog"]
    bl_rate = {n: statistics.median(r["rate"] for r in bl[n]) for n in CANDIDATES}
    lines = [
        f"Capacity: archiving paused, `UPDATE pgbench_accounts ... WHERE aid <= "
        f"{results['backlog_rows']}` right after a checkpoint, then the command set and the "
        "`.ready` backlog timed until empty:",
        "",
        "| archive_command | backlog (segments) | drain s (runs) | segments/s | calls | p50 ms "
        "| archiver-tree CPU s | S3 server CPU s | CPU ms per segment (archiver + S3) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CANDIDATES:
        rs = bl[name]
        segs = sum(r["backlog"] for r in rs)
        arch = sum(r["cpu"]["archiver_tree"] for r in rs)
        s3 = sum(r["cpu"]["s3"] for r in rs)
        lines.append(
            f"| {LABELS[name]} | {statistics.median(r['backlog'] for r in rs):.0f} "
            f"| {', '.join(_drains(rs))} | {bl_rate[name]:.2f} "
            f"| {statistics.median(r['calls'] for r in rs):.0f} "
            f"| {statistics.median((r['p50_ms'] or 0) for r in rs):.0f} | {arch / len(rs):.1f} "
            f"| {s3 / len(rs):.1f} | {1000 * (arch + s3) / max(1, segs):.0f} |"
        )
    cap = bl_rate["ours_all"]
    lines += [
        "",
        f"Capacity targets: `wal-push` → local + r2 + b2 {cap:.2f} seg/s = "
        f"{cap / bl_rate['barman']:.1f}x barman-cloud-wal-archive (≥ 3x: "
        f"{'met' if cap >= 3 * bl_rate['barman'] else 'MISSED'}), "
        f"{cap / bl_rate['cp']:.2f}x cp (≥ 0.5x: "
        f"{'met' if cap >= 0.5 * bl_rate['cp'] else 'MISSED'}).",
        "",
    ]
    return lines


def _base_and_pitr_lines(results: dict[str, Any]) -> list[str]:
    base = results["base"]
    floor = statistics.median(r["wall"] for r in base["floor"])
    ours_b = statistics.median(r["wall"] for r in base["ours"])
    rows = [("floor", "`pg_basebackup -Ft -D - -X none > /dev/null` (floor)"),
            ("ours", "`strongroom base-backup` → local + r2 + b2")]  # fmt: skip
    if base.get("ours_local"):
        rows.append(("ours_local", "`strongroom base-backup` → local"))
    if base.get("ours_ref"):
        before = f"before ({results.get('reference', '?')})"
        rows += [("ours_ref", f"`strongroom base-backup` → local + r2 + b2, {before}"),
                 ("ours_local_ref", f"`strongroom base-backup` → local, {before}")]  # fmt: skip
    lines = [
        "| base backup | median s | runs (s) | CPU s per program (median run) | server CPU s |",
        "|---|---:|---|---|---:|",
    ]
    for key, label in rows:
        rs = base[key]
        mid = sorted(rs, key=lambda r: r["wall"])[len(rs) // 2]
        progs = ", ".join(f"{k} {v:.1f}" for k, v in mid["cpu_by_name"].items() if v >= 0.05)
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        lines.append(f"| {label} | {statistics.median(r['wall'] for r in rs):.1f} | {walls} "
                     f"| {progs} | {mid['server_cpu']['postgres_all']:.1f} |")  # fmt: skip
    lines += [
        "",
        f"Ratio {ours_b / floor:.2f} (target ≤ 1.25: "
        f"{'met' if ours_b <= 1.25 * floor else 'MISSED'}){_local_ratio(base, floor)}; base backup "
        f"{base['raw_bytes'] / 1e6:.0f} MB tar, {base['stored_bytes'] / 1e6:.0f} MB stored.",
        "",
    ]
    p = results["pitr"]
    if not p:
        return lines
    if "error" in p:
        return [*lines, f"PITR failed: `{p['error'][-300:]}`", ""]
    lines += [
        f"PITR: base backup of {base['raw_bytes'] / 1e6:.0f} MB plus "
        f"{p['wal_bytes'] / 1e6:.0f} MB of WAL ({p['wal_bytes'] / SEGMENT:.0f} segments) "
        f"written after it in {results['pitr_seconds']} s of pgbench"
        f"{' and bulk updates' if results.get('pitr_wal_mb') else ''}: `pitr-restore --latest` "
        f"{p['restore_seconds']:.1f} s, server start to "
        f"promoted {p['start_to_promoted_seconds']:.1f} s, total {p['total_seconds']:.1f} s "
        f"({p['history_rows_after']} pgbench_history rows after promotion, as on the source: "
        f"{p['history_rows_source']}; sum(abalance) {p.get('balance_after')}, on the source "
        f"{p.get('balance_source')}).",
        "",
    ]
    ref = p.get("reference")
    if ref and "error" not in ref:
        lines += [
            f"The same PITR with the reference's `pitr-restore` and `wal-fetch` "
            f"({results.get('reference')}), right after: `pitr-restore --latest` "
            f"{ref['restore_seconds']:.1f} s, server start to promoted "
            f"{ref['start_to_promoted_seconds']:.1f} s, total {ref['total_seconds']:.1f} s "
            f"({ref['history_rows_after']} pgbench_history rows; sum(abalance) "
            f"{ref.get('balance_after')}).",
            "",
        ]
    elif ref:
        lines += [f"The reference's PITR failed: `{ref['error'][-300:]}`", ""]
    return lines


def write_report(out: Path, results: dict[str, Any], command: str) -> None:
    new = section(results, command)
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1]
        text = head + new + tail
    else:
        if NOTES_MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + NOTES_MARKER + "\n"
        head, notes = text.split(NOTES_MARKER, 1)
        text = head + NOTES_MARKER + "\n" + new + "\n" + notes
    out.write_text(text)
    raw = {**results, "archive": {n: [vars(r) | r.summary() for r in rs]
                                  for n, rs in results["archive"].items()}}  # fmt: skip
    out.with_name("benchmarks-wal.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")


def _local_ratio(base: dict[str, Any], floor: float) -> str:
    if not base.get("ours_local"):
        return ""
    local = statistics.median(r["wall"] for r in base["ours_local"])
    text = f"; to local only {local / floor:.2f} (SeaweedFS's CPU not on this host's bill)"
    if base.get("ours_ref"):
        ref = statistics.median(r["wall"] for r in base["ours_ref"])
        ref_local = statistics.median(r["wall"] for r in base["ours_local_ref"])
        text += f"; the reference {ref / floor:.2f} and {ref_local / floor:.2f} to local only"
    return text


def _base_entry(run: Measured) -> dict[str, Any]:
    return {"wall": run.wall, "cpu_seconds": run.cpu_seconds, "cpu_by_name": run.cpu_by_name(),
            "server_cpu": run.other_cpu}  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--scale", type=int, default=20, help="pgbench scale (default 20, ~300 MB)")
    p.add_argument("--seconds", type=int, default=30, help="pgbench -T per run (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of all candidates (default 3)")
    p.add_argument("--base-repeats", type=int, default=2, help="base backup rounds (default 2)")
    p.add_argument("--pitr-seconds", type=int, default=60, help="pgbench -T after the base")
    p.add_argument(
        "--pitr-wal-mb",
        type=int,
        default=0,
        help="then bulk updates until this many MB of WAL follow the base backup",
    )
    p.add_argument("--backlog-rounds", type=int, default=2, help="backlog drains (default 2)")
    p.add_argument("--backlog-rows", type=int, default=1_000_000,
                   help="pgbench_accounts rows updated for the backlog")  # fmt: skip
    p.add_argument("--archive-timeout", type=int, default=5)
    p.add_argument(
        "--reference", default="", help="also measure wal-push and base-backup at this git revision"
    )
    p.add_argument("--drain-timeout", type=float, default=900)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    return p.parse_args(argv)


def write_wal(bench: WalBench, lsn0: str, wal_bytes: int, drain_timeout: float) -> None:
    """Bulk updates of ``pgbench_accounts`` (archiving on) until ``wal_bytes`` of WAL follow
    ``lsn0``: the "1 GB of WAL" a PITR replays, written in minutes instead of pgbench's hour."""
    cluster, batch, start = bench.cluster, 200_000, 1
    accounts = int(cluster.execute("SELECT max(aid) FROM pgbench_accounts", dbname="bench")[0][0])
    while True:
        done = cluster.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,))
        if int(done[0][0]) >= wal_bytes:
            break
        cluster.execute(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN %s AND %s",
            (start, start + batch - 1),
            dbname="bench",
        )
        start = start + batch if start + batch <= accounts else 1
        if bench.ready() > 64:  # let archiving keep up, as it would under a real load
            bench.wait_drained(drain_timeout)
    log(f"  {int(done[0][0]) / 1e6:.0f} MB of WAL after the base backup")


def balance(url: str) -> int:
    """``sum(abalance)`` of ``pgbench_accounts``: every update replayed or not."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT sum(abalance) FROM pgbench_accounts").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def pitr_phase(bench: WalBench, args: argparse.Namespace) -> dict[str, Any]:
    """More pgbench after the last base backup, then a PITR to the end of the archive."""
    cluster = bench.cluster
    log(f"PITR: {args.pitr_seconds} s of pgbench after the last base backup")
    lsn0 = cluster.execute("SELECT pg_current_wal_lsn()")[0][0]
    bench.pgbench(args.pitr_seconds).check()
    if args.pitr_wal_mb:
        write_wal(bench, lsn0, args.pitr_wal_mb * 1_000_000, args.drain_timeout)
    rows = cluster.execute("SELECT count(*) FROM pgbench_history", dbname="bench")
    wal = cluster.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,))
    cluster.execute("SELECT pg_switch_wal()")
    bench.wait_drained(args.drain_timeout)
    pitr: dict[str, Any] = {
        "history_rows_source": int(rows[0][0]),
        "wal_bytes": int(wal[0][0]),
        "balance_source": balance(cluster.url("bench")),
    }
    failures = (RuntimeError, OSError, psycopg.Error, json.JSONDecodeError)
    try:
        pitr.update(bench.pitr())
        log(f"  PITR {pitr['total_seconds']:.1f} s")
    except failures as exc:
        pitr["error"] = str(exc)[-2000:]  # the rest is still reported
        log(f"  PITR failed: {exc}")
    if args.reference:  # after this checkout's: any warming of caches favours the reference
        try:
            pitr["reference"] = bench.pitr(reference=True)
            log(f"  PITR, reference {pitr['reference']['total_seconds']:.1f} s")
        except failures as exc:
            pitr["reference"] = {"error": str(exc)[-2000:]}
    return pitr


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "bench/wal_run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="strongroom-walbench-", dir=args.workdir or "/tmp"))
    with _terminate_cleanly(), contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        log(f"work directory {work}; installing barman[cloud] into its own venv")
        barman, barman_version = install_barman(work)
        give(work, 0o755)
        s3 = stack.enter_context(SeaweedServer(work / "seaweed", buckets=BUCKETS.values()))
        settings = archive_settings("/bin/true", archive_timeout=args.archive_timeout)
        settings.update(wal_compression="off", max_wal_size="1GB")
        cluster = stack.enter_context(PgCluster(settings=settings))
        log(f"PostgreSQL on {cluster.port}, SeaweedFS S3 on {s3.endpoint_url}")
        results: dict[str, Any] = {"machine": machine(cluster), "scale": args.scale,
                                   "seconds": args.seconds, "rounds": args.rounds,
                                   "archive_timeout": args.archive_timeout,
                                   "loadavg_start": os.getloadavg(),
                                   "barman_version": barman_version}  # fmt: skip
        precompile(ROOT)
        bench = WalBench(cluster, s3, work, barman)
        if args.reference:
            reference_launcher(work, args.reference)
            global CANDIDATES
            CANDIDATES = (*CANDIDATES, "ours_all_ref")
            results["reference"] = args.reference
        bench.set_archive_command(bench.command("ours_all"))
        log(f"pgbench -i -s {args.scale}")
        bench.pgbench_init(args.scale)
        results["db_bytes"] = int(cluster.execute("SELECT pg_database_size('bench')")[0][0])
        cluster.execute("SELECT pg_switch_wal()")
        bench.wait_drained(args.drain_timeout)
        runs: dict[str, list[ArchiveRun]] = {n: [] for n in CANDIDATES}
        for r in range(args.rounds):
            log(f"archive round {r + 1}/{args.rounds}")
            order = CANDIDATES if r % 2 == 0 else tuple(reversed(CANDIDATES))
            for name in order:
                runs[name].append(bench.archive_run(name, args.seconds, args.drain_timeout))
        results["archive"] = runs
        backlog: dict[str, list[dict[str, Any]]] = {n: [] for n in CANDIDATES}
        for r in range(args.backlog_rounds):
            log(f"backlog round {r + 1}/{args.backlog_rounds}")
            order = CANDIDATES if r % 2 == 0 else tuple(reversed(CANDIDATES))
            for name in order:
                backlog[name].append(bench.backlog_run(name, args.backlog_rows, args.drain_timeout))
        results["backlog"] = backlog
        results["backlog_rows"] = args.backlog_rows
        base: dict[str, Any] = {"floor": [], "ours": [], "ours_local": []}
        if args.base_repeats:
            log("base backups")
            bench.set_archive_command(bench.command("ours_all"))
        versions = (False, True) if args.reference else (False,)
        for r in range(args.base_repeats):
            base["floor"].append(_base_entry(bench.basebackup_floor()))
            for reference in versions if r % 2 == 0 else versions[::-1]:
                suffix = "_ref" if reference else ""
                run, doc = bench.base_backup(reference=reference)
                base.setdefault("ours" + suffix, []).append(_base_entry(run))
                if not reference:
                    base["raw_bytes"] = doc["raw_size_bytes"]
                    base["stored_bytes"] = doc["size_bytes"]
                bench.set_archive_command(bench.command("ours_local"))  # its WAL where it looks
                local, _ = bench.base_backup(local_only=True, reference=reference)
                bench.set_archive_command(bench.command("ours_all"))
                base.setdefault("ours_local" + suffix, []).append(_base_entry(local))
                log(
                    f"  floor {base['floor'][-1]['wall']:.1f} s, base-backup{suffix} "
                    f"{run.wall:.1f} s, to local only {local.wall:.1f} s"
                )
        results["base"] = base
        results["pitr_seconds"] = args.pitr_seconds
        results["pitr_wal_mb"] = args.pitr_wal_mb
        results["pitr"] = {}
        if args.base_repeats and args.pitr_seconds:
            # The PITR starts from the newest base backup, which must be this checkout's, to
            # every location: the local-only runs archived their WAL elsewhere meanwhile, a gap
            # the all-locations archive has before this backup's start, never after it.
            bench.base_backup()
            results["pitr"] = pitr_phase(bench, args)
        results.update(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                       minutes=(time.monotonic() - started) / 60,
                       loadavg_end=os.getloadavg())  # fmt: skip
        write_report(args.out, results, command)
        print(section(results, command))
        log(f"wrote {args.out} and {args.out.with_name('benchmarks-wal.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
