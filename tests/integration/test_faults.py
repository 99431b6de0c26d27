"""The bad night, on real servers: a full disk, a silent cloud, signals, a lock on the target.

Each fault must end the run at once with its real cause in one line, a final status in the
catalog, and nothing left behind: no child process, no partial or scratch file, no open
multipart upload, no IN_PROGRESS row. A full disk is a real tmpfs of a few MiB (CI runs as
root); a dead cloud is a socket that accepts connections and never answers; signals are real
signals to the real ``strongroom`` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from clisupport import CLI, Cli, SilentServer, clean_environ, command, require_cli

from strongroom.catalog import bootstrap
from strongroom.core import crypto
from strongroom.core.storage.s3 import MiB
from strongroom.sandbox.demo_data import DemoDatabase
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

#: Small retry budgets so a dead server is reported in seconds, not minutes.
FAST = {"MAX_ATTEMPTS": "2", "CONNECT_TIMEOUT": "1", "READ_TIMEOUT": "5"}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"fault-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(
    tmp_path: Path, seaweed: SeaweedServer, demo_db: DemoDatabase, prefix: str
) -> dict[str, str]:
    """Local disk and R2 (optional), a fresh SQLite catalog and a new key."""
    (tmp_path / "local").mkdir()
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    bootstrap.ensure_django(catalog)
    r2 = {f"R2_{option}": value for option, value in FAST.items()}
    return {
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local,r2",
        **seaweed.settings("r2", "r2-backups"),
        "R2_PREFIX": prefix,
        **r2,
        "STRONGROOM_CATALOG_URL": catalog,
    }


@pytest.fixture
def env(tmp_path: Path, settings: dict[str, str]) -> dict[str, str]:
    require_cli()
    (tmp_path / "home").mkdir(exist_ok=True)
    base = clean_environ()
    return {**base, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path), **settings}


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    return command(env, timeout=120)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (tmpfs), so writes fail with ENOSPC as on a full disk."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}", pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# -- helpers -----------------------------------------------------------------------------------


def add_ballast(url: str, mib: int) -> None:
    """A table of incompressible bytes, so the dump is about ``2 * mib`` MB."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.ballast (id int PRIMARY KEY, payload bytea NOT NULL)")
        conn.execute("ALTER TABLE public.ballast ALTER payload SET STORAGE EXTERNAL")
        with conn.cursor().copy("COPY public.ballast (id, payload) FROM STDIN") as copy:
            for i in range(mib):
                copy.write_row((i, os.urandom(MiB)))


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The operator's one line: non-zero exit, no traceback, the error last on stderr."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("strongroom: error: "), done.stderr
    return lines[-1]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def open_uploads(server: SeaweedServer, bucket: str, prefix: str) -> list[str]:
    reply = server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/")
    return [u["Key"] for u in reply.get("Uploads", [])]


def bucket_keys(server: SeaweedServer, bucket: str, prefix: str) -> set[str]:
    reply = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {item["Key"] for item in reply.get("Contents", [])}


#: The children strongroom starts; PostgreSQL's own backends (an autovacuum worker of the test
#: database, say) also name the database and are no concern here.
CHILDREN = (b"pg_dump", b"pg_restore")


