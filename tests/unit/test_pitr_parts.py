"""The pure parts of base backups and PITR: the tar push parser, WAL names, recovery settings."""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from strongroom import schedule
from strongroom.config import load_config
from strongroom.core import crypto
from strongroom.core.manifest import Manifest
from strongroom.core.postgres import basebackup, recovery
from strongroom.core.tarstream import Capture, Extract, TarStream
from strongroom.errors import BackupNotFound, ConfigError, IntegrityError, TargetNotEmpty
from strongroom.services import base_backup, pitr
from strongroom.services.runtime import Runtime


def _tar(entries: dict[str, bytes | None], *, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar with files (bytes) and directories (None), as PostgreSQL writes one."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


ENTRIES: dict[str, bytes | None] = {
    "backup_label": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nLABEL: x\n",
    "base": None,
    "base/1": None,
    "base/1/1259": bytes(range(256)) * 40,
    "empty": b"",
    "exact": b"e" * 1024,
    "d" * 60 + "/" + "f" * 60: b"long name through the ustar prefix",
    "backup_manifest": b'{"WAL-Ranges": []}',
}


@pytest.mark.parametrize("chunk", [1, 7, 511, 512, 513, 65536])
def test_the_push_parser_extracts_what_tarfile_wrote_in_any_chunking(
    tmp_path: Path, chunk: int
) -> None:
    data = _tar(ENTRIES)
    extract = Extract(tmp_path)
    stream = TarStream(extract)
    for at in range(0, len(data), chunk):
        stream.feed(data[at : at + chunk])
    stream.close()
    for name, content in ENTRIES.items():
        path = tmp_path / name
        if content is None:
            assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700
        else:
            assert path.read_bytes() == content
    assert extract.files == 6


def test_capture_keeps_only_the_named_members() -> None:
    capture = Capture(("backup_label", "backup_manifest"))
    stream = TarStream(capture)
    stream.feed(_tar(ENTRIES))
    stream.close()
    assert set(capture.found) == {"backup_label", "backup_manifest"}
    assert capture.found["backup_manifest"] == ENTRIES["backup_manifest"]


def test_a_truncated_or_damaged_stream_is_an_integrity_error(tmp_path: Path) -> None:
    data = _tar(ENTRIES)
    stream = TarStream(Capture(()))
    stream.feed(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="ends before"):
        stream.close()
    damaged = bytearray(data)
    damaged[10] ^= 0xFF
    with pytest.raises(IntegrityError, match="checksum"):
        TarStream(Capture(())).feed(bytes(damaged))


def test_an_entry_outside_the_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="outside"):
        TarStream(Extract(tmp_path / "in")).feed(_tar({"../escape": b"x"}))
    assert not (tmp_path / "escape").exists()


def test_backup_facts_come_from_the_label_and_the_manifest_wal_ranges() -> None:
    manifest = {"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/3000100"}]}
    facts = basebackup.read_backup_facts(
        b"START TIME: 2026-12-02 04:05:04 UTC\nLABEL: strongroom 1\n",
        json.dumps(manifest).encode(),
    )
    assert (facts.start_lsn, facts.stop_lsn, facts.timeline) == ("0/2000028", "0/3000100", 1)
    assert facts.label == "strongroom 1"
    size = 16 << 20
    assert basebackup.segments_between(facts, size) == [
        "000000010000000000000002",
        "000000010000000000000003",
    ]
    with pytest.raises(IntegrityError):
        basebackup.read_backup_facts(b"", b"{}")


#: A backup history file as PostgreSQL 15 writes it (``do_pg_backup_stop``).
HISTORY = b"""START WAL LOCATION: 0/41000028 (file 000000010000000000000041)
STOP WAL LOCATION: 0/42000100 (file 000000010000000000000042)
CHECKPOINT LOCATION: 0/41000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-12-04 19:08:56 UTC
LABEL: strongroom 20261204T190856Z-06cfcb
START TIMELINE: 1
STOP TIME: 2026-12-04 19:08:59 UTC
STOP TIMELINE: 1
"""
#: The ``backup_label`` of the same backup: the history file without its stop lines.
LABEL = b"".join(line for line in HISTORY.splitlines(True) if not line.startswith(b"STOP"))


