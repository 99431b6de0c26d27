"""The pure retention policy over generated backup histories (no servers, no Django).

Histories are daily runs over 400+ days with gaps, failed runs, partial runs (some locations
failed) and copies in every verification state. Each safety rule of
``strongroom.core.retention`` is asserted for every generated case, and hand-built histories pin
down exactly which copies remain.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.core.retention import (
    Action,
    CopyFacts,
    Reason,
    RetentionPlan,
    RetentionPolicy,
    evaluate,
)

LOCATIONS = ("local", "r2", "b2")
DEFAULTS = {"local": 30, "r2": 365, "b2": 365}
EPOCH = datetime(2024, 1, 1, 2, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def backup(
    day: int,
    statuses: dict[str, str],
    *,
    backup_status: str = "VERIFIED",
    database: str = "shop",
    series: str = "",
) -> list[CopyFacts]:
    """The copies of one backup taken on ``day`` (2:00 UTC, like the seed's schedule)."""
    bid = f"{database}{series}-{day:04d}"
    return [
        CopyFacts(bid, database, loc, EPOCH + day * DAY, backup_status, status, series)
        for loc, status in statuses.items()
    ]


def verified_everywhere(day: int, **kw: str) -> list[CopyFacts]:
    return backup(day, dict.fromkeys(LOCATIONS, "VERIFIED"), **kw)  # type: ignore[arg-type]


def remaining(plan: RetentionPlan, location: str) -> list[int]:
    """Days of the backups whose copy in ``location`` is kept."""
    return sorted(
        int(d.copy.backup_id.rsplit("-", 1)[1])
        for d in plan.for_location(location)
        if d.action is Action.KEEP
    )


def at(day: float) -> datetime:
    return EPOCH + day * DAY


# -- hand-built histories: exactly which copies remain ----------------------------------------


def test_daily_backups_over_400_days_keep_30_local_and_365_in_the_clouds() -> None:
    copies = [c for day in range(400) for c in verified_everywhere(day)]
    plan = evaluate(copies, DEFAULTS, at(399))
    # a backup exactly N days old is kept
    assert remaining(plan, "local") == list(range(399 - 30, 400))
    assert remaining(plan, "r2") == list(range(399 - 365, 400))
    assert remaining(plan, "b2") == list(range(399 - 365, 400))
    # an hour later it is past retention
    plan = evaluate(copies, DEFAULTS, at(399) + timedelta(hours=1))
    assert remaining(plan, "local") == list(range(400 - 30, 400))
    assert remaining(plan, "r2") == list(range(400 - 365, 400))
    reasons = {(d.copy.location, d.copy.backup_id >= "shop-0035", d.reason) for d in plan.to_delete}
    assert reasons == {
        ("local", True, Reason.EXPIRED_VERIFIED_ELSEWHERE),  # 31-365 days: kept in the clouds
        ("local", False, Reason.EXPIRED_EVERYWHERE),  # older: every copy goes together
        ("r2", False, Reason.EXPIRED_EVERYWHERE),
        ("b2", False, Reason.EXPIRED_EVERYWHERE),
    }


def test_injected_clock_moves_the_boundary() -> None:
    copies = [c for day in range(60) for c in verified_everywhere(day)]
    now = [at(59)]
    policy = RetentionPolicy(DEFAULTS, clock=lambda: now[0])
    assert remaining(policy.evaluate(copies), "local") == list(range(29, 60))
    now[0] = at(100)
    # backups stopped at day 59: only the newest verified one stays locally
    assert remaining(policy.evaluate(copies), "local") == [59]
    assert remaining(policy.evaluate(copies), "r2") == list(range(60))


def test_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        evaluate([], DEFAULTS, datetime(2024, 1, 1))


def test_newest_verified_backup_survives_when_backups_stop() -> None:
    copies = [c for day in range(10) for c in verified_everywhere(day)]
    copies += backup(10, dict.fromkeys(LOCATIONS, "STORED"), backup_status="COMPLETED")
    copies += backup(11, dict.fromkeys(LOCATIONS, "FAILED"), backup_status="FAILED")
    plan = evaluate(copies, DEFAULTS, at(2000))
    kept = {(d.copy.backup_id, d.copy.location, d.reason) for d in plan.to_keep}
    assert kept == {("shop-0009", loc, Reason.NEWEST_VERIFIED) for loc in LOCATIONS}


def test_newest_restorable_backup_survives_when_nothing_was_ever_verified() -> None:
    stored = {"local": "STORED", "r2": "STORED"}
    copies = [c for day in range(5) for c in backup(day, stored, backup_status="COMPLETED")]
    plan = evaluate(copies, DEFAULTS, at(1000))
    assert {d.copy.backup_id for d in plan.to_keep} == {"shop-0004"}
    assert {d.reason for d in plan.to_keep} == {Reason.NEWEST_RESTORABLE}


def test_both_kinds_of_newest_verified_are_protected() -> None:
    old = verified_everywhere(1)
    newer = backup(2, {"local": "VERIFIED", "r2": "CORRUPT"}, backup_status="PARTIAL")
    plan = evaluate(old + newer, DEFAULTS, at(1000))
    assert not plan.to_delete
    assert plan.protected == {"shop-0001", "shop-0002"}


def test_local_copy_outlives_its_retention_until_a_cloud_copy_is_verified() -> None:
    copies = [c for day in range(100) for c in backup(day, {"local": "STORED", "r2": "STORED"})]
    copies += verified_everywhere(100)
    plan = evaluate(copies, DEFAULTS, at(100))
    assert remaining(plan, "local") == list(range(101))
    assert {d.reason for d in plan.for_location("local") if d.copy.backup_id < "shop-0070"} == {
        Reason.NO_VERIFIED_ELSEWHERE
    }
    # once the cloud copies are verified the old local copies may go
    verified = [replace(c, copy_status="VERIFIED") if c.location == "r2" else c for c in copies]
    plan = evaluate(verified, DEFAULTS, at(100))
    assert remaining(plan, "local") == list(range(70, 101))


def test_an_expired_copy_is_not_kept_only_to_justify_deleting_another() -> None:
    copies = backup(0, {"local": "VERIFIED", "r2": "VERIFIED", "b2": "STORED"})
    copies += verified_everywhere(500)
    plan = evaluate(copies, {"local": 30, "r2": 30, "b2": 365}, at(100))
    assert [d.reason for d in plan.decisions[:3]] == [
        Reason.NO_VERIFIED_ELSEWHERE,
        Reason.NO_VERIFIED_ELSEWHERE,
        Reason.WITHIN_RETENTION,
    ]


def test_partial_run_held_only_locally_expires_with_local_retention() -> None:
    copies = backup(
        0, {"local": "VERIFIED", "r2": "FAILED", "b2": "FAILED"}, backup_status="PARTIAL"
    )
    copies += verified_everywhere(40)
    plan = evaluate(copies, DEFAULTS, at(40))
    assert plan.decision("shop-0000", "local").reason is Reason.EXPIRED_EVERYWHERE
    # the failed cloud rows are within the clouds' retention: kept for the operator to see
    assert plan.decision("shop-0000", "r2").reason is Reason.WITHIN_RETENTION
    plan = evaluate(copies, DEFAULTS, at(400))
    assert plan.decision("shop-0000", "r2").reason is Reason.FAILED_EXPIRED


def test_missing_cloud_copy_within_retention_keeps_the_local_one() -> None:
    copies = backup(0, {"local": "VERIFIED", "r2": "MISSING", "b2": "CORRUPT"})
    copies += verified_everywhere(40)
    plan = evaluate(copies, DEFAULTS, at(40))
    assert plan.decision("shop-0000", "local").reason is Reason.NO_VERIFIED_ELSEWHERE


def test_corrupt_and_missing_expired_copies_go_when_verified_copy_is_kept() -> None:
    copies = backup(0, {"local": "CORRUPT", "r2": "VERIFIED", "b2": "VERIFIED"})
    copies += backup(1, {"local": "MISSING", "r2": "VERIFIED", "b2": "VERIFIED"})
    copies += verified_everywhere(40)
    plan = evaluate(copies, DEFAULTS, at(40))
    assert remaining(plan, "local") == [40]


def test_running_backup_and_unknown_location_are_kept() -> None:
    copies = backup(0, {"local": "PENDING", "r2": "PENDING"}, backup_status="IN_PROGRESS")
    copies += backup(1, {"local": "VERIFIED", "gcs": "VERIFIED"})
    copies += verified_everywhere(500)
    plan = evaluate(copies, DEFAULTS, at(500))
    assert plan.decision("shop-0000", "local").reason is Reason.IN_PROGRESS
    assert plan.decision("shop-0001", "gcs").reason is Reason.UNKNOWN_LOCATION
    # the unknown location counts as not expired, so the local copy needs a verified copy there
    assert plan.decision("shop-0001", "local").reason is Reason.EXPIRED_VERIFIED_ELSEWHERE


def test_databases_and_series_are_protected_independently() -> None:
    copies = verified_everywhere(0, database="a") + verified_everywhere(5, database="b")
    copies += verified_everywhere(1, database="a", series="tenant-7")
    copies += verified_everywhere(3, database="a")
    plan = evaluate(copies, DEFAULTS, at(3000))
    assert plan.protected == {"a-0003", "b-0005", "atenant-7-0001"}
    assert {d.copy.backup_id for d in plan.to_delete} == {"a-0000"}


def test_weekly_tenant_backups_keep_their_own_retention_per_location() -> None:
    """Tenant backups (series ``tenant:<id>``): local 8 weeks, clouds 1 year; full unchanged."""
    tenant_days = {"local": 56, "r2": 365, "b2": 365}
    copies = [c for d in range(0, 400, 7) for c in verified_everywhere(d, series="tenant:7")]
    copies += [c for d in range(400) for c in verified_everywhere(d)]
    policy = RetentionPolicy(DEFAULTS, lambda: at(399), {"tenant": tenant_days})
    plan = policy.evaluate(copies)

    def kept(series: str, location: str) -> list[int]:
        return [
            int(d.copy.backup_id.rsplit("-", 1)[1])
            for d in plan.for_location(location)
            if d.action is Action.KEEP and d.copy.series == series
        ]

    assert kept("tenant:7", "local") == list(range(343, 400, 7))  # 56 days back from day 399
    assert kept("tenant:7", "r2") == list(range(35, 400, 7))
    assert kept("", "local") == list(range(369, 400))  # the full backups' 30 days, as before


def test_deleted_copies_get_no_decision() -> None:
    copies = backup(0, {"local": "DELETED", "r2": "VERIFIED"})
    plan = evaluate(copies, DEFAULTS, at(1))
    assert [d.copy.location for d in plan.decisions] == ["r2"]


# -- generated histories: the safety rules hold in every case ---------------------------------

RUN_TROUBLES = ("gap", "failed", "partial")
COPY_TROUBLES = ("STORED", "CORRUPT", "MISSING", "DELETED")
RUN_KINDS = ["full"] * 6 + ["gap", "gap", "failed", "partial"]

troubles = st.lists(
    st.tuples(
        st.integers(0, 459),  # first day
        st.integers(1, 90),  # how many days
        st.sampled_from(RUN_TROUBLES + COPY_TROUBLES),
        st.sampled_from(LOCATIONS),
    ),
    max_size=40,
)


@st.composite
def histories(draw: st.DrawFn) -> list[CopyFacts]:
    """One or two databases, daily runs over 400-460 days, with stretches of trouble.

    The base is a clean daily history, every copy verified; each trouble is a stretch of days
    with gaps, failed runs, partial runs (a cloud location lost), or copies of one location left
    unverified, found corrupt or missing, or already deleted. The smallest example is the clean
    history, so failures shrink to a few troubles.
    """
    copies: list[CopyFacts] = []
    for database in draw(st.sampled_from([["shop"], ["shop", "crm"]])):
        days = draw(st.integers(400, 460))
        kinds = ["full"] * days
        states = [dict.fromkeys(LOCATIONS, "VERIFIED") for _ in range(days)]
        lost: list[set[str]] = [set() for _ in range(days)]
        for first, length, what, location in draw(troubles):
            for day in range(first, min(first + length, days)):
                if what in COPY_TROUBLES:
                    states[day][location] = what
                elif what == "partial":
                    kinds[day] = what
                    lost[day].add("r2" if location == "local" else location)
                else:
                    kinds[day] = what
        if draw(st.booleans()):
            kinds[-1] = "running"
        for day, kind in enumerate(kinds):
            copies += _run(database, day, kind, list(states[day].values()), lost[day])
    return copies


def _run(
    database: str, day: int, kind: str, states: list[str], failed: set[str]
) -> list[CopyFacts]:
    """One run's copies: a partial run lost the locations in ``failed`` (local is required)."""
    if kind == "gap":
        return []
    if kind == "failed":
        return backup(
            day, dict.fromkeys(LOCATIONS, "FAILED"), backup_status="FAILED", database=database
        )
    if kind == "running":
        statuses = dict.fromkeys(LOCATIONS, "PENDING")
        return backup(day, statuses, backup_status="IN_PROGRESS", database=database)
    statuses = dict(zip(LOCATIONS, states, strict=True))
    if kind == "partial":
        statuses.update(dict.fromkeys(failed, "FAILED"))
    data = [s for s in statuses.values() if s not in ("FAILED", "DELETED")]
    if data and all(s == "VERIFIED" for s in data):
        status = "VERIFIED"
    elif any(s == "VERIFIED" for s in data):
        status = "PARTIAL"
    elif any(s in ("CORRUPT", "MISSING") for s in data):
        status = "FAILED"
    else:
        status = "PARTIAL" if kind == "partial" else "COMPLETED"
    return backup(day, statuses, backup_status=status, database=database)


retentions = st.fixed_dictionaries(
    {"local": st.integers(1, 60), "r2": st.integers(20, 400), "b2": st.integers(20, 400)}
)
clocks = st.integers(0, 600 * 24).map(lambda hours: EPOCH + timedelta(hours=hours))
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
slow = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)


