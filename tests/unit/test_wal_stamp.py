"""A file pushed ahead is answered by its stamp, without being read again, only while it is the
very version that was pushed; any rewrite sends it back to the SHA-256 comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from walsupport import FOREIGN, NAME, SYSTEM_ID, pushed_ahead_cluster

from strongroom.core.wal_spool import Spool, file_stamp
from strongroom.errors import ConfigError, ForeignWal
from strongroom.services import wal_cluster
from strongroom.services.wal_cluster import answered_from_spool, read_wal_file


def _answer(tmp_path: Path, segment: Path) -> bool:
    return answered_from_spool(str(tmp_path / "spool"), str(tmp_path / "data"), str(segment))


def _not_hashed(file: Path) -> tuple[bytes, str]:
    raise AssertionError(f"{file} was read whole although its stamp was unchanged")


def test_an_unchanged_file_is_answered_by_its_stamp_without_being_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment, record, _ = pushed_ahead_cluster(tmp_path, stamped=True)
    monkeypatch.setattr(wal_cluster, "hash_wal_file", _not_hashed)
    assert _answer(tmp_path, segment) is True
    assert not record.exists()  # one call, as before


def test_other_content_written_in_place_is_hashed_and_not_answered(tmp_path: Path) -> None:
    """The modification time set back, as a careless tool might: the change time still moves."""
    segment, record, _ = pushed_ahead_cluster(tmp_path, stamped=True)
    before = os.stat(segment)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    with segment.open("r+b") as out:
        out.write(data)
    os.utime(segment, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _answer(tmp_path, segment) is False
    assert record.exists()  # the CLI then compares the file with the archive itself


def test_the_same_content_written_again_is_hashed_and_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment, record, _ = pushed_ahead_cluster(tmp_path, stamped=True)
    copy = segment.with_name(".copy")
    copy.write_bytes(segment.read_bytes())
    copy.replace(segment)  # another inode
    hashed: list[Path] = []
    real = wal_cluster.hash_wal_file

    def hashing(file: Path) -> tuple[bytes, str]:
        hashed.append(file)
        return real(file)

    monkeypatch.setattr(wal_cluster, "hash_wal_file", hashing)
    assert _answer(tmp_path, segment) is True
    assert hashed == [segment] and not record.exists()


def test_a_stamped_record_still_refuses_another_clusters_file(tmp_path: Path) -> None:
    segment, record, _ = pushed_ahead_cluster(tmp_path, control_id=SYSTEM_ID + 1, stamped=True)
    with pytest.raises(ForeignWal, match="belongs to the cluster with system identifier"):
        _answer(tmp_path, segment)
    assert record.exists()


def test_a_record_of_the_sha_alone_is_still_read(tmp_path: Path) -> None:
    segment, record, _ = pushed_ahead_cluster(tmp_path)
    assert Spool(tmp_path / "spool").pushed(NAME) == (record.read_text(), "")
    assert _answer(tmp_path, segment) is True


def test_the_push_reads_the_stamp_of_the_version_it_reads(tmp_path: Path) -> None:
    segment, _, _ = pushed_ahead_cluster(tmp_path)
    data, stamp = read_wal_file(segment)
    assert data == segment.read_bytes() and stamp == file_stamp(os.stat(segment))
    with pytest.raises(ConfigError, match="does not exist"):
        read_wal_file(tmp_path / "gone")


def test_the_executable_answers_a_stamped_record_without_loading_hashlib(tmp_path: Path) -> None:
    segment, record, config = pushed_ahead_cluster(tmp_path, stamped=True)
    modules = tmp_path / "modules.txt"
    hook = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(modules)!r}, 'w').write('\\n'.join(sys.modules)))\n"
        "from strongroom.interfaces.entry import main\n"
        "sys.exit(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    argv = ["--config", str(config), "wal-push", str(segment)]
    done = subprocess.run(
        [sys.executable, "-c", hook, *argv], capture_output=True, text=True, env=env, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "") and not record.exists()
    loaded = set(modules.read_text().split())
    assert {"hashlib", "_hashlib", "dataclasses", "inspect"} & loaded == set()