def processes_naming(text: str) -> list[str]:
    """Live pg_dump/pg_restore processes (workers too) whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        program = Path(raw.split(b"\0", 1)[0].decode(errors="replace")).name.encode()
        if state != "Z" and program in CHILDREN and text.encode() in raw:
            found.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def catalog_rows() -> list[tuple[str, str, dict[str, tuple[str, str]]]]:
    """(status, error, {location: (copy status, copy error)}) of every backup, newest first."""
    from strongroom.catalog import store

    return [
        (b.status, b.error, {c.location: (c.status, c.error) for c in store.copies_of(b.id)})
        for b in store.list_backups()
    ]


# -- a full disk -------------------------------------------------------------------------------


def test_a_full_local_disk_fails_the_backup_at_once_with_the_space_problem(
    env: dict[str, str],
    cli: Cli,
    tiny_disk: Path,
    seaweed: SeaweedServer,
    prefix: str,
    demo_db: DemoDatabase,
) -> None:
    """The required local disk fills up: pg_dump is stopped there and then, the line says
    'no space left' with the path, the catalog says FAILED, and nothing is left anywhere."""
    add_ballast(demo_db.admin_url, 24)  # a dump of ~48 MB into a 4 MiB disk
    done = cli("backup", BACKUP_LOCAL_PATH=str(tiny_disk), BACKUP_PG_DUMP_TIMEOUT="600")
    line = error_line(done)
    assert "no space left on device" in line and str(tiny_disk) in line, line
    assert "BACKUP_PG_DUMP_TIMEOUT" not in line  # the real cause, not the timeout's advice
    bootstrap.ensure_django(env["STRONGROOM_CATALOG_URL"])
    ((status, error, copies),) = catalog_rows()
    assert status == "FAILED" and "no space left on device" in error
    assert copies["local"][0] == "FAILED" and "no space left" in copies["local"][1]
    assert copies["r2"][0] == "FAILED"
    assert files_under(tiny_disk) == set()  # the partial file is gone
    assert open_uploads(seaweed, "r2-backups", prefix) == []
    assert bucket_keys(seaweed, "r2-backups", prefix) == set()
    assert processes_naming(demo_db.name) == []  # pg_dump did not outlive the run


# -- signals -----------------------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    """Poll ``condition`` until true; fail (never hang) if ``proc`` ends or 60 s pass first."""
    deadline = time.monotonic() + 60
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended before {what}: {err or out}", pytrace=False)
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within 60 s", pytrace=False)
        time.sleep(0.02)


def start(env: dict[str, str], *args: str, **overrides: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CLI), *args],
        env={**env, **overrides},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ended(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return proc.returncode, err


def gone(text: str, within: float = 15.0) -> bool:
    """Whether no process mentioning ``text`` is left after at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while processes_naming(text):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_backup_stops_everything_and_says_so(
    env: dict[str, str],
    seaweed: SeaweedServer,
    prefix: str,
    demo_db: DemoDatabase,
    signum: signal.Signals,
) -> None:
    """SIGTERM (systemd, Docker, ``timeout``) or Ctrl-C mid-stream: one line, 128+signal,
    pg_dump gone, no partial file, no open multipart upload, the record FAILED with why."""
    add_ballast(demo_db.admin_url, 24)
    local = Path(env["BACKUP_LOCAL_PATH"])
    proc = start(env, "backup", "--no-progress", R2_PART_SIZE=str(5 * MiB))
    wait_for(
        "a partial local file of 1 MiB",
        lambda: any(p.stat().st_size > MiB for p in partial_files(local) if p.exists()),
        proc,
    )
    proc.send_signal(signum)
    code, err = ended(proc)
    assert code == 128 + signum, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"strongroom: error: interrupted by {signum.name}")
    assert gone(demo_db.name), processes_naming(demo_db.name)
    assert partial_files(local) == [] and files_under(local) == set()
    assert open_uploads(seaweed, "r2-backups", prefix) == []
    assert bucket_keys(seaweed, "r2-backups", prefix) == set()
    bootstrap.ensure_django(env["STRONGROOM_CATALOG_URL"])
    ((status, error, copies),) = catalog_rows()
    assert (status, error) == ("FAILED", f"interrupted by {signum.name}"), copies
    assert {name: state for name, (state, _) in copies.items()} == {
        "local": "FAILED",
        "r2": "FAILED",
    }


def test_a_signalled_or_killed_restore_leaves_no_pg_restore_and_no_scratch(
    env: dict[str, str],
    cli: Cli,
    tmp_path: Path,
    demo_db: DemoDatabase,
    pg_cluster: PgCluster,
) -> None:
    """SIGTERM of a restore while pg_restore writes: 143, pg_restore and its workers gone, the
    decrypted scratch archive removed; SIGKILL of strongroom: pg_restore dies with it."""
    add_ballast(demo_db.admin_url, 48)
    done = cli("backup", "--no-progress", STRONGROOM_LOCATIONS="local")
    assert done.returncode == 0, done.stderr
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for signum in (signal.SIGTERM, signal.SIGKILL):
        name = f"restored_{uuid.uuid4().hex[:10]}"
        try:
            proc = start(
                env,
                "restore",
                "--latest",
                "--no-progress",
                "--target",
                pg_cluster.url(name),
                STRONGROOM_LOCATIONS="local",
                BACKUP_RESTORE_SCRATCH_DIR=str(scratch),
            )
            wait_for("pg_restore", lambda name=name: bool(processes_naming(name)), proc)
            time.sleep(0.3)  # mid-restore
            proc.send_signal(signum)
            code, err = ended(proc)
            if signum == signal.SIGTERM:
                assert code == 143, err
                lines = err.strip().splitlines()
                assert len(lines) == 1, err
                line = lines[0]
                assert line.startswith("strongroom: error: interrupted by SIGTERM")
                assert list(scratch.iterdir()) == []  # the decrypted archive is gone
            else:
                assert code == -signal.SIGKILL
                (left,) = scratch.iterdir()  # what a killed process cannot remove itself
            assert gone(name), processes_naming(name)
        finally:
            pg_cluster.drop_database(name)
    # the next restore on this host removes the killed one's scratch (its owner has ended)
    name = f"restored_{uuid.uuid4().hex[:10]}"
    try:
        done = cli(
            "restore",
            "--latest",
            "--no-progress",
            "--target",
            pg_cluster.url(name),
            STRONGROOM_LOCATIONS="local",
            BACKUP_RESTORE_SCRATCH_DIR=str(scratch),
        )
        assert done.returncode == 0, done.stderr
        assert not left.exists() and list(scratch.iterdir()) == []
    finally:
        pg_cluster.drop_database(name)
