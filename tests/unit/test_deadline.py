"""Waits with a deadline: a call that never returns must not hold up its caller.

No network: a call blocked on an event stands in for a socket read on a silent server.
"""

from __future__ import annotations

import threading
import time

import pytest

from strongroom.config import load_config
from strongroom.core import deadline
from strongroom.errors import ConfigError


def test_a_call_that_returns_in_time_gives_its_value_or_its_own_error() -> None:
    assert deadline.within(5, lambda: 42) == 42
    with pytest.raises(ValueError, match="bad"):
        deadline.within(5, lambda: int("bad"))


def test_a_silent_call_is_abandoned_at_the_deadline() -> None:
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(deadline.NoAnswer, match=r"^no answer in 0\.2 s$"):
        deadline.within(0.2, never.wait)
    assert time.monotonic() - started < 2
    never.set()


def test_all_calls_share_one_deadline() -> None:
    never = threading.Event()
    started = time.monotonic()
    pending = deadline.all_within(0.3, {"a": never.wait, "b": never.wait, "c": lambda: True})
    assert time.monotonic() - started < 2  # one deadline for all, not one each
    assert [pending[k].done for k in "abc"] == [False, False, True]
    assert pending["c"].result(0.3) is True
    never.set()


def test_the_timeouts_default_to_bounded_values_and_follow_the_settings() -> None:
    config = load_config({"STRONGROOM_LOCATIONS": "local"})
    assert (config.location_timeout, config.check_timeout) == (60.0, 15.0)
    config = load_config(
        {
            "STRONGROOM_LOCATIONS": "local",
            "BACKUP_LOCATION_TIMEOUT": "3",
            "BACKUP_CHECK_TIMEOUT": "2.5",
        }
    )
    assert (config.location_timeout, config.check_timeout) == (3.0, 2.5)


@pytest.mark.parametrize("name", ["BACKUP_LOCATION_TIMEOUT", "BACKUP_CHECK_TIMEOUT"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_a_timeout_must_be_finite_and_above_zero(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be (more than 0|a finite number)"):
        load_config({"STRONGROOM_LOCATIONS": "local", name: value})
