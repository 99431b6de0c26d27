"""Continuous WAL archiving against a real cluster whose ``archive_command`` is ``wal-push``.

One archiving cluster for the module (``archive_mode = on``, this tool run by the ``postgres``
OS user with only its config file), SeaweedFS as R2 and B2, segments forced with
``pg_switch_wal()``. Every command here runs as the server's OS user, as PostgreSQL runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from strongroom.config import load_config
from strongroom.core import crypto
from strongroom.core.manifest import Manifest
from strongroom.core.wal_spool import Spool, file_stamp
from strongroom.errors import ExitCode
from strongroom.sandbox.launcher import write_launcher
from strongroom.sandbox.pgcluster import PgCluster, archive_settings
from strongroom.sandbox.ports import free_port
from strongroom.sandbox.seaweed import SeaweedServer
from strongroom.services.runtime import Runtime

SERVER_USER = "postgres"


@dataclass
class Archive:
    """The archiving cluster and everything its ``archive_command`` uses."""

    pg: PgCluster
    base: Path
    launcher: Path
    config_file: Path
    settings: dict[str, str]
    scope: str

    @property
    def local(self) -> Path:
        return self.base / "local"

    @property
    def spool(self) -> Path:
        return self.base / "spool"

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        config: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``strongroom --config FILE ARGS`` as the server's OS user, as PostgreSQL runs it."""
        prefix = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        argv = [*prefix, "env", *extra, str(self.launcher)]
        argv += ["--config", str(config or self.config_file), *args]
        return subprocess.run(
            argv, cwd=cwd or self.base, capture_output=True, text=True, timeout=120, check=False
        )

    def runtime(self, **overrides: str) -> Runtime:
        return Runtime.build(load_config({**self.settings, **overrides}))

    def write_config(self, path: Path, settings: Mapping[str, str]) -> Path:
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()), encoding="utf-8")
        _give(path, 0o600)
        return path

    def switch(self) -> str:
        """Write a little, close the segment; the name of the segment that was completed."""
        self.pg.execute("INSERT INTO walt (note) VALUES (%s)", [uuid.uuid4().hex])
        return str(self.pg.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])

    def archiver(self) -> tuple[str | None, int, int]:
        row = self.pg.execute(
            "SELECT last_archived_wal, archived_count, failed_count FROM pg_stat_archiver"
        )[0]
        return row[0], int(row[1]), int(row[2])

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            last, _, _ = self.archiver()
            if last is not None and last[:24] >= name:
                return
            if time.monotonic() > deadline:
                log = self.pg.log_file.read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} not archived in {timeout} s (last {last}); log:\n{log}")
            time.sleep(0.2)

    def stored_keys(self, location: str, name: str) -> list[str]:
        loc = self.runtime().location(location)
        return sorted(o.key for o in loc.list(f"{self.scope}/wal/{name[:8]}/{name}"))


def _give(path: Path, mode: int) -> None:
    os.chmod(path, mode)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="module")
def archive(seaweed: SeaweedServer) -> Iterator[Archive]:
    base = Path(tempfile.mkdtemp(prefix="strongroom-walt-", dir="/tmp"))
    _give(base, 0o700)
    for sub in ("local", "spool"):
        (base / sub).mkdir()
        _give(base / sub, 0o700)
    launcher = write_launcher(base / "strongroom")
    prefix = f"walt-{uuid.uuid4().hex[:8]}"
    settings = {
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(base / "local"),
        **seaweed.settings("r2", "r2-backups"),
        **seaweed.settings("b2", "b2-backups"),
        "R2_PREFIX": prefix,
        "B2_PREFIX": prefix,
        "BACKUP_WAL_SPOOL_DIR": str(base / "spool"),
        "BACKUP_WAL_OPTIONAL_TIMEOUT": "5",
        "BACKUP_WAL_SKIP_DOWN_SECONDS": "2",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{base}/catalog.sqlite3",
    }
    config_file = base / "strongroom.env"
    command = f"{launcher} --config {config_file} wal-push %p"
    pg = PgCluster(settings=archive_settings(command, archive_timeout=60))
    archive = Archive(pg, base, launcher, config_file, settings, "")
    archive.write_config(config_file, settings)
    try:
        pg.__enter__()
    except Exception as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)
    archive.scope = str(pg.execute("SELECT system_identifier FROM pg_control_system()")[0][0])
    pg.execute("CREATE TABLE walt (id bigserial PRIMARY KEY, note text)")
    yield archive
    pg.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def archived(archive: Archive) -> list[str]:
    """Three segments switched and archived by PostgreSQL through wal-push."""
    names = [archive.switch() for _ in range(3)]
    archive.wait_archived(names[-1])
    return names


