"""The local-disk location: atomic writes, partials never visible, clear errors."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom.core.storage import LocalLocation, backend_for
from strongroom.errors import ConfigError, LocationUnavailable, ObjectNotFound, StorageError


@pytest.fixture
def loc(tmp_path: Path) -> LocalLocation:
    root = tmp_path / "backups"
    root.mkdir()
    return LocalLocation("local", root)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_registered_and_built_from_options(tmp_path: Path) -> None:
    built = backend_for("local").from_options("local", {"path": str(tmp_path)})
    assert isinstance(built, LocalLocation)
    assert built.describe() == str(tmp_path)
    with pytest.raises(ConfigError, match="unknown option"):
        backend_for("local").from_options("local", {"path": str(tmp_path), "bogus": 1})


def test_put_get_stat_list_delete(loc: LocalLocation) -> None:
    loc.put_bytes("db/full/2024/01/02/a.dump.enc", b"x" * 1000)
    loc.put_bytes("db/full/2024/01/02/a.manifest.json", b"{}")
    loc.put_bytes("other/b", b"b")
    assert loc.get_bytes("db/full/2024/01/02/a.dump.enc") == b"x" * 1000
    info = loc.stat("db/full/2024/01/02/a.dump.enc")
    assert info.size == 1000
    assert info.modified is not None and info.modified.tzinfo is not None
    assert [i.key for i in loc.list("db/")] == [
        "db/full/2024/01/02/a.dump.enc",
        "db/full/2024/01/02/a.manifest.json",
    ]
    assert [i.key for i in loc.list("db/full/2024/01/02/a.m")] == [
        "db/full/2024/01/02/a.manifest.json"
    ]
    assert len(list(loc.list())) == 3
    assert list(loc.list("nothing/here")) == []
    loc.delete("other/b")
    loc.delete("other/b")  # absent is fine
    with pytest.raises(ObjectNotFound):
        loc.stat("other/b")
    with pytest.raises(ObjectNotFound):
        loc.open_reader("other/b")


def test_streamed_write_and_buffered_read(loc: LocalLocation) -> None:
    data = os.urandom(3 << 20)
    writer = loc.open_writer("big")
    for i in range(0, len(data), 1 << 20):
        writer.write(data[i : i + (1 << 20)])
    with pytest.raises(ObjectNotFound):
        loc.stat("big")  # nothing visible before commit
    writer.commit()
    writer.commit()  # idempotent
    reader = loc.open_reader("big")
    try:
        chunks = iter(lambda: reader.read(65536), b"")
        assert b"".join(chunks) == data
    finally:
        reader.close()


def test_modes_are_private(loc: LocalLocation) -> None:
    loc.put_bytes("a/b/c", b"1")
    assert stat.S_IMODE((loc.root / "a/b/c").stat().st_mode) == 0o600
    assert stat.S_IMODE((loc.root / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((loc.root / "a/b").stat().st_mode) == 0o700


def test_overwrite_is_atomic_replace(loc: LocalLocation) -> None:
    loc.put_bytes("k", b"old")
    writer = loc.open_writer("k")
    writer.write(b"new-but-uncommitted")
    assert loc.get_bytes("k") == b"old"
    writer.commit()
    assert loc.get_bytes("k") == b"new-but-uncommitted"


def test_abort_leaves_nothing(loc: LocalLocation) -> None:
    writer = loc.open_writer("db/x")
    writer.write(b"half")
    assert any(".partial-" in f for f in _files(loc.root))
    writer.abort()
    writer.abort()  # twice is fine
    assert _files(loc.root) == []
    with pytest.raises(StorageError):
        writer.write(b"more")


def test_commit_after_abort_fails_and_leaves_nothing(loc: LocalLocation) -> None:
    writer = loc.open_writer("k")
    writer.write(b"x")
    writer.abort()
    with pytest.raises(StorageError):
        writer.commit()
    assert _files(loc.root) == []


def test_partial_is_not_listed_and_cleanup_removes_it(loc: LocalLocation) -> None:
    loc.put_bytes("db/done", b"ok")
    stale = loc.open_writer("db/dead")  # a process that died mid-write leaves this behind
    stale.write(b"junk")
    partial = next(p for p in (loc.root / "db").iterdir() if ".partial-" in p.name)
    old = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    os.utime(partial, (old, old))
    live = loc.open_writer("db/live")
    live.write(b"in progress")

    assert [i.key for i in loc.list()] == ["db/done"]
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert loc.cleanup_incomplete("other/", cutoff) == 0
    assert loc.cleanup_incomplete("db/", cutoff) == 1  # the live upload is younger: kept
    assert not partial.exists()
    live.commit()
    assert sorted(i.key for i in loc.list()) == ["db/done", "db/live"]
    loc.open_writer("db/again").write(b"x")
    assert loc.cleanup_incomplete() == 1  # no arguments: every partial


def test_keys_cannot_escape_the_root(loc: LocalLocation) -> None:
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", "", "a/b.partial-0123456789abcdef"):
        with pytest.raises(ValueError):
            loc.open_writer(bad)


def test_missing_root_is_unavailable_with_the_fix(tmp_path: Path) -> None:
    loc = LocalLocation("local", tmp_path / "not-there")
    with pytest.raises(LocationUnavailable) as err:
        loc.put_bytes("k", b"v")
    message = str(err.value)
    assert str(tmp_path / "not-there") in message
    assert "does not exist" in message and "BACKUP_LOCAL_PATH" in message
    assert "\n" not in message
    with pytest.raises(LocationUnavailable):
        list(loc.list())
    with pytest.raises(LocationUnavailable):
        loc.stat("k")  # a missing disk is not a missing object
    result = loc.check()
    assert not result.reachable and not result.writable


def test_unwritable_path_gives_one_clear_line(tmp_path: Path) -> None:
    # Root ignores permission bits, so make a path that fails for everybody: its parent is a
    # regular file.
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    target = blocker / "backups"
    for create in (False, True):
        location = LocalLocation("local", target, create=create)
        with pytest.raises(LocationUnavailable) as err:
            location.put_bytes("db/k", b"v")
        message = str(err.value)
        assert message.startswith(
            f"local location 'local': {target} lies under {blocker}, which is a file, not a "
            "directory (Not a directory): "
        ), message
        assert f"user {_user()} write access" in message
        assert "BACKUP_LOCAL_PATH" in message and "\n" not in message
        assert err.value.location == "local"
        result = location.check()
        assert not result.writable and str(blocker) in result.detail


def test_create_option_makes_the_root(tmp_path: Path) -> None:
    location = LocalLocation("local", tmp_path / "new" / "root", create=True)
    location.put_bytes("k", b"v")
    assert location.get_bytes("k") == b"v"
    assert stat.S_IMODE((tmp_path / "new" / "root").stat().st_mode) == 0o700


def test_check_writable(loc: LocalLocation) -> None:
    result = loc.check()
    assert result.reachable and result.writable
    assert _files(loc.root) == []  # the probe is gone


def test_prefix_is_a_subdirectory(tmp_path: Path) -> None:
    location = LocalLocation("local", tmp_path, prefix="pre/fix")
    location.put_bytes("db/k", b"v")
    assert (tmp_path / "pre" / "fix" / "db" / "k").read_bytes() == b"v"
    assert [i.key for i in location.list()] == ["db/k"]


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def test_a_directory_made_by_a_concurrent_writer_mid_check_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pushers making the same WAL directory: one sees it missing, then existing."""
    target = tmp_path / "wal" / "00000001"
    real_is_dir = Path.is_dir
    raced: list[Path] = []

    def is_dir_then_made(self: Path) -> bool:
        found = real_is_dir(self)
        if self == target and not found and not raced:
            raced.append(self)
            target.mkdir(parents=True)  # the other writer, right after this check
        return found

    monkeypatch.setattr(Path, "is_dir", is_dir_then_made)
    LocalLocation._make_dirs(target, tmp_path)
    assert raced and real_is_dir(target)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        LocalLocation._make_dirs(tmp_path / "file" / "below", tmp_path)
