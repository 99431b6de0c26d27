"""``check``'s drill rule counts base backup drills beside the database's own drills.

A base drill is recorded under its cluster's system identifier, not the database's name; its
own catalog here, since a failed base drill counts for every database of that catalog.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from strongroom.catalog import bootstrap
from strongroom.config import load_config


@pytest.fixture(scope="module", autouse=True)
def catalog(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("base-drill-catalog") / "catalog.sqlite3"
    bootstrap.ensure_django(f"sqlite:///{path}")


def _drill(kind: str, database: str, ok: bool, age_hours: float) -> int:
    from strongroom.catalog import store
    from strongroom.models import Drill

    backup_type = store.KIND_TO_TYPE[kind]
    backup = store.finish_backup(
        store.start_backup(backup_type=backup_type, database=database).id, status="COMPLETED"
    )
    drill = store.start_drill(backup_id=backup.id, kind=kind, database=database, target="t")
    store.finish_drill(drill.pk, ok=ok, rto_seconds=3.0 if ok else None, error="" if ok else "WAL")
    when = datetime.now(UTC) - timedelta(hours=age_hours)
    Drill.objects.filter(pk=drill.pk).update(started_at=when, finished_at=when)
    return int(drill.pk)


def test_a_failed_base_drill_fails_check_until_a_later_base_drill_passes() -> None:
    from strongroom.services.drill import drill_state

    config: Any = load_config(
        {"DATABASE_URL": "postgresql://u@h/shop", "STRONGROOM_LOCATIONS": "local"}
    )
    _drill("full", "shop", True, age_hours=1)
    assert drill_state(config).ok
    failed = _drill("base", "7714570773118878030", False, age_hours=5)
    state = drill_state(config)  # older than the full drill that passed, and still counted
    assert not state.ok and f"the newest drill ({failed}," in state.detail and "WAL" in state.detail
    passed = _drill("base", "7714570773118878030", True, age_hours=0.5)
    state = drill_state(config)
    assert state.ok and f"drill {passed} of backup" in state.detail
