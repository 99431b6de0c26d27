"""A damaged, overwritten or deleted SQLite catalog, as the ``strongroom`` CLI meets it.

One tiny shop database and two real backups on local disk for the module; every test damages
its own copy of the catalog file and runs the real CLI against it. Wanted: ``check`` fails
(or warns for a lost catalog) and names ``catalog rebuild``, every other command stops with
exactly one stderr line naming the file, nothing is stored, and a rebuild brings the backups back.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clisupport import CLI, Cli, clean_environ

from strongroom.core.crypto import generate_key
from strongroom.sandbox.demo_data import create_demo_database
from strongroom.sandbox.pgcluster import PgCluster

pytestmark = pytest.mark.integration

TINY = {"tenants": 1, "customers_per_tenant": 3, "items_per_tenant": 3, "sales_per_tenant": 3}
CATALOG_EXIT = 12
CHECK_FAILED = 8


@dataclass(frozen=True)
class Stock:
    """What every test starts from: settings, a good catalog file and the two backups in it."""

    env: dict[str, str]
    pristine: Path
    local: Path
    backup_ids: frozenset[str]


@pytest.fixture(scope="module")
def stock(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stock]:
    root = tmp_path_factory.mktemp("catalog-faults")
    name = f"faults_{uuid.uuid4().hex[:10]}"
    shop = create_demo_database(pg_cluster.url(), name, **TINY)  # type: ignore[arg-type]
    (root / "local").mkdir()
    (root / "home").mkdir()
    catalog = root / "made.sqlite3"
    env = {
        **clean_environ(),
        "HOME": str(root / "home"),
        "DATABASE_URL": shop.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(root / "local"),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": f"sqlite:///{catalog}",
    }
    try:
        ids = {_backup(env) for _ in range(2)}
        pristine = root / "pristine.sqlite3"
        with sqlite3.connect(catalog) as source, sqlite3.connect(pristine) as copy:
            source.backup(copy)  # the WAL's pages included: one self-contained file
        yield Stock(env, pristine, root / "local", frozenset(ids))
    finally:
        pg_cluster.drop_database(name)


def _backup(env: dict[str, str]) -> str:
    done = _run(env, "backup", "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["id"])


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def catalog(stock: Stock, tmp_path: Path) -> Path:
    """This test's own copy of the good catalog (more pages than the damage below spans)."""
    path = tmp_path / "catalog.sqlite3"
    shutil.copyfile(stock.pristine, path)
    assert path.stat().st_size > 8192 + 4096
    return path


@pytest.fixture
def cli(stock: Stock, catalog: Path) -> Cli:
    env = {**stock.env, "STRONGROOM_CATALOG_URL": f"sqlite:///{catalog}"}
    return lambda *args: _run(env, *args)


def _overwrite(path: Path, offset: int, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(offset).randbytes(size))


def _stored(local: Path) -> set[Path]:
    return {p for p in local.rglob("*") if p.is_file()}


def _listed(cli: Cli) -> set[str]:
    done = cli("list", "--json")
    assert done.returncode == 0, done.stderr
    return {row["id"] for row in json.loads(done.stdout)}


def _one_catalog_line(done: subprocess.CompletedProcess[str], catalog: Path) -> str:
    lines = done.stderr.splitlines()
    assert done.returncode == CATALOG_EXIT, done.stdout + done.stderr
    assert len(lines) == 1, done.stderr
    assert str(catalog) in lines[0] and "`strongroom catalog rebuild --from LOCATION`" in lines[0]
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    return lines[0]


DAMAGE = {
    "pages in the middle": (8192, 4096, "database disk image is malformed"),
    "the header": (0, 100, "file is not a database"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_catalog_stops_every_command_with_one_line_and_check_fails(
    damage: str, stock: Stock, catalog: Path, cli: Cli
) -> None:
    offset, size, reason = DAMAGE[damage]
    _overwrite(catalog, offset, size)
    before = _stored(stock.local)

    done = cli("check")
    assert done.returncode == CHECK_FAILED, done.stdout + done.stderr
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("FAIL catalog")]
    assert str(catalog) in line and reason in line and "catalog rebuild --from" in line
    assert "ok   location local" in done.stdout  # the other probes still ran

    for args in (("backup", "--no-progress"), ("list",)):
        line = _one_catalog_line(cli(*args), catalog)
        assert f"is damaged ({reason})" in line and "permission" not in line
    assert _one_catalog_line(cli("catalog", "rebuild", "--from", "local"), catalog)
    assert _stored(stock.local) == before  # the backup stopped before dumping or storing


def test_rebuild_move_damaged_keeps_the_file_and_brings_the_backups_back(
    stock: Stock, catalog: Path, cli: Cli
) -> None:
    _overwrite(catalog, 8192, 4096)
    damaged_bytes = catalog.read_bytes()

    done = cli("catalog", "rebuild", "--from", "local", "--move-damaged")
    assert done.returncode == 0, done.stdout + done.stderr
    (kept,) = catalog.parent.glob("catalog.sqlite3.damaged-*[0-9]Z")
    assert kept.read_bytes() == damaged_bytes and str(kept) in done.stderr
    assert _listed(cli) == stock.backup_ids
    done = cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok   catalog          {catalog}: quick_check ok, 2 backup(s)" in done.stdout


def test_a_catalog_moved_aside_by_hand_is_rebuilt_into_a_fresh_file(
    stock: Stock, catalog: Path, cli: Cli
) -> None:
    _overwrite(catalog, 0, 100)
    catalog.rename(catalog.with_name("damaged.sqlite3"))

    done = cli("catalog", "rebuild", "--from", "local")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 backup(s)" in done.stdout and done.stderr == ""
    assert _listed(cli) == stock.backup_ids


def test_a_deleted_catalog_is_named_by_the_first_reader_and_check_points_at_rebuild(
    stock: Stock, catalog: Path, cli: Cli
) -> None:
    catalog.unlink()

    done = cli("list")
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert f"the catalog {catalog} did not exist and was created empty" in line
    assert "`strongroom catalog rebuild --from LOCATION`" in line

    done = cli("check")
    assert done.returncode == CHECK_FAILED  # no backup of the database in the catalog: stale
    assert (
        f"warn catalog          the catalog {catalog} is empty while local holds 2 backup(s): "
        "run strongroom catalog rebuild --from local"
    ) in done.stdout

    assert cli("catalog", "rebuild", "--from", "local").returncode == 0
    assert _listed(cli) == stock.backup_ids


def test_an_unreachable_postgresql_catalog_is_one_line_without_its_password(stock: Stock) -> None:
    secret = uuid.uuid4().hex
    env = {**stock.env, "STRONGROOM_CATALOG_URL": f"postgresql://strongroom:{secret}@127.0.0.1:1/c"}

    done = _run(env, "list")
    assert done.returncode == CATALOG_EXIT, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert "cannot open the strongroom catalog postgresql://strongroom@127.0.0.1:1/c" in line
    done = _run(env, "check")
    assert done.returncode == CHECK_FAILED
    assert "FAIL catalog          cannot open the strongroom catalog" in done.stdout
    assert "ok   location local" in done.stdout
    assert all(secret not in text for text in (done.stdout, done.stderr, line))
