"""PostgreSQL's contracts for archive_command and restore_command, as the CLI keeps them."""

from __future__ import annotations

import argparse

import pytest

from strongroom.errors import ConfigError, ExitCode, Interrupted, StorageError, WalNotFound
from strongroom.interfaces.cli import _archiver_exit


def _args(command: str) -> argparse.Namespace:
    return argparse.Namespace(command=command)


@pytest.mark.parametrize(
    ("code", "exc"),
    [(ExitCode.TERMINATED, Interrupted(15)), (ExitCode.INTERRUPTED, KeyboardInterrupt())],
)
def test_wal_push_never_exits_above_125(code: int, exc: BaseException) -> None:
    assert _archiver_exit(_args("wal-push"), code, exc) == ExitCode.FAILED


def test_wal_push_keeps_its_own_codes() -> None:
    assert _archiver_exit(_args("wal-push"), ExitCode.WAL_CONFLICT, None) == 15
    assert _archiver_exit(_args("wal-push"), ExitCode.OK, None) == 0


def test_wal_fetch_says_not_found_only_for_a_file_archived_nowhere() -> None:
    fetch = _args("wal-fetch")
    assert _archiver_exit(fetch, ExitCode.FAILED, WalNotFound("absent")) == 1
    for exc in (ConfigError("bad setting"), StorageError("down"), RuntimeError("bug")):
        code = getattr(exc, "exit_code", ExitCode.FAILED)
        assert _archiver_exit(fetch, code, exc) == ExitCode.WAL_FETCH_STOP > 125
    assert _archiver_exit(fetch, ExitCode.OK, None) == 0


def test_other_commands_are_untouched() -> None:
    assert _archiver_exit(_args("backup"), ExitCode.TERMINATED, Interrupted(15)) == 143