def _expired(c: CopyFacts, retention: dict[str, int], now: datetime) -> bool:
    return c.created_at < now - timedelta(days=retention[c.location])


def _newest_verified(copies: list[CopyFacts]) -> set[str]:
    """Recomputed independently: per database, newest by backup status and by copy status."""
    live = [c for c in copies if c.copy_status != "DELETED"]
    out: set[str] = set()
    for database in {c.database for c in live}:
        mine = [c for c in live if c.database == database]
        for verified in (
            [c for c in mine if c.backup_status == "VERIFIED"],
            [c for c in mine if c.copy_status == "VERIFIED"],
        ):
            if verified:
                out.add(max(verified, key=lambda c: (c.created_at, c.backup_id)).backup_id)
    return out


@fast
@given(histories(), retentions, clocks)
def test_every_live_copy_gets_exactly_one_decision(
    copies: list[CopyFacts], retention: dict[str, int], now: datetime
) -> None:
    plan = evaluate(copies, retention, now)
    assert [d.copy for d in plan.decisions] == [c for c in copies if c.copy_status != "DELETED"]
    assert all(d.action is d.reason.action for d in plan.decisions)


@fast
@given(histories(), retentions, clocks)
def test_nothing_within_retention_is_deleted(
    copies: list[CopyFacts], retention: dict[str, int], now: datetime
) -> None:
    for d in evaluate(copies, retention, now).to_delete:
        assert _expired(d.copy, retention, now), d


