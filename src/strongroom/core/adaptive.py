"""Adaptive zstd: pick the level the CPU left over can afford, so compression never slows the dump.

The idea of ``zstd --adapt``. Every ``INTERVAL`` seconds the pipeline reports how its time went:
waiting for the source (``pg_dump``'s pipe was empty: the producer is the bottleneck) or busy
compressing and passing bytes on (the source had data waiting: we are the bottleneck), and how
much of the host's CPU stood idle meanwhile. :class:`LevelController` turns those observations
into a level between a floor and a ceiling; it is pure (no clock, no ``/proc``) so its rules can
be tested by feeding it observations. :class:`Pacer` is the thin part that measures and applies.

The rules, per interval:

1. the source never made us wait (waiting fraction below ``DOWN_BELOW``): compression holds the
   dump back, step down one level;
2. the host has no CPU left (idle below ``IDLE_DOWN``): our compression competes with the
   dump and the server for the cores, step down one level;
3. we waited on the source most of the time (above ``UP_ABOVE``) and CPU is idle (at least
   ``IDLE_UP``, or unknown): compression has room, step up one level, but only after ``UP_AFTER``
   such intervals in a row (down fast, up slowly: a level that hurts costs one interval, not
   several);
4. otherwise keep the level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Seconds between two decisions; a change starts a new zstd frame, so this also bounds how
#: often the window restarts (a few KiB of output each time, nothing measurable on a dump).
INTERVAL = 0.5
#: Waiting fraction below which the source is never the bottleneck: step down.
DOWN_BELOW = 0.15
#: Waiting fraction above which compression idles: a candidate to step up.
UP_ABOVE = 0.4
#: Idle fraction of the host's CPU below which nothing is left over: step down.
IDLE_DOWN = 0.05
#: Idle fraction of the host's CPU needed to step up.
IDLE_UP = 0.2
#: Consecutive intervals that must allow a step up before it is taken.
UP_AFTER = 2


@dataclass(frozen=True)
class Observation:
    """How one interval went: the fraction of the stage's time spent waiting for the source,
    and the fraction of the host's CPU time that was idle (``None`` where it cannot be read)."""

    waiting: float
    idle_cpu: float | None = None


class LevelController:
    """Chooses the next level from observations; starts at the floor (never slows the dump)."""

    def __init__(self, floor: int, ceiling: int, start: int | None = None) -> None:
        if floor > ceiling:
            raise ValueError(f"floor {floor} above ceiling {ceiling}")
        self.floor = floor
        self.ceiling = ceiling
        self.level = floor if start is None else min(max(start, floor), ceiling)
        self._room = 0

    def observe(self, obs: Observation) -> int:
        """Apply the rules above to one interval; return the level to use from now on."""
        idle = obs.idle_cpu
        if obs.waiting < DOWN_BELOW or (idle is not None and idle < IDLE_DOWN):
            self._room = 0
            self.level = max(self.floor, self.level - 1)
        elif obs.waiting > UP_ABOVE and (idle is None or idle >= IDLE_UP):
            self._room += 1
            if self._room >= UP_AFTER:
                self._room = 0
                self.level = min(self.ceiling, self.level + 1)
        else:
            self._room = 0
        return self.level


class HostCpu:
    """Idle fraction of the whole host's CPU since the previous call, from ``/proc/stat``."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        """(idle + iowait, total) jiffies of all CPUs, or ``None`` off Linux."""
        try:
            with open(self.path, "rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if len(fields) < 6 or fields[0] != b"cpu":
            return None
        ticks = [int(v) for v in fields[1:9]]  # guest time is already inside user time
        return ticks[3] + ticks[4], sum(ticks)

    def idle(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return (now[0] - last[0]) / (now[1] - last[1])


class LevelSink(Protocol):
    """The compress stage whose level the pacer sets (``codecs.AdaptiveZstdWriter``)."""

    level: int

    def set_level(self, level: int, /) -> None: ...


class Pacer:
    """Measures the pipeline's reads and writes and hands each interval to the controller."""

    def __init__(
        self,
        sink: LevelSink,
        controller: LevelController,
        *,
        cpu: Callable[[], float | None] | None = None,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.controller = controller
        self.cpu = cpu if cpu is not None else HostCpu().idle
        self.interval = interval
        self.clock = clock
        self._start = clock()
        self._waiting = 0.0
        self._busy = 0.0
        sink.set_level(controller.level)

    def tick(self, waited: float, busy: float) -> None:
        """One read (``waited`` seconds) and its write (``busy`` seconds) happened."""
        self._waiting += waited
        self._busy += busy
        now = self.clock()
        if now - self._start < self.interval:
            return
        spent = self._waiting + self._busy
        if spent > 0:
            obs = Observation(self._waiting / spent, self.cpu())
            self.sink.set_level(self.controller.observe(obs))
        self._start, self._waiting, self._busy = now, 0.0, 0.0
