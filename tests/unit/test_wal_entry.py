"""The ``strongroom`` executable answers a pushed-ahead ``wal-push`` before the CLI loads, and
leaves every other call to the CLI, which then says and exits exactly as before."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from walsupport import FOREIGN, NAME, SYSTEM_ID, pushed_ahead_cluster

from strongroom.interfaces.entry import plain_wal_fetch, plain_wal_push, served_from_spool

#: Runs ``main`` of the module named by the first argument with the rest as the command line;
#: writes ``sys.modules`` to the file named by the second as the process exits.
RUN = (
    "import atexit, importlib, sys\n"
    "module, out = sys.argv.pop(1), sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sys.modules)))\n"
    "sys.exit(importlib.import_module(module).main())\n"
)


def _run(
    module: str, argv: list[str], tmp_path: Path, **settings: str
) -> tuple[int, str, str, set[str]]:
    """``(exit code, stdout, stderr, modules loaded)`` of ``module``'s ``main`` in a new
    interpreter, with none of the developer's settings in its environment, only ``settings``."""
    modules = tmp_path / f"modules-{module}.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)} | settings
    done = subprocess.run(
        [sys.executable, "-c", RUN, module, str(modules), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, set(modules.read_text().split())


def test_a_pushed_ahead_file_is_answered_without_the_cli_argparse_or_logging(
    tmp_path: Path,
) -> None:
    segment, record, config = pushed_ahead_cluster(tmp_path)
    argv = ["--config", str(config), "wal-push", str(segment)]
    code, out, err, loaded = _run("strongroom.interfaces.entry", argv, tmp_path)
    assert (code, out, err) == (0, "", "")
    assert not record.exists()  # the record answers one call, as the CLI's fast path
    assert "strongroom.services.wal_cluster" in loaded
    unwanted = ("argparse", "logging", "strongroom.interfaces.cli", "strongroom.interfaces.wal")
    unwanted += ("strongroom.core.storage", "strongroom.core.crypto", "strongroom.core.codecs")
    unwanted += ("boto3", "botocore", "django", "zstandard", "tink", "psycopg")
    assert {m for m in loaded if m.startswith(unwanted)} == set()
    # a third of the call's CPU: the configuration module's dataclasses, and typing
    assert {"strongroom.config", "typing"} & loaded == set()


def test_the_config_file_may_be_named_by_the_environment_and_other_wal_settings_are_read(
    tmp_path: Path,
) -> None:
    """``STRONGROOM_CONFIG`` instead of ``--config``; a WAL setting besides the spool (a number
    the CLI's fast path checks) is then read by the configuration module, and still answered."""
    segment, record, config = pushed_ahead_cluster(tmp_path)
    config.write_text(config.read_text() + "BACKUP_WAL_PUSH_AHEAD=8\n")
    argv = ["wal-push", str(segment)]
    code, out, err, loaded = _run(
        "strongroom.interfaces.entry", argv, tmp_path, STRONGROOM_CONFIG=str(config)
    )
    assert (code, out, err) == (0, "", "")
    assert not record.exists()
    assert "strongroom.config" in loaded and "strongroom.interfaces.cli" not in loaded


def test_the_settings_the_fast_path_reads_itself_are_all_the_wal_loader_reads() -> None:
    """:func:`strongroom.interfaces.entry.wal_settings` reads the spool and data directory
    itself only when no other ``BACKUP_WAL_*`` name is set: every other name
    ``load_wal_settings`` reads must be one of those (else a bad value would pass unseen)."""
    from strongroom.config import load_wal_settings

    read: set[str] = set()

    class Recorder(dict[str, str]):
        def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
            read.add(name)
            return default

    load_wal_settings(Recorder())
    assert {"BACKUP_WAL_SPOOL_DIR", "STRONGROOM_PGDATA"} <= read
    assert {
        n for n in read if n != "STRONGROOM_PGDATA" and not n.startswith("BACKUP_WAL_")
    } == set()


def _same_as_cli(tmp_path: Path, argv: list[str], record: Path) -> tuple[int, str]:
    """Run ``argv`` through the executable and through the CLI, each with the spool record as
    it was: both must answer alike; the answer."""
    kept = record.read_text() if record.exists() else None
    ours = _run("strongroom.interfaces.entry", argv, tmp_path)
    if kept is not None:
        record.write_text(kept)
    cli = _run("strongroom.interfaces.cli", argv, tmp_path)
    assert ours[:3] == cli[:3]
    assert "strongroom.interfaces.cli" in ours[3]  # it was the CLI that answered
    return ours[0], ours[2]


def test_a_blank_spool_setting_in_the_environment_leaves_the_files_value(tmp_path: Path) -> None:
    segment, record, config = pushed_ahead_cluster(tmp_path)
    argv = ["--config", str(config), "wal-push", str(segment)]
    code, _, err, loaded = _run(
        "strongroom.interfaces.entry", argv, tmp_path, BACKUP_WAL_SPOOL_DIR="  "
    )
    assert (code, err) == (0, "") and not record.exists()
    assert "strongroom.interfaces.cli" not in loaded


def test_a_foreign_cluster_is_refused_as_the_cli_refuses_it(tmp_path: Path) -> None:
    segment, record, config = pushed_ahead_cluster(tmp_path, control_id=SYSTEM_ID + 1)
    argv = ["--config", str(config), "wal-push", str(segment)]
    code, err = _same_as_cli(tmp_path, argv, record)
    assert code != 0 and "belongs to the cluster with system identifier" in err
    assert record.exists()


def test_a_missing_config_file_is_the_clis_error(tmp_path: Path) -> None:
    segment, record, _ = pushed_ahead_cluster(tmp_path)
    argv = ["--config", str(tmp_path / "nowhere.env"), "wal-push", str(segment)]
    code, err = _same_as_cli(tmp_path, argv, record)
    assert code != 0 and "nowhere.env does not exist" in err


def test_a_bad_wal_setting_is_the_clis_error_even_with_a_record(tmp_path: Path) -> None:
    segment, record, config = pushed_ahead_cluster(tmp_path)
    config.write_text(config.read_text() + "BACKUP_WAL_PUSH_AHEAD=lots\n")
    argv = ["--config", str(config), "wal-push", str(segment)]
    code, err = _same_as_cli(tmp_path, argv, record)
    assert code != 0 and "BACKUP_WAL_PUSH_AHEAD" in err


def test_verbose_is_the_clis_log_line(tmp_path: Path) -> None:
    segment, record, config = pushed_ahead_cluster(tmp_path)
    argv = ["-v", "--config", str(config), "wal-push", str(segment)]
    code, err = _same_as_cli(tmp_path, argv, record)
    assert code == 0 and "pushed ahead earlier, checked" in err


@pytest.mark.parametrize(
    ("words", "plain"),
    [
        (["wal-push", "pg_wal/X"], ("pg_wal/X", None)),
        (["--config", "f.env", "wal-push", "pg_wal/X"], ("pg_wal/X", "f.env")),
        (["--config=f.env", "wal-push", "pg_wal/X"], ("pg_wal/X", "f.env")),
        (["-v", "wal-push", "pg_wal/X"], None),
        (["--conf", "f.env", "wal-push", "pg_wal/X"], None),
        (["wal-push", "-h"], None),
        (["--config", "-v", "wal-push", "X"], None),
        (["wal-push", "X", "Y"], None),
        (["wal-fetch", "X", "Y"], None),
        (["wal-push"], None),
        ([], None),
    ],
)
def test_only_the_plain_command_line_is_answered_before_the_cli(
    words: list[str], plain: tuple[str, str | None] | None
) -> None:
    assert plain_wal_push(words) == plain


@pytest.mark.parametrize("size", [0, 40, 8192, 8193, (1 << 18) + 8191, (1 << 20) + 5])
def test_the_fast_path_hashes_the_whole_file_through_its_small_buffer(
    tmp_path: Path, size: int
) -> None:
    from strongroom.services.wal_cluster import HEAD_BYTES, hash_wal_file

    data = os.urandom(size)
    file = tmp_path / NAME
    file.write_bytes(data)
    assert hash_wal_file(file) == (data[:HEAD_BYTES], hashlib.sha256(data).hexdigest())


def test_a_missing_file_is_the_same_error_as_reading_it_whole(tmp_path: Path) -> None:
    from strongroom.errors import ConfigError
    from strongroom.services.wal_cluster import hash_wal_file, read_wal_file

    missing = tmp_path / NAME
    with pytest.raises(ConfigError) as whole:
        read_wal_file(missing)
    with pytest.raises(ConfigError) as hashed:
        hash_wal_file(missing)
    assert str(whole.value) == str(hashed.value)


# -- wal-fetch: a prefetched segment served before the CLI loads ---------------------------------

FIRST, SECOND, THIRD = (f"00000001000000000000004{n}" for n in (1, 2, 3))


def _prefetched(tmp_path: Path, *names: str) -> tuple[Path, Path]:
    """A spool holding ``names`` prefetched (each its own content) and a config file naming it;
    ``(prefetch folder, config file)``."""
    folder = tmp_path / "spool" / "prefetch"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(name.encode() * 1000)
    config = tmp_path / "strongroom.env"
    config.write_text(f"BACKUP_WAL_SPOOL_DIR={tmp_path / 'spool'}\nSTRONGROOM_LOCATIONS=local\n")
    config.chmod(0o600)
    return folder, config


def test_a_prefetched_segment_with_more_behind_it_is_served_without_the_cli(
    tmp_path: Path,
) -> None:
    folder, config = _prefetched(tmp_path, FIRST, SECOND, THIRD)
    dest = tmp_path / "RECOVERYXLOG"
    argv = ["--config", str(config), "wal-fetch", SECOND, str(dest)]
    code, out, err, loaded = _run("strongroom.interfaces.entry", argv, tmp_path)
    assert (code, out, err) == (0, "", "")
    assert dest.read_bytes() == SECOND.encode() * 1000
    # served, and the one recovery has passed dropped; the next one kept for the next call
    assert sorted(p.name for p in folder.iterdir()) == [THIRD]
    assert list(tmp_path.glob("RECOVERYXLOG.strongroom-*")) == []  # no temporary left
    unwanted = ("argparse", "logging", "strongroom.interfaces.cli", "strongroom.services")
    unwanted += ("strongroom.core.storage", "strongroom.core.crypto", "strongroom.core.codecs")
    unwanted += ("boto3", "botocore", "django", "zstandard", "tink", "psycopg")
    assert {m for m in loaded if m.startswith(unwanted)} == set()


def test_the_last_prefetched_segment_and_an_absent_one_go_to_the_cli(tmp_path: Path) -> None:
    """The CLI serves the last one and fetches the next window at once; an absent one it
    fetches (or says it is not archived). The lean path writes nothing for either."""
    folder, config = _prefetched(tmp_path, THIRD)
    dest = tmp_path / "RECOVERYXLOG"
    assert served_from_spool(THIRD, str(dest), str(config)) is None
    assert served_from_spool(FIRST, str(dest), str(config)) is None
    assert not dest.exists() and sorted(p.name for p in folder.iterdir()) == [THIRD]
    assert served_from_spool(THIRD, str(dest), None) is None  # no spool configured at all


def test_only_a_plain_wal_fetch_command_line_is_taken() -> None:
    assert plain_wal_fetch(["wal-fetch", FIRST, "pg_wal/RECOVERYXLOG"]) == (
        FIRST,
        "pg_wal/RECOVERYXLOG",
        None,
    )
    assert plain_wal_fetch(["--config", "/etc/s.env", "wal-fetch", FIRST, "x"]) == (
        FIRST,
        "x",
        "/etc/s.env",
    )
    assert plain_wal_fetch(["--config=/etc/s.env", "wal-fetch", FIRST, "x"]) == (
        FIRST,
        "x",
        "/etc/s.env",
    )
    for words in (
        ["-v", "wal-fetch", FIRST, "x"],
        ["wal-fetch", FIRST],
        ["wal-fetch", "-h", "x"],
        ["wal-push", FIRST, "x"],
        ["--config", "-x", "wal-fetch", FIRST, "x"],
    ):
        assert plain_wal_fetch(words) is None, words