def test_a_server_compressed_backup_reads_its_stop_from_the_archived_history_file() -> None:
    size = 16 << 20
    start, timeline = basebackup.label_start(LABEL)
    assert (start, timeline) == ("0/41000028", 1)
    name = basebackup.history_file_name(start, timeline, size)
    assert name == "000000010000000000000041.00000028.backup"
    facts = basebackup.read_history_facts(LABEL, HISTORY)
    assert (facts.start_lsn, facts.stop_lsn, facts.timeline) == ("0/41000028", "0/42000100", 1)
    assert facts.label == "strongroom 20261204T190856Z-06cfcb"
    assert basebackup.segments_between(facts, size)[-1] == "000000010000000000000042"
    with pytest.raises(IntegrityError, match="history file"):
        basebackup.read_history_facts(LABEL, HISTORY.replace(b"STOP WAL", b"STOP"))
    with pytest.raises(IntegrityError, match="backup_label"):
        basebackup.label_start(b"LABEL: x\n")


def test_the_stream_is_compressed_on_the_server_only_when_both_ends_can() -> None:
    assert basebackup.client_major("pg_basebackup (PostgreSQL) 15.20 (Debian 15.20-0)") == 150000
    assert basebackup.client_major("pg_basebackup (PostgreSQL) 9.6.24") == 90600
    assert basebackup.client_major("garbage") == 0
    assert basebackup.ServerZstd(1, 2).argv() == [
        "--compress=server-zstd:level=1,workers=2",
        "--no-manifest",
    ]
    assert basebackup.ServerZstd(3, 0).argv()[0] == "--compress=server-zstd:level=3"


