"""The drill rules without servers: what ``check`` says about drills, which leftovers may go.

Runs against a real SQLite catalog in a temp dir (as ``test_catalog.py``), with the clock
injected, so each of the four numbered rules of ``drill_state`` is met on its own.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from strongroom.catalog import bootstrap
from strongroom.config import load_config


@pytest.fixture(scope="module", autouse=True)
def catalog(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("drill-catalog") / "catalog.sqlite3"
    bootstrap.ensure_django(f"sqlite:///{path}")


@pytest.fixture
def db() -> str:
    return f"shop_{uuid.uuid4().hex[:10]}"


def _config(db: str, **extra: str) -> Any:
    return load_config(
        {"DATABASE_URL": f"postgresql://u@h/{db}", "STRONGROOM_LOCATIONS": "local", **extra}
    )


def _backup(db: str, age_days: float) -> str:
    from strongroom.catalog import store
    from strongroom.models import Backup

    backup = store.finish_backup(
        store.start_backup(backup_type="FULL_DATABASE", database=db).id, status="COMPLETED"
    )
    when = datetime.now(UTC) - timedelta(days=age_days)
    Backup.objects.filter(id=backup.id).update(created_at=when, finished_at=when)
    return str(backup.id)


def _drill(backup_id: str, db: str, ok: bool, age_days: float) -> int:
    from strongroom.catalog import store
    from strongroom.models import Drill

    drill = store.start_drill(backup_id=backup_id, kind="full", database=db, target="t")
    store.finish_drill(drill.pk, ok=ok, rto_seconds=2.5 if ok else None, error="" if ok else "x")
    when = datetime.now(UTC) - timedelta(days=age_days)
    Drill.objects.filter(pk=drill.pk).update(started_at=when, finished_at=when)
    return int(drill.pk)


def test_a_fresh_install_passes_until_a_backup_is_older_than_the_max_age(db: str) -> None:
    from strongroom.services.drill import drill_state

    assert drill_state(_config(db)).ok  # nothing at all
    _backup(db, age_days=7)
    state = drill_state(_config(db))
    assert state.ok and "none due" in state.detail
    later = datetime.now(UTC) + timedelta(days=2)  # the backup is 9 days old then
    state = drill_state(_config(db), now=later)
    assert not state.ok and "no restore drill passed in the last 8 d (none ever" in state.detail
    assert drill_state(_config(db, BACKUP_DRILL_MAX_AGE_DAYS="10"), now=later).ok


def test_a_recent_pass_passes_and_an_old_one_fails(db: str) -> None:
    from strongroom.services.drill import drill_state

    backup = _backup(db, age_days=20)
    drill = _drill(backup, db, ok=True, age_days=3)
    state = drill_state(_config(db))
    assert state.ok and f"drill {drill} of backup {backup} passed 3.0 d ago, RTO 2.5 s" in (
        state.detail
    )
    state = drill_state(_config(db), now=datetime.now(UTC) + timedelta(days=6))
    assert not state.ok and "(the last passed 9.0 d ago;" in state.detail


def test_the_newest_finished_drill_failing_fails_until_a_later_one_passes(db: str) -> None:
    from strongroom.catalog import store
    from strongroom.services.drill import drill_state

    backup = _backup(db, age_days=1)
    _drill(backup, db, ok=True, age_days=2)
    failed = _drill(backup, db, ok=False, age_days=1)
    state = drill_state(_config(db))
    assert not state.ok and f"the newest drill ({failed}, backup {backup}" in state.detail
    store.start_drill(backup_id=backup, kind="full", database=db, target="running")
    assert not drill_state(_config(db)).ok  # a running drill proves nothing yet
    _drill(backup, db, ok=True, age_days=0)
    assert drill_state(_config(db)).ok
    assert store.get_backup(backup).last_drill_ok is True


def test_leftovers_go_unless_a_live_drill_may_use_them(db: str) -> None:
    from strongroom.models import Drill
    from strongroom.services.drill import leftover_reason

    here, gone = socket.gethostname(), 2**22 + 12345  # beyond pid_max on most systems
    assert leftover_reason(None, sessions=0) is not None
    assert leftover_reason(None, sessions=1) is None  # someone is in it: perhaps another catalog's
    assert "finished" in str(leftover_reason(Drill(pk=1, ok=True), sessions=3))
    assert "finished" in str(leftover_reason(Drill(pk=1, ok=False), sessions=0))
    assert "is gone" in str(leftover_reason(Drill(pk=2, ok=None, host=here, pid=gone), sessions=1))
    assert leftover_reason(Drill(pk=3, ok=None, host=here, pid=os.getpid()), sessions=0) is None
    assert leftover_reason(Drill(pk=4, ok=None, host="another-host", pid=gone), sessions=0) is None