def _manifest(archive: Archive, location: str, name: str) -> Manifest:
    rt = archive.runtime()
    loc = rt.location(location)
    key = f"{archive.scope}/wal/{name[:8]}/{name}.manifest.json"
    return Manifest.from_document(loc.get_bytes(key), rt.keyring)


def test_the_archiver_stores_each_segment_in_every_location(
    archive: Archive, archived: list[str]
) -> None:
    last, count, failed = archive.archiver()
    log = archive.pg.log_file.read_text(errors="replace")[-3000:]
    assert failed == 0 and count >= 3 and last is not None, log
    for name in archived:
        plain = (archive.pg.wal_dir / name).read_bytes()
        for location in ("local", "r2", "b2"):
            keys = archive.stored_keys(location, name)
            assert keys == [
                f"{archive.scope}/wal/{name[:8]}/{name}.manifest.json",
                f"{archive.scope}/wal/{name[:8]}/{name}.wal.zst.enc",
            ], location
            manifest = _manifest(archive, location, name)
            assert manifest.kind == "wal" and manifest.id == name
            assert (manifest.codec, manifest.codec_level) == ("zstd", 1)  # the WAL's own level
            assert manifest.extra["plaintext_sha256"] == hashlib.sha256(plain).hexdigest()
            assert manifest.extra["system_identifier"] == archive.scope
            assert manifest.extra["timeline"] == 1 and manifest.raw_size == len(plain)


def _scratch_copy(archive: Archive, name: str, patch: tuple[int, bytes] | None) -> Path:
    """A copy of a segment outside the cluster (``STRONGROOM_PGDATA`` names the cluster)."""
    folder = archive.base / f"scratch-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    _give(folder, 0o700)
    data = bytearray((archive.pg.wal_dir / name).read_bytes())
    if patch is not None:
        offset, replacement = patch
        data[offset : offset + len(replacement)] = replacement
    copy = folder / name
    copy.write_bytes(bytes(data))
    _give(copy, 0o600)
    return copy


def test_a_repush_of_the_same_content_succeeds_and_other_content_is_refused(
    archive: Archive, archived: list[str]
) -> None:
    name = archived[0]
    local = archive.local / archive.scope / "wal" / name[:8]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in local.glob(f"{name}.*")}
    env = {"STRONGROOM_PGDATA": str(archive.pg.data_dir)}

    same = archive.run("-v", "wal-push", str(_scratch_copy(archive, name, None)), env=env)
    assert same.returncode == 0, same.stderr
    assert "already archived" in same.stderr

    other = archive.run("wal-push", str(_scratch_copy(archive, name, (8192, b"X"))), env=env)
    assert other.returncode == ExitCode.WAL_CONFLICT, other.stderr
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "different content" in lines[0]
    archived_sha = _manifest(archive, "local", name).extra["plaintext_sha256"]
    assert archived_sha in lines[0] and "nothing was written" in lines[0]
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in local.glob(f"{name}.*")}
    assert after == before

    b2 = archive.runtime().location("b2")
    b2.delete(f"{archive.scope}/wal/{name[:8]}/{name}.wal.zst.enc")  # a manifest left alone
    again = archive.run("wal-push", str(_scratch_copy(archive, name, None)), env=env)
    assert again.returncode == 0, again.stderr
    assert len(archive.stored_keys("b2", name)) == 2  # the same bytes written again


def test_a_segment_of_another_cluster_is_refused(archive: Archive, archived: list[str]) -> None:
    foreign = (12345678901234567).to_bytes(8, "little")
    copy = _scratch_copy(archive, archived[0], (24, foreign))
    out = archive.run("wal-push", str(copy), env={"STRONGROOM_PGDATA": str(archive.pg.data_dir)})
    assert out.returncode == ExitCode.WAL_FOREIGN, out.stderr
    assert "12345678901234567" in out.stderr and archive.scope in out.stderr


