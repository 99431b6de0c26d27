"""SIGTERM, SIGINT and SIGHUP end a command the same way: as an ``Interrupted`` exception.

The default actions kill the process on the spot (SIGTERM, SIGHUP) or raise a bare
``KeyboardInterrupt`` (SIGINT), so nothing records why the run ended and children, partial
files, multipart uploads and IN_PROGRESS rows stay behind. Raised in the main thread instead,
the exception unwinds through every cleanup. Further signals while that cleanup runs are noted
and ignored: a second Ctrl-C must not cut the cleanup short (SIGKILL still ends everything, and
the children die with us).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from strongroom.errors import Interrupted

TYPE_CHECKING = False  # not typing's: wal-push's fast path sets these handlers too
if TYPE_CHECKING:
    from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside, the first of ``SIGNALS`` raises ``Interrupted``; later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (e.g. inside a threaded worker)
        return
    raised = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if raised.is_set():
            return
        raised.set()
        exc = Interrupted(signum)
        Interrupted.raised(exc)
        raise exc

    saved: dict[int, Any] = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)
        Interrupted.raised(None)
