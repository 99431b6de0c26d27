"""Waiting with a deadline on calls that may never return (a server that accepts, then is silent).

A thread blocked in a socket read cannot be interrupted, and joining it waits as long as the
read does: every connect/read timeout times every retry. Such a call runs here in a daemon
thread and the caller waits for it only until its deadline; a call that misses it is abandoned
(its thread ends when its socket gives up, or with the process), so the caller can go on and
say "no answer in N s" instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class NoAnswer(TimeoutError):
    """A call did not finish within its deadline (it may still be running, abandoned)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer in {seconds:g} s")
        self.seconds = seconds


class Pending(Generic[T]):
    """One call running in its own daemon thread; its result once (and if) it finished."""

    def __init__(self, call: Callable[[], T], name: str) -> None:
        self._call = call
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()

    def wait(self, until: float) -> bool:
        """Wait until the monotonic time ``until`` at most; whether the call has finished."""
        return self._done.wait(max(0.0, until - time.monotonic()))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, seconds: float) -> T:
        """The value, or the call's own exception; ``NoAnswer(seconds)`` while it still runs."""
        if not self._done.is_set():
            raise NoAnswer(seconds)
        if self._error is not None:
            raise self._error
        return cast(T, self._value)  # set whenever no error was raised


def within(seconds: float, call: Callable[[], T], name: str = "strongroom-bounded") -> T:
    """``call()``, or ``NoAnswer`` after ``seconds`` (the call is then abandoned)."""
    pending = Pending(call, name)
    pending.wait(time.monotonic() + seconds)
    return pending.result(seconds)


def all_within(seconds: float, calls: Mapping[str, Callable[[], T]]) -> dict[str, Pending[T]]:
    """Run every call at once and wait for them under one shared deadline of ``seconds``."""
    until = time.monotonic() + seconds
    pending = {key: Pending(call, f"strongroom-{key}") for key, call in calls.items()}
    for one in pending.values():
        one.wait(until)
    return pending


def abandon(call: Callable[[], object], name: str) -> None:
    """Run ``call`` in a daemon thread nobody waits for (cleanup that must not block the run)."""
    Pending(call, name)