def test_wal_fetch_returns_the_segment_and_falls_back_past_a_corrupt_copy(
    archive: Archive, archived: list[str]
) -> None:
    name = archived[1]
    plain = (archive.pg.wal_dir / name).read_bytes()
    target = archive.base / "restored"
    target.mkdir(exist_ok=True)
    _give(target, 0o700)
    env = {"STRONGROOM_PGDATA": str(archive.pg.data_dir), "BACKUP_WAL_PREFETCH": "0"}
    got = archive.run("wal-fetch", name, str(target / "RECOVERYXLOG"), env=env)
    assert got.returncode == 0, got.stderr
    assert (target / "RECOVERYXLOG").read_bytes() == plain

    stored = archive.local / archive.scope / "wal" / name[:8] / f"{name}.wal.zst.enc"
    good = stored.read_bytes()
    broken = bytearray(good)
    broken[len(broken) // 2] ^= 0xFF
    stored.write_bytes(bytes(broken))
    try:
        again = archive.run("-v", "wal-fetch", name, str(target / "AGAIN"), env=env)
    finally:
        stored.write_bytes(good)
    assert again.returncode == 0, again.stderr
    assert (target / "AGAIN").read_bytes() == plain
    assert "from r2" in again.stderr and "local" in again.stderr


def test_a_segment_pushed_at_another_level_is_fetched_back_whole_at_the_default(
    archive: Archive, archived: list[str]
) -> None:
    """The level is the pusher's choice, recorded in the manifest; a reader needs none."""
    name = archived[2]
    plain = (archive.pg.wal_dir / name).read_bytes()
    elsewhere = archive.base / f"level-{uuid.uuid4().hex[:6]}"
    for sub in ("", "local", "spool"):
        (elsewhere / sub).mkdir(exist_ok=True)
        _give(elsewhere / sub, 0o700)
    env = {
        "STRONGROOM_PGDATA": str(archive.pg.data_dir),
        "STRONGROOM_LOCATIONS": "local",
        "BACKUP_LOCAL_PATH": str(elsewhere / "local"),
        "BACKUP_WAL_SPOOL_DIR": str(elsewhere / "spool"),
        "BACKUP_WAL_PREFETCH": "0",
    }
    pushed = archive.run(
        "wal-push",
        str(_scratch_copy(archive, name, None)),
        env={**env, "BACKUP_WAL_COMPRESSION_LEVEL": "9"},
    )
    assert pushed.returncode == 0, pushed.stderr
    rt = archive.runtime(STRONGROOM_LOCATIONS="local", BACKUP_LOCAL_PATH=str(elsewhere / "local"))
    key = f"{archive.scope}/wal/{name[:8]}/{name}.manifest.json"
    manifest = Manifest.from_document(rt.location("local").get_bytes(key), rt.keyring)
    assert (manifest.codec, manifest.codec_level) == ("zstd", 9)
    got = archive.run("wal-fetch", name, str(elsewhere / "RECOVERYXLOG"), env=env)
    assert got.returncode == 0, got.stderr
    assert (elsewhere / "RECOVERYXLOG").read_bytes() == plain


def test_wal_fetch_says_not_found_only_when_every_location_says_so(archive: Archive) -> None:
    target = archive.base / "restored"
    target.mkdir(exist_ok=True)
    _give(target, 0o700)
    env = {"STRONGROOM_PGDATA": str(archive.pg.data_dir)}
    absent = archive.run("wal-fetch", "00000001000000FF000000FE", str(target / "X"), env=env)
    assert absent.returncode == 1, absent.stderr
    assert "not archived in any location" in absent.stderr

    no_b2 = {k: v for k, v in archive.settings.items() if not k.startswith("B2_")}
    config = archive.write_config(archive.base / "no-b2.env", no_b2)
    unproven = archive.run(
        "wal-fetch", "00000001000000FF000000FE", str(target / "X"), env=env, config=config
    )
    assert unproven.returncode == ExitCode.WAL_FETCH_STOP, unproven.stderr
    assert "b2:" in unproven.stderr and "B2_BUCKET_NAME" in unproven.stderr

    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = {
        **env,
        "STRONGROOM_LOCATIONS": "r2,b2",
        "R2_ENDPOINT_URL": dead,
        "B2_ENDPOINT_URL": dead,
        "R2_MAX_ATTEMPTS": "1",
        "B2_MAX_ATTEMPTS": "1",
        "BACKUP_WAL_FETCH_RETRIES": "1",
    }
    out = archive.run("wal-fetch", "000000010000000000000001", str(target / "Y"), env=unreachable)
    assert out.returncode == ExitCode.WAL_FETCH_STOP > 125, out.stderr
    assert "recovery stops" in out.stderr and not (target / "Y").exists()
    for secret in (
        archive.settings["R2_SECRET_ACCESS_KEY"],
        archive.settings["BACKUP_ENCRYPTION_KEY"],
    ):
        assert secret not in out.stderr


def test_ready_segments_are_pushed_ahead_and_a_later_call_returns_at_once(
    archive: Archive, archived: list[str]
) -> None:
    pg = archive.pg
    pg.execute("ALTER SYSTEM SET archive_command = ''")  # PostgreSQL keeps them .ready
    pg.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    names = [archive.switch() for _ in range(3)]
    status = pg.wal_dir / "archive_status"
    assert all((status / f"{n}.ready").exists() for n in names)

    first = archive.run("-v", "wal-push", f"pg_wal/{names[0]}", cwd=pg.data_dir)
    assert first.returncode == 0, first.stderr
    assert {p.name for p in (archive.spool / "pushed").iterdir()} >= set(names[1:])
    # each record holds the stamp of the version pushed: the later call need not read it again
    for name in names[1:]:
        assert Spool(archive.spool).pushed(name)[1] == file_stamp((pg.wal_dir / name).stat())
    for name in names:
        assert len(archive.stored_keys("b2", name)) == 2

    later = archive.run("-v", "wal-push", f"pg_wal/{names[1]}", cwd=pg.data_dir)
    assert later.returncode == 0, later.stderr
    assert "pushed ahead earlier" in later.stderr
    assert not (archive.spool / "pushed" / names[1]).exists()

    pg.execute("ALTER SYSTEM RESET archive_command")
    pg.execute("SELECT pg_reload_conf()")
    archive.wait_archived(names[-1])
    assert archive.archiver()[2] == 0


def test_an_optional_location_down_never_holds_archiving(
    archive: Archive, archived: list[str]
) -> None:
    dead = {**archive.settings, "B2_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    archive.write_config(archive.config_file, {**dead, "B2_MAX_ATTEMPTS": "1"})
    try:
        names = [archive.switch() for _ in range(2)]
        archive.wait_archived(names[-1])
    finally:
        archive.write_config(archive.config_file, archive.settings)
    assert archive.archiver()[2] == 0
    for name in names:
        assert len(archive.stored_keys("local", name)) == 2
        assert len(archive.stored_keys("r2", name)) == 2
        assert archive.stored_keys("b2", name) == []
    missed = {p.name for p in (archive.spool / "missed" / "b2").iterdir()}
    assert set(names) <= missed
    env = {"DATABASE_URL": archive.pg.url(), "STRONGROOM_PGDATA": str(archive.pg.data_dir)}
    checked = json.loads(archive.run("check", "--json", env=env).stdout)
    line = {p["name"]: p for p in checked["checks"]}["wal archive"]
    assert line["ok"] and f"b2 lacks {len(missed)} file(s)" in line["detail"], line


def _verify(archive: Archive) -> tuple[int, dict[str, Any]]:
    out = archive.run("wal-verify", "--json")
    return out.returncode, json.loads(out.stdout)


def test_wal_verify_names_the_gap_and_heal_fills_it(archive: Archive, archived: list[str]) -> None:
    missed = sorted(p.name for p in (archive.spool / "missed" / "b2").iterdir())
    assert missed, "the optional-location test leaves files b2 missed"
    code, doc = _verify(archive)
    assert code == ExitCode.WAL_GAP, doc
    (cluster,) = doc["clusters"]
    assert cluster["system_identifier"] == archive.scope and cluster["timelines"] == [1]
    gaps = {(g["location"], g["name"]) for g in cluster["gaps"]}
    assert gaps == {("b2", name) for name in missed}
    assert doc["missing"] == {"local": 0, "r2": 0, "b2": len(missed)}
    assert doc["newest"] == cluster["newest"] >= missed[-1]

    healed = archive.run("heal", "--all")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    for name in missed:
        assert f"{name}  copied from local" in healed.stdout
        assert len(archive.stored_keys("b2", name)) == 2
    assert not list((archive.spool / "missed" / "b2").iterdir())

    code, doc = _verify(archive)
    assert code == 0, doc
    assert doc["missing"] == {"local": 0, "r2": 0, "b2": 0}
    with sqlite3.connect(archive.base / "catalog.sqlite3") as db:
        rows = db.execute(
            "SELECT data FROM strongroom_backupevent WHERE kind = 'wal_verify' ORDER BY id"
        ).fetchall()
    assert [json.loads(r[0])["missing"]["b2"] for r in rows][-2:] == [len(missed), 0]


def test_wal_verify_finds_a_damaged_copy(archive: Archive, archived: list[str]) -> None:
    name = archived[2]
    stored = archive.local / archive.scope / "wal" / name[:8] / f"{name}.wal.zst.enc"
    good = stored.read_bytes()
    stored.write_bytes(good + b"tail")
    try:
        code, doc = _verify(archive)
    finally:
        stored.write_bytes(good)
    assert code == ExitCode.WAL_GAP
    (gap,) = doc["clusters"][0]["gaps"]
    assert (gap["location"], gap["name"]) == ("local", name) and "corrupt" in gap["problem"]


def test_check_reports_archiving_health(archive: Archive, archived: list[str]) -> None:
    env = {"DATABASE_URL": archive.pg.url(), "STRONGROOM_PGDATA": str(archive.pg.data_dir)}
    out = archive.run("check", "--json", env=env)
    probes = {p["name"]: p for p in json.loads(out.stdout)["checks"]}
    wal_line = probes["wal archive"]
    assert wal_line["ok"], wal_line
    last, _, _ = archive.archiver()
    assert f"last archived {last}" in wal_line["detail"]
    assert "0 failed" in wal_line["detail"] and "none waiting" in wal_line["detail"]

    archive.pg.execute("ALTER SYSTEM SET archive_command = ''")
    archive.pg.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        waiting = archive.switch()
        stale = archive.run("check", "--json", env={**env, "BACKUP_WAL_MAX_AGE_SECONDS": "0.001"})
    finally:
        archive.pg.execute("ALTER SYSTEM RESET archive_command")
        archive.pg.execute("SELECT pg_reload_conf()")
    line = {p["name"]: p for p in json.loads(stale.stdout)["checks"]}["wal archive"]
    assert not line["ok"] and stale.returncode == ExitCode.CHECK_FAILED
    assert f"1 waiting, oldest {waiting}" in line["detail"]
    assert "older than BACKUP_WAL_MAX_AGE_SECONDS" in line["detail"]
    archive.wait_archived(waiting)


def _fake_base_backup(archive: Archive, location: str, start_wal: str) -> None:
    """A base backup's manifest (kind ``base``) starting at ``start_wal``, as base-backup
    writes it beside its tar: all that WAL retention reads."""
    rt = archive.runtime()
    now = datetime.now(UTC)
    manifest = Manifest(
        id="basefake1",
        kind="base",
        database=archive.scope,
        server_version="",
        pg_dump_version="",
        started_at=now,
        finished_at=now,
        raw_size=0,
        compressed_size=0,
        stored_size=0,
        sha256="0" * 64,
        codec="zstd",
        codec_level=3,
        cipher=crypto.CIPHER_NAME,
        key_id=rt.keyring.primary_id,
        object_key=f"{archive.scope}/base/x/basefake1.tar.zst.enc",
        extra={"start_wal": start_wal, "timeline": 1, "wal_segment_size": 16 * 1024 * 1024},
    )
    key = f"{archive.scope}/base/{now:%Y/%m/%d}/basefake1.manifest.json"
    rt.location(location).put_bytes(key, manifest.to_document(rt.keyring))
    if location == "local":
        base = archive.local / archive.scope / "base"
        for path in [base, *base.rglob("*")]:
            _give(path, 0o700 if path.is_dir() else 0o600)


def test_prune_keeps_the_wal_every_kept_base_backup_needs(
    archive: Archive, archived: list[str]
) -> None:
    before = {loc: set(_wal_names(archive, loc)) for loc in ("local", "r2", "b2")}
    older = sorted(n for n in before["local"] if n < archived[1])
    assert older, "segments before the base backup's start"
    _fake_base_backup(archive, "local", archived[1])

    dry = archive.run("prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = {p["location"]: p for p in json.loads(dry.stdout)["wal"]}
    assert "local" in plan, dry.stdout
    assert sorted(plan["local"]["deleted"]) == older
    assert plan["r2"]["deleted"] == [] and "no base backup" in plan["r2"]["reason"]
    assert set(_wal_names(archive, "local")) == before["local"]

    done = archive.run("prune")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(_wal_names(archive, "local")) == before["local"] - set(older)
    assert {loc: set(_wal_names(archive, loc)) for loc in ("r2", "b2")} == {
        loc: before[loc] for loc in ("r2", "b2")
    }
    code, doc = _verify(archive)
    assert code == 0, doc
    assert doc["clusters"][0]["first_needed"]["local"] == archived[1]


def _wal_names(archive: Archive, location: str) -> list[str]:
    loc = archive.runtime().location(location)
    return sorted(
        {o.key.rsplit("/", 1)[-1].split(".")[0] for o in loc.list(f"{archive.scope}/wal/")}
    )


def test_history_files_are_archived_once_and_never_replaced(archive: Archive) -> None:
    env = {"STRONGROOM_PGDATA": str(archive.pg.data_dir)}
    folder = archive.base / "scratch-history"
    folder.mkdir()
    _give(folder, 0o700)
    history = folder / "0000000F.history"

    def push(text: str) -> subprocess.CompletedProcess[str]:
        history.write_text(text)
        _give(history, 0o600)
        return archive.run("wal-push", str(history), env=env)

    assert push("14\t0/3000060\tno recovery target specified\n").returncode == 0
    assert push("14\t0/3000060\tno recovery target specified\n").returncode == 0
    other = push("14\t0/4000000\tbefore 2026-12-01\n")
    assert other.returncode == ExitCode.WAL_CONFLICT, other.stderr
    got = archive.run("wal-fetch", "0000000F.history", str(folder / "RECOVERYHISTORY"), env=env)
    assert got.returncode == 0, got.stderr
    assert (folder / "RECOVERYHISTORY").read_text().startswith("14\t0/3000060")
    for location in ("local", "r2", "b2"):
        assert len(archive.stored_keys(location, "0000000F.history")) == 2


def test_wal_fetch_prefetches_the_next_segments_outside_pg_wal(
    archive: Archive, archived: list[str]
) -> None:
    first, second, third = archived
    target = archive.base / "prefetched"
    target.mkdir()
    _give(target, 0o700)
    env = {"STRONGROOM_PGDATA": str(archive.pg.data_dir), "BACKUP_WAL_PREFETCH": "2"}
    got = archive.run("-v", "wal-fetch", first, str(target / "RECOVERYXLOG"), env=env)
    assert got.returncode == 0, got.stderr
    assert f"prefetched: {second}, {third}" in got.stderr
    spooled = archive.spool / "prefetch"
    assert {p.name for p in spooled.iterdir()} >= {second, third}

    local = archive.local / archive.scope / "wal" / second[:8] / f"{second}.wal.zst.enc"
    good = local.read_bytes()
    local.write_bytes(b"")  # proves the next call does not read storage at all
    try:
        again = archive.run("-v", "wal-fetch", second, str(target / "RECOVERYXLOG"), env=env)
    finally:
        local.write_bytes(good)
    assert again.returncode == 0, again.stderr
    assert f"{second}: 16777216 bytes from spool" in again.stderr
    assert (target / "RECOVERYXLOG").read_bytes() == (archive.pg.wal_dir / second).read_bytes()
    assert second not in {p.name for p in spooled.iterdir()}
    assert [p.name for p in target.iterdir()] == ["RECOVERYXLOG"]  # no temporary file left
