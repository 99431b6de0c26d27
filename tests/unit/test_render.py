"""CLI output is plain text: reasons holding brackets are printed as they are, never as markup."""

from __future__ import annotations

from typing import Any

from strongroom.interfaces import render

REASON = "[Errno 13] Permission denied: '/srv/[local]/backups' ([/var/backups] is read-only)"


def _doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "20261129T020000Z-abcdef",
        "status": "PARTIAL",
        "backup_type": "full",
        "database": "shop",
        "size_bytes": 2048,
        "raw_size_bytes": 8192,
        "compression_ratio": 0.75,
        "backup_duration_seconds": 1.5,
        "error": REASON,
        "copies": [
            {"location": "local", "status": "STORED", "key": "shop/full/x.dump.zst.enc"},
            {"location": "b2", "status": "FAILED", "key": "", "error": REASON},
        ],
    }
    doc.update(extra)
    return doc


def test_backup_detail_prints_bracketed_reasons_verbatim() -> None:
    with render.out.capture() as captured:
        render.backup_detail(_doc())
    text = captured.get()
    assert text.splitlines()[0] == "backup 20261129T020000Z-abcdef  PARTIAL"
    assert f"  error                    {REASON}\n" in text
    assert f"  copy b2                  FAILED   ({REASON})\n" in text


def test_backups_table_keeps_status_and_location_text() -> None:
    with render.out.capture() as captured:
        render.backups_table([_doc()])
    text = captured.get()
    assert "PARTIAL" in text and "local:stored b2:failed" in text


def test_prune_summary_counts_real_copies_only() -> None:
    """Two interrupted deletions that still fail, nothing new: never "deleted -2 copies"."""
    from datetime import UTC, datetime

    from strongroom.core.retention import RetentionPlan
    from strongroom.services.prune import PrunedCopy, PruneReport

    stuck = [PrunedCopy(f"b{i}", "r2", "RESUMED", "", ok=False, error="down") for i in (1, 2)]
    report = PruneReport(datetime.now(UTC), False, RetentionPlan(datetime.now(UTC), ()))
    report.resumed = stuck
    counts = report.counts()
    assert counts == {"deleted": 0, "failed": 0, "finished": 0, "unfinished": 2, "kept": 0}
    assert render.prune_summary(dry_run=False, **counts) == (
        "deleted 0 copies, finished 0 interrupted deletions (2 still unfinished), kept 0"
    )
    report.deleted = [
        PrunedCopy("b3", "local", "EXPIRED_EVERYWHERE", ""),
        PrunedCopy("b4", "b2", "EXPIRED_EVERYWHERE", "", ok=False, error="denied"),
    ]
    report.resumed = [stuck[0], PrunedCopy("b5", "local", "RESUMED", "")]
    assert render.prune_summary(dry_run=False, **report.counts()) == (
        "deleted 1 copy, 1 could not be deleted, "
        "finished 1 interrupted deletion (1 still unfinished), kept 0"
    )
    assert render.prune_summary(
        dry_run=True, deleted=3, failed=0, finished=0, unfinished=0, kept=6
    ) == ("would delete 3 copies, kept 6")