@pytest.mark.parametrize(
    ("settings", "server", "client", "expected"),
    [
        ({}, 150000, "(PostgreSQL) 15.2", (1, 4)),  # adaptive: its floor
        ({"BACKUP_COMPRESSION_ADAPT": "false"}, 160000, "(PostgreSQL) 16.1", (3, 4)),
        ({"BACKUP_COMPRESSION_THREADS": "0"}, 150000, "(PostgreSQL) 15.2", (1, 0)),
        ({"BACKUP_BASE_BACKUP_COMPRESS_ON": "client"}, 150000, "(PostgreSQL) 15.2", None),
        ({"BACKUP_COMPRESSION": "gzip"}, 150000, "(PostgreSQL) 15.2", None),
        ({}, 140000, "(PostgreSQL) 15.2", None),  # a 14 server cannot
        ({}, 150000, "(PostgreSQL) 14.9", None),  # nor a 14 pg_basebackup
    ],
)
def test_server_compression_follows_the_codec_the_setting_and_the_versions(
    settings: dict[str, str],
    server: int,
    client: str,
    expected: tuple[int, int] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    config = load_config({"BACKUP_ENCRYPTION_KEY": crypto.generate_key(), **settings})
    cluster = basebackup.ClusterFacts("1", "15", server, 16 << 20, "on")
    chosen = base_backup.server_zstd(Runtime.build(config), cluster, f"pg_basebackup {client}")
    assert (None if chosen is None else (chosen.level, chosen.workers)) == expected


def test_an_unknown_compress_on_is_one_line() -> None:
    with pytest.raises(ConfigError, match="BACKUP_BASE_BACKUP_COMPRESS_ON 'both'"):
        load_config({"BACKUP_BASE_BACKUP_COMPRESS_ON": "both"})


def test_the_wal_a_base_backup_needs_runs_from_its_start_to_its_stop() -> None:
    size = 16 << 20
    facts = basebackup.BackupFacts("1/A0000028", "1/A2000100", 1, "", "")
    assert basebackup.segments_between(facts, size) == [
        "0000000100000001000000A0",
        "0000000100000001000000A1",
        "0000000100000001000000A2",
    ]
    # a stop LSN on a segment boundary ends the segment before it (XLByteToPrevSeg)
    facts = basebackup.BackupFacts("0/2000028", "0/3000000", 1, "", "")
    assert basebackup.segments_between(facts, size) == ["000000010000000000000002"]
    big = basebackup.BackupFacts("0/40000028", "0/40000100", 3, "", "")
    assert basebackup.segments_between(big, 1 << 30) == ["000000030000000000000001"]


def test_recovery_settings_quote_the_command_and_never_need_a_secret(tmp_path: Path) -> None:
    command = recovery.restore_command(["/opt/strong room/strongroom", "--config", "/etc/s.env"])
    assert command == "'/opt/strong room/strongroom' --config /etc/s.env wal-fetch %f %p"
    at = datetime(2026, 12, 2, 4, 5, 6, 789000, tzinfo=UTC)
    settings = recovery.recovery_settings(command, recovery.target_time(at))
    assert settings["recovery_target_time"] == "2026-12-02 04:05:06.789000+00:00"
    assert settings["recovery_target_action"] == "promote"
    assert settings["recovery_target_timeline"] == "latest"
    assert "recovery_target_time" not in recovery.recovery_settings(
        command, recovery.RecoveryTarget("latest")
    )
    (tmp_path / recovery.AUTO_CONF).write_text("# ALTER SYSTEM\n")
    recovery.write_recovery(tmp_path, {**settings, "recovery_target_name": "it's"})
    text = (tmp_path / recovery.AUTO_CONF).read_text()
    assert text.startswith("# ALTER SYSTEM\n")
    assert "restore_command = '''/opt/strong room/strongroom'' --config" in text
    assert "recovery_target_name = 'it''s'" in text
    assert (tmp_path / recovery.SIGNAL).exists()


def test_a_non_empty_directory_is_refused_and_a_new_one_is_private(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "PG_VERSION").write_text("15\n")
    with pytest.raises(TargetNotEmpty, match="is not empty"):
        pitr.prepare_directory(tmp_path / "used")
    fresh = pitr.prepare_directory(tmp_path / "new" / "pgdata")
    assert fresh.is_dir() and fresh.stat().st_mode & 0o777 == 0o700


def _candidate(backup_id: str, finished: datetime, stop_lsn: str, scope: str = "7") -> Any:
    manifest = Manifest(
        id=backup_id,
        kind="base",
        database=scope,
        server_version="15",
        pg_dump_version="",
        started_at=finished - timedelta(seconds=5),
        finished_at=finished,
        raw_size=1,
        compressed_size=1,
        stored_size=1,
        sha256="0" * 64,
        codec="none",
        codec_level=0,
        cipher="x",
        key_id="k",
        object_key=f"{scope}/base/{backup_id}.tar.enc",
        extra={"stop_lsn": stop_lsn},
    )
    return pitr.BaseCandidate(manifest)


def test_the_newest_base_backup_that_ended_before_the_target_is_chosen() -> None:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    older = _candidate("a", t0, "0/3000000")
    newer = _candidate("b", t0 + timedelta(hours=1), "0/9000000")
    both = [older, newer]
    at = recovery.target_time(t0 + timedelta(minutes=30))
    assert pitr.choose_backup(both, at, None) is older
    assert pitr.choose_backup(both, recovery.RecoveryTarget("latest"), None) is newer
    assert pitr.choose_backup(both, recovery.RecoveryTarget("lsn", "0/5000000"), None) is older
    assert pitr.choose_backup(both, recovery.RecoveryTarget("latest"), "a") is older
    with pytest.raises(ConfigError, match=r"ended at .* after time .*: pick an older base backup"):
        pitr.choose_backup(both, at, "b")
    with pytest.raises(BackupNotFound, match="no base backup ended before"):
        pitr.choose_backup(both, recovery.target_time(t0 - timedelta(days=1)), None)
    with pytest.raises(BackupNotFound, match=r"lsn 0/10 \(the oldest, a, stopped at LSN 0/3"):
        pitr.choose_backup(both, recovery.RecoveryTarget("lsn", "0/10"), None)
    # by LSN the WAL's order decides, not the clock (a later backup stamped by a slow clock)
    behind = _candidate("c", t0 - timedelta(hours=1), "0/4000000")
    lsn = recovery.RecoveryTarget("lsn", "0/5000000")
    assert pitr.choose_backup([behind, older, newer], lsn, None) is behind
    with pytest.raises(BackupNotFound, match="base backup zz not found"):
        pitr.choose_backup(both, at, "zz")
    with pytest.raises(ConfigError, match="--backup ID"):
        pitr.choose_backup([older, _candidate("c", t0, "0/1", scope="8")], at, None)
    with pytest.raises(ConfigError, match="ISO-8601"):
        pitr.parse_time("last tuesday")


def test_the_daily_base_backup_is_scheduled_only_with_wal_archiving_on() -> None:
    off = schedule.beat_schedule({}, env={})
    assert schedule.BASE_BACKUP_ENTRY not in off
    on = schedule.beat_schedule({"BACKUP_WAL_ARCHIVING": "on"}, env={})
    entry = on[schedule.BASE_BACKUP_ENTRY]
    assert entry["task"] == schedule.BASE_BACKUP_TASK
    assert entry["schedule"].hour == {1}
    later = schedule.beat_schedule(
        {"BACKUP_WAL_ARCHIVING": "on", "BACKUP_BASE_BACKUP_HOUR": "23"}, env={}
    )
    assert later[schedule.BASE_BACKUP_ENTRY]["schedule"].hour == {23}
    none = schedule.beat_schedule(
        {"BACKUP_WAL_ARCHIVING": "on", "BACKUP_BASE_BACKUP_HOUR": "off"}, env={}
    )
    assert schedule.BASE_BACKUP_ENTRY not in none
