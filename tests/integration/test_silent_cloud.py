"""A cloud that accepts connections and never answers must not hold up a backup or the check.

Real servers: local disk (required) and R2 on the session's SeaweedFS, B2 (optional) behind a
socket that accepts and stays silent, or behind a TCP proxy in front of SeaweedFS that goes
silent mid-upload. The backup must end PARTIAL with B2's copy FAILED "no answer in N s" and the
others STORED; ``check`` must answer within its deadline. The subprocess timeouts are far below
what a silent endpoint used to cost (minutes), so a hang fails loudly.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from clisupport import Cli, SilentServer, clean_environ, command, require_cli

from strongroom.catalog import bootstrap
from strongroom.core import crypto
from strongroom.core.storage.s3 import MiB
from strongroom.sandbox.demo_data import DemoDatabase
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

#: The deadlines under test, short so the tests are quick.
SILENCE = "3"
#: Far below the minutes a silent endpoint used to cost, far above what the deadlines allow.
BOUND = 60


class StallingProxy:
    """A TCP proxy to ``upstream`` that forwards until clients sent ``limit`` bytes, then
    forwards nothing more either way and closes nothing: a location silent mid-upload."""

    def __init__(self, upstream: tuple[str, int], limit: int) -> None:
        self.upstream = upstream
        self.left = limit
        self.lock = threading.Lock()
        self.stalled = threading.Event()
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            server = socket.create_connection(self.upstream)
            self.held += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _allowed(self, data: bytes, counted: bool) -> bytes:
        """What of ``data`` may pass: client bytes up to the limit, replies until the stall."""
        with self.lock:
            if not counted:
                return b"" if self.stalled.is_set() else data
            data = data[: max(0, self.left)]
            self.left -= len(data)
            if self.left <= 0:
                self.stalled.set()
            return data

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        while not self.stalled.is_set():
            try:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(self._allowed(data, counted))
            except OSError:
                break
        self.stop.wait()  # silent from here on: nothing read, nothing sent, nothing closed

    def close(self) -> None:
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"silent-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def env(
    tmp_path: Path, seaweed: SeaweedServer, demo_db: DemoDatabase, prefix: str
) -> dict[str, str]:
    """Local (required) and R2 on SeaweedFS, B2 optional (its endpoint set by each test)."""
    require_cli()
    (tmp_path / "local").mkdir()
    (tmp_path / "home").mkdir()
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    bootstrap.ensure_django(catalog)
    base = clean_environ()
    return {
        **base,
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path),
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local,r2,b2",
        **seaweed.settings("r2", "r2-backups"),
        "R2_PREFIX": prefix,
        **seaweed.settings("b2", "b2-backups"),
        "B2_PREFIX": prefix,
        "BACKUP_LOCATION_TIMEOUT": SILENCE,
        "BACKUP_CHECK_TIMEOUT": SILENCE,
        "STRONGROOM_CATALOG_URL": catalog,
    }


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    """``cli(*args, timeout=..., **overrides)``: the command, killed (and failed) on a hang."""

    return command(env, timeout=BOUND)


# -- helpers -----------------------------------------------------------------------------------


def copies() -> tuple[str, str, dict[str, tuple[str, str]]]:
    """(status, error, {location: (copy status, copy error)}) of the only backup."""
    from strongroom.catalog import store

    (backup,) = store.list_backups()
    found = {c.location: (c.status, c.error) for c in store.copies_of(backup.id)}
    return backup.status, backup.error, found


def add_ballast(url: str, mib: int) -> None:
    """A table of incompressible bytes, so the dump spans several S3 parts."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.ballast (id int PRIMARY KEY, payload bytea NOT NULL)")
        conn.execute("ALTER TABLE public.ballast ALTER payload SET STORAGE EXTERNAL")
        with conn.cursor().copy("COPY public.ballast (id, payload) FROM STDIN") as copy:
            for i in range(mib):
                copy.write_row((i, os.urandom(MiB)))


