"""Opening a damaged SQLite catalog file: the classification behind the CLI's one line.

Real files in a temp dir, damaged with real writes; the CLI-level behaviour (exit codes, check,
rebuild against real backups) is in tests/integration/test_catalog_faults.py.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from strongroom.catalog import bootstrap
from strongroom.errors import CatalogError


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog Django uses while a test damages another file (migrated once)."""
    path = tmp_path_factory.mktemp("elsewhere") / "catalog.sqlite3"
    bootstrap.ensure_django(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, elsewhere: Path) -> Path:
    """A real strongroom catalog with enough pages that page 3 is a b-tree page."""
    path = tmp_path_factory.mktemp("pristine") / "catalog.sqlite3"
    bootstrap.ensure_django(f"sqlite:///{path}")
    from strongroom.catalog import store

    for _ in range(5):
        backup = store.start_backup(backup_type="FULL_DATABASE", database="faults")
        store.finish_backup(backup.id, status="COMPLETED", raw_size_bytes=10)
    bootstrap.ensure_django(f"sqlite:///{elsewhere}")  # let go of it
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size > 3 * 4096
    return path


@pytest.fixture
def copy(pristine: Path, tmp_path: Path) -> Path:
    path = tmp_path / "catalog.sqlite3"
    shutil.copyfile(pristine, path)
    return path


def _overwrite(path: Path, offset: int, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(offset).randbytes(size))


def _settings(path: Path) -> dict[str, object]:
    return bootstrap.database_settings(f"sqlite:///{path}")


@pytest.mark.parametrize(
    ("offset", "size", "reason"),
    [(8192, 4096, "malformed"), (0, 100, "file is not a database")],
    ids=["pages", "header"],
)
def test_a_damaged_file_is_a_catalog_error_naming_it_and_rebuild(
    copy: Path, offset: int, size: int, reason: str
) -> None:
    path = copy
    _overwrite(path, offset, size)

    with pytest.raises(CatalogError) as caught:
        bootstrap.prepare_catalog(_settings(path))
    message = str(caught.value)
    assert caught.value.damaged and caught.value.exit_code == 12
    assert f"the catalog {path} is damaged (" in message and reason in message
    assert "`strongroom catalog rebuild --from LOCATION`" in message
    assert "\n" not in message and "permission" not in message


def test_prepare_says_whether_the_file_was_missing(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    assert bootstrap.prepare_catalog(_settings(path)) is True
    assert bootstrap.prepare_catalog(_settings(path)) is False


def test_damage_is_told_apart_from_an_unopenable_file(tmp_path: Path, elsewhere: Path) -> None:
    from django.db import connection

    path = tmp_path / "catalog.sqlite3"
    path.write_bytes(random.Random(0).randbytes(8192))
    with pytest.raises(sqlite3.DatabaseError) as corrupt:
        sqlite3.connect(path).execute("SELECT 1 FROM sqlite_master").fetchall()
    assert bootstrap.is_damage(corrupt.value), corrupt.value
    with pytest.raises(sqlite3.OperationalError) as cannot_open:
        sqlite3.connect(tmp_path).execute("SELECT 1")  # a directory: SQLITE_CANTOPEN
    assert not bootstrap.is_damage(cannot_open.value)

    bootstrap.ensure_django(f"sqlite:///{elsewhere}")
    try:
        with pytest.raises(Exception) as wrapped, connection.cursor() as cursor:
            cursor.execute(f"ATTACH DATABASE '{path}' AS damaged")  # Django's DatabaseError
        error = bootstrap.catalog_error_from(wrapped.value)
        assert error is not None and error.damaged, wrapped.value
        assert f"the catalog {elsewhere} is damaged" in str(error)
    finally:
        connection.close()


def test_move_damaged_aside_keeps_every_file_and_a_fresh_catalog_opens(copy: Path) -> None:
    path = copy
    _overwrite(path, 0, 100)
    damaged = path.read_bytes()
    with pytest.raises(CatalogError):
        bootstrap.ensure_django(f"sqlite:///{path}")

    (moved, *others) = bootstrap.move_damaged_aside()
    assert moved.read_bytes() == damaged and moved.name.startswith("catalog.sqlite3.damaged-")
    assert all(p.name.startswith(moved.name) for p in others)  # its -wal/-shm, if any
    bootstrap.ensure_django(f"sqlite:///{path}")
    assert bootstrap.created_empty() == str(path)
    assert bootstrap.inspect_catalog().backups == 0
