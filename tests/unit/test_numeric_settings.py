"""Every numeric setting is finite and in range, and a bad value is reported under its own name.

The names come from the declarations (``config.NUMBERS`` and each registered location's
settings), so a setting added there is covered here without editing this file.
"""

from __future__ import annotations

import pytest

from strongroom import config
from strongroom.config import load_config
from strongroom.core.storage import location_types
from strongroom.core.storage.settings import numeric_settings
from strongroom.errors import ConfigError
from strongroom.numbers import Number

#: Settings another one bounds: that one set so this one's whole range is allowed.
COMPANIONS = {
    "BACKUP_TASK_PRIORITY": {"BACKUP_QUEUE_MAX_PRIORITY": "255"},
    "BACKUP_TENANT_TASK_PRIORITY": {"BACKUP_QUEUE_MAX_PRIORITY": "255"},
    "BACKUP_DRILL_TASK_PRIORITY": {"BACKUP_QUEUE_MAX_PRIORITY": "255"},
    "BACKUP_TASK_RETRY_BACKOFF_MAX": {"BACKUP_TASK_RETRY_BACKOFF": "0"},
}


def _declared() -> list[tuple[str, Number, dict[str, str]]]:
    """(name, parser, the rest of a source that reads it) for every numeric setting."""
    rows = [(name, parser, COMPANIONS.get(name, {})) for name, parser in config.NUMBERS.items()]
    numeric = {s.name for s in numeric_settings()}
    for kind in location_types():
        tenant = (kind.tenant_retention,) if kind.tenant_retention is not None else ()
        for s in (*kind.settings, kind.retention, *tenant):
            if s.name in numeric:
                assert isinstance(s.parse, Number)
                rows.append((s.name, s.parse, {"STRONGROOM_LOCATIONS": kind.name}))
    return rows


DECLARED = _declared()
NEVER_VALID = ("nan", "inf", "-inf", "1e400", "abc", "")
OUT_OF_RANGE = ("-5", "0", "-1", "1000000000000")


def test_every_numeric_setting_of_the_backends_is_declared() -> None:
    names = {name for name, _, _ in DECLARED}
    for stem in ("MAX_ATTEMPTS", "PART_RETRIES", "PART_SIZE", "CONNECT_TIMEOUT", "READ_TIMEOUT"):
        assert {f"R2_{stem}", f"B2_{stem}"} <= names
    assert {"BACKUP_LOCAL_RETENTION_DAYS", "R2_RETENTION_DAYS", "B2_RETENTION_DAYS"} <= names
    assert set(config.NUMBERS) <= set(config.GENERAL_SETTINGS)


def _error(source: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(source)
    return str(caught.value)


def _named_alone(message: str, name: str) -> None:
    """The message starts with ``name`` and mentions no other setting."""
    assert message.startswith(f"{name} must be "), message
    others = set(config.setting_names()) - {name}
    assert [o for o in others if o in message.split()] == []


@pytest.mark.parametrize("value", [v for v in NEVER_VALID if v])
@pytest.mark.parametrize(("name", "parser", "rest"), DECLARED, ids=[d[0] for d in DECLARED])
def test_a_value_that_is_no_finite_number_is_refused_under_its_name(
    name: str, parser: Number, rest: dict[str, str], value: str
) -> None:
    message = _error({**rest, name: value})
    _named_alone(message, name)
    expected = "a finite number" if value != "abc" else parser.what
    assert f"must be {expected}, got {value!r}" in message


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize(("name", "parser", "rest"), DECLARED, ids=[d[0] for d in DECLARED])
def test_a_number_out_of_its_range_is_refused_under_its_name(
    name: str, parser: Number, rest: dict[str, str], value: str
) -> None:
    if parser.allows(float(value)):
        load_config({**rest, name: value})  # e.g. 0 retries, a zstd level checked by the codec
        return
    message = _error({**rest, name: value})
    _named_alone(message, name)
    assert message == f"{name} must be {parser.range}, got {value!r}"


@pytest.mark.parametrize(("name", "parser", "rest"), DECLARED, ids=[d[0] for d in DECLARED])
def test_the_ends_of_every_range_are_accepted(
    name: str, parser: Number, rest: dict[str, str]
) -> None:
    ends = [b for b in (parser.low, parser.high) if b is not None]
    for end in ends:
        load_config({**rest, name: str(int(end)) if parser.whole else repr(float(end))})


def test_a_derived_time_limit_is_not_blamed_on_a_setting_left_unset() -> None:
    assert _error({"BACKUP_PG_DUMP_TIMEOUT": "1e400"}).startswith("BACKUP_PG_DUMP_TIMEOUT ")
    message = _error({"BACKUP_TASK_TIME_LIMIT": "100"})
    assert message == (
        "BACKUP_TASK_TIME_LIMIT (100 s) must exceed BACKUP_TASK_SOFT_TIME_LIMIT "
        "(4500 s: BACKUP_PG_DUMP_TIMEOUT + 900 s by default)"
    )
    message = _error({"BACKUP_TASK_RETRY_BACKOFF_MAX": "10"})
    assert message.endswith("must be at least BACKUP_TASK_RETRY_BACKOFF (60 s by default)")
    tasks = load_config({"BACKUP_QUEUE_MAX_PRIORITY": "5", "BACKUP_TASK_RETRY_BACKOFF": "3600"})
    assert (tasks.tasks.priority, tasks.tasks.retry_backoff_max) == (5, 3600.0)


def test_values_from_django_settings_are_checked_alike() -> None:
    assert load_config({"BACKUP_RESTORE_JOBS": 4, "R2_PART_SIZE": 8 << 20}).restore_jobs == 4
    for bad in (float("nan"), True, 2.5, -1):
        _named_alone(_error({"BACKUP_RESTORE_JOBS": bad}), "BACKUP_RESTORE_JOBS")
    _named_alone(_error({"BACKUP_PG_DUMP_TIMEOUT": float("inf")}), "BACKUP_PG_DUMP_TIMEOUT")