def open_uploads(server: SeaweedServer, prefix: str) -> list[str]:
    reply = server.client().list_multipart_uploads(Bucket="b2-backups", Prefix=prefix + "/")
    return [u["Key"] for u in reply.get("Uploads", [])]


def location_line(stdout: str, name: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln[5:].startswith(f"location {name} ")]
    return line


# -- the tests ---------------------------------------------------------------------------------


def test_a_silent_optional_location_is_dropped_and_the_backup_ends_partial(
    env: dict[str, str], cli: Cli, silent: SilentServer
) -> None:
    done = cli("backup", "--no-progress", B2_ENDPOINT_URL=silent.url)
    assert done.returncode == 6, done.stdout + done.stderr  # BACKUP_INCOMPLETE: PARTIAL
    assert "Traceback" not in done.stderr, done.stderr
    bootstrap.ensure_django(env["STRONGROOM_CATALOG_URL"])
    status, error, found = copies()
    assert status == "PARTIAL" and f"b2: no answer in {SILENCE} s" in error, error
    assert found["b2"][0] == "FAILED" and f"no answer in {SILENCE} s" in found["b2"][1]
    assert found["local"] == ("STORED", "") and found["r2"] == ("STORED", "")


def test_check_answers_within_its_deadline_and_names_the_silent_location(
    cli: Cli, silent: SilentServer
) -> None:
    assert cli("backup", "--no-progress", B2_ENDPOINT_URL=silent.url).returncode == 6
    margin = int(SILENCE) + 20  # the deadline, plus starting Python and the other probes
    done = cli("check", timeout=margin, B2_ENDPOINT_URL=silent.url)
    assert done.returncode == 0, done.stdout + done.stderr  # optional: a warning
    b2 = location_line(done.stdout, "b2")
    assert b2.startswith("warn ") and b2.endswith(
        f"no answer in {SILENCE} s (BACKUP_CHECK_TIMEOUT)"
    )
    assert location_line(done.stdout, "r2").startswith("ok   ")
    assert location_line(done.stdout, "local").startswith("ok   ")

    required = {"STRONGROOM_REQUIRED_LOCATIONS": "local,b2", "B2_ENDPOINT_URL": silent.url}
    done = cli("check", timeout=margin, **required)
    assert done.returncode == 8, done.stdout + done.stderr
    assert location_line(done.stdout, "b2").startswith("FAIL ")


def test_a_location_silent_mid_upload_is_dropped_after_the_stall_time(
    env: dict[str, str], cli: Cli, seaweed: SeaweedServer, demo_db: DemoDatabase, prefix: str
) -> None:
    add_ballast(demo_db.admin_url, 8)  # a dump of several 5 MiB parts
    host, port = seaweed.endpoint_url.removeprefix("http://").split(":")
    proxy = StallingProxy((host, int(port)), limit=MiB)  # silent inside the first part
    try:
        done = cli(
            "backup",
            "--no-progress",
            B2_ENDPOINT_URL=proxy.url,
            B2_PART_SIZE=str(5 * MiB),
            B2_READ_TIMEOUT="120",  # the stall detector, not botocore, must give up
        )
        assert proxy.stalled.is_set()
    finally:
        proxy.close()
    assert done.returncode == 6, done.stdout + done.stderr
    bootstrap.ensure_django(env["STRONGROOM_CATALOG_URL"])
    status, _, found = copies()
    assert status == "PARTIAL"
    assert found["b2"][0] == "FAILED", found
    assert f"no answer in {SILENCE} s (accepted nothing mid-upload)" in found["b2"][1]
    assert found["local"] == ("STORED", "") and found["r2"] == ("STORED", "")

    # the abandoned multipart upload is removed by the next run's cleanup
    assert cli("backup", "--no-progress").returncode == 0
    assert open_uploads(seaweed, prefix) == []
