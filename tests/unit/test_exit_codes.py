"""Exit statuses are an interface (scripts, cron, monitoring): their numbers never change."""

from __future__ import annotations

from strongroom import errors
from strongroom.errors import ExitCode


def test_the_exit_code_table_keeps_its_numbers() -> None:
    assert {c.name: c.value for c in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "CONFIG": 2,
        "WRONG_KEY": 3,
        "INTEGRITY": 4,
        "LOCK_BUSY": 5,
        "BACKUP_INCOMPLETE": 6,
        "RESTORE_MISMATCH": 7,
        "CHECK_FAILED": 8,
        "PRUNE_INCOMPLETE": 9,
        "HEAL_INCOMPLETE": 10,
        "REBUILD_INCOMPLETE": 11,
        "CATALOG": 12,
        "WAL_CONFLICT": 15,
        "WAL_FOREIGN": 16,
        "WAL_GAP": 17,
        "HANGUP": 129,
        "INTERRUPTED": 130,
        "TERMINATED": 143,
        "WAL_FETCH_STOP": 200,
    }


def test_every_error_class_takes_its_code_from_the_table() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.StrongroomError)
    ]
    assert len(classes) > 10
    for cls in classes:
        assert isinstance(cls.exit_code, ExitCode), cls
    assert errors.PreflightError.exit_code == 2 and errors.LockBusy.exit_code == 5
    assert errors.DumpFailed.exit_code == 1
