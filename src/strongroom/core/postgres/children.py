"""Child processes (pg_dump, pg_restore) that never outlive the strongroom process.

Each child gets its own process group, so stopping it stops the workers it forked too
(``pg_restore -j N``), and a parent-death signal (Linux ``PR_SET_PDEATHSIG``), so even a
SIGKILLed strongroom takes its child with it instead of leaving it re-parented to PID 1 and
still writing to the target. The signal fires when the *thread* that started the child exits:
children are started from the thread that waits for them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, ClassVar

from strongroom.core.postgres.binaries import StderrDrain
from strongroom.errors import DumpFailed

_PR_SET_PDEATHSIG = 1
#: Seconds a child gets to exit after SIGTERM before the group is SIGKILLed.
TERMINATE_GRACE = 5.0


def _die_with(parent: int) -> Callable[[], None]:
    def prepare() -> None:  # runs in the child, between fork and exec
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return prepare


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdout: int | IO[bytes] | None,
    stderr: int | None = subprocess.PIPE,
    bufsize: int = -1,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, to die with this process."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        bufsize=bufsize,
        process_group=0,
        preexec_fn=_die_with(os.getpid()),
    )


def terminate(proc: subprocess.Popen[bytes], grace: float = TERMINATE_GRACE) -> None:
    """Stop ``proc`` and every process of its group: SIGTERM, then SIGKILL after ``grace``."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    _signal_group(proc, signal.SIGKILL)  # workers the leader forked, even if it already exited
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


@dataclass
class StreamingChild:
    """A running child whose stdout is the stream a backup stores, stopped after ``timeout``.

    ``read``/``close``/``kill`` are what ``storing.Source`` needs; :meth:`wait_ok` ends a
    ``finish``: the child exited 0, or ``DumpFailed`` says it failed or overran its time.
    """

    #: The program's name in messages (``pg_dump``, ``pg_basebackup``).
    program: ClassVar[str] = "child"

    proc: subprocess.Popen[bytes]
    drain: StderrDrain
    timeout: float
    timed_out: bool = False
    _timer: threading.Timer | None = None

    def __post_init__(self) -> None:
        self._timer = threading.Timer(self.timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def read(self, size: int = -1, /) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(size) if size >= 0 else self.proc.stdout.read()

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def wait_ok(self, overrun_hint: str) -> None:
        """Wait for exit; ``DumpFailed`` with ``overrun_hint`` when the deadline stopped it."""
        code = self.proc.wait()
        if self._timer:
            self._timer.cancel()
        self.drain.join(timeout=10)
        if self.timed_out:
            raise DumpFailed(
                f"{self.program} did not finish within {self.timeout:g} s and was stopped: "
                + overrun_hint
            )
        if code != 0:
            raise DumpFailed(f"{self.program} failed (exit {code}): {self.drain.last_error()}")

    def kill(self) -> None:
        """Stop the child now (the run failed elsewhere or was interrupted); never raises."""
        if self._timer:
            self._timer.cancel()
        self.close()  # a child blocked on a full pipe sees EPIPE at once
        terminate(self.proc, grace=2.0)