@fast
@given(histories(), retentions, clocks)
def test_newest_verified_backup_is_never_deleted_anywhere(
    copies: list[CopyFacts], retention: dict[str, int], now: datetime
) -> None:
    plan = evaluate(copies, retention, now)
    protected = _newest_verified(copies)
    assert protected <= plan.protected
    assert not [d for d in plan.to_delete if d.copy.backup_id in protected]


@fast
@given(histories(), retentions, clocks)
def test_a_deleted_copy_leaves_a_verified_copy_elsewhere_or_goes_with_all(
    copies: list[CopyFacts], retention: dict[str, int], now: datetime
) -> None:
    plan = evaluate(copies, retention, now)
    kept: dict[str, list[CopyFacts]] = defaultdict(list)
    deleted: dict[str, list[CopyFacts]] = defaultdict(list)
    for d in plan.decisions:
        if d.copy.holds_data:
            (deleted if d.delete else kept)[d.copy.backup_id].append(d.copy)
    for backup_id, gone in deleted.items():
        for c in gone:
            verified_elsewhere = any(
                k.copy_status == "VERIFIED" and k.location != c.location for k in kept[backup_id]
            )
            all_go = not kept[backup_id] and all(_expired(g, retention, now) for g in gone)
            assert verified_elsewhere or all_go, (c, kept[backup_id])


@fast
@given(histories(), retentions, clocks)
def test_applying_a_plan_leaves_nothing_more_to_delete(
    copies: list[CopyFacts], retention: dict[str, int], now: datetime
) -> None:
    plan = evaluate(copies, retention, now)
    gone = {id(d.copy) for d in plan.to_delete}
    after = [replace(c, copy_status="DELETED") if id(c) in gone else c for c in copies]
    again = evaluate(after, retention, now)
    assert not again.to_delete
    assert again.protected == plan.protected


@fast
@given(histories(), retentions, clocks)
def test_the_clock_is_the_only_time_source(
    copies: list[CopyFacts], retention: dict[str, int], now: datetime
) -> None:
    assert RetentionPolicy(retention, clock=lambda: now).evaluate(copies) == evaluate(
        copies, retention, now
    )


@slow
@given(
    st.lists(st.sampled_from(RUN_KINDS), min_size=400, max_size=400),
    st.lists(st.booleans(), min_size=400, max_size=400),
)
def test_a_daily_prune_over_400_days_keeps_every_rule(kinds: list[str], verify: list[bool]) -> None:
    """Simulate the scheduled task: each day a run (or not), verify (or not), then prune."""
    live: list[CopyFacts] = []
    for day, kind in enumerate(kinds):
        made = _run("shop", day, kind, ["STORED"] * 3, {"r2"})
        if verify[day]:
            made = [
                replace(c, copy_status="VERIFIED") if c.copy_status == "STORED" else c for c in made
            ]
            if all(c.copy_status == "VERIFIED" for c in made):
                made = [replace(c, backup_status="VERIFIED") for c in made]
        live += made
        now = at(day) + timedelta(hours=1)
        protected = _newest_verified(live)
        gone = {id(d.copy) for d in evaluate(live, DEFAULTS, now).to_delete}
        live = [c for c in live if id(c) not in gone]
        _assert_history_safe(live, protected, now)
    # after 400 days no local copy older than 30 days is left that a verified cloud copy covers
    assert all(not _expired(c, DEFAULTS, at(400)) for c in live if c.location == "b2")


def _assert_history_safe(live: list[CopyFacts], protected: set[str], now: datetime) -> None:
    by_backup: dict[str, list[CopyFacts]] = defaultdict(list)
    for c in live:
        by_backup[c.backup_id].append(c)
    assert protected <= set(by_backup)
    for backup_id, group in by_backup.items():
        if backup_id in protected:
            continue
        for c in group:
            if not c.holds_data:
                continue
            # nothing older than every location's retention survives unless protected
            assert c.created_at >= now - timedelta(days=365), c
            # a local copy past 30 days stays only for want of a verified copy elsewhere
            if c.location == "local" and _expired(c, DEFAULTS, now):
                assert not any(o.copy_status == "VERIFIED" for o in group if o is not c), c
