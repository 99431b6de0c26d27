"""Adaptive zstd's level rules, fed synthetic observations (no clock, no /proc, no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.core.adaptive import (
    UP_AFTER,
    HostCpu,
    LevelController,
    Observation,
    Pacer,
)

#: The source kept us waiting most of the time, CPU to spare: compression idles.
IDLE = Observation(waiting=0.8, idle_cpu=0.5)
#: The source always had data waiting: compression is the bottleneck.
BEHIND = Observation(waiting=0.02, idle_cpu=0.5)
#: We waited on the source, but the host has no CPU left: we compete with the dump.
CROWDED = Observation(waiting=0.8, idle_cpu=0.0)
#: Neither clearly: hold.
BALANCED = Observation(waiting=0.3, idle_cpu=0.3)


def feed(controller: LevelController, *observations: Observation) -> list[int]:
    return [controller.observe(obs) for obs in observations]


def test_starts_at_the_floor() -> None:
    assert LevelController(1, 3).level == 1
    assert LevelController(2, 9, start=12).level == 9


def test_climbs_one_level_per_up_after_idle_intervals_up_to_the_ceiling() -> None:
    c = LevelController(1, 3)
    assert feed(c, *[IDLE] * (3 * UP_AFTER)) == [1, 2, 2, 3, 3, 3]


def test_steps_down_at_once_when_compression_holds_the_source_back() -> None:
    c = LevelController(1, 3, start=3)
    assert feed(c, BEHIND, BEHIND, BEHIND) == [2, 1, 1]


def test_steps_down_when_no_cpu_is_left_even_if_the_source_is_slow() -> None:
    c = LevelController(1, 3, start=3)
    assert feed(c, CROWDED, CROWDED) == [2, 1]


def test_holds_in_between_and_an_interrupted_run_of_idle_intervals_starts_over() -> None:
    c = LevelController(1, 5, start=2)
    assert feed(c, BALANCED, BALANCED) == [2, 2]
    assert feed(c, IDLE, BALANCED, IDLE, IDLE) == [2, 2, 2, 3]


def test_unknown_cpu_decides_on_waiting_alone() -> None:
    c = LevelController(1, 3)
    assert feed(c, *[Observation(0.9)] * UP_AFTER) == [1, 2]
    assert feed(c, Observation(0.0)) == [1]


def test_idle_source_without_idle_cpu_does_not_climb() -> None:
    c = LevelController(1, 3)
    assert feed(c, *[Observation(waiting=0.9, idle_cpu=0.1)] * 6) == [1] * 6


def test_floor_equal_to_ceiling_never_moves() -> None:
    c = LevelController(3, 3)
    assert set(feed(c, IDLE, IDLE, BEHIND, CROWDED, IDLE, IDLE)) == {3}


def test_floor_above_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="floor 4 above ceiling 3"):
        LevelController(4, 3)


class FakeSink:
    def __init__(self) -> None:
        self.level = 0
        self.calls: list[int] = []

    def set_level(self, level: int, /) -> None:
        self.level = level
        self.calls.append(level)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_hands_each_interval_to_the_controller() -> None:
    sink, clock = FakeSink(), FakeClock()
    idle = iter([0.5, 0.5, 0.5, 0.0])
    pacer = Pacer(sink, LevelController(1, 3), cpu=lambda: next(idle), interval=1.0, clock=clock)
    assert sink.calls == [1]  # the controller's start level is applied before any byte
    for _ in range(3):  # three intervals of 80% waiting, CPU to spare: up once (UP_AFTER = 2)
        for _ in range(4):
            clock.now += 0.25
            pacer.tick(0.2, 0.05)
    assert sink.level == 2
    for _ in range(4):  # a fourth, never waiting and no CPU left: down again
        clock.now += 0.25
        pacer.tick(0.0, 0.25)
    assert sink.calls == [1, 1, 2, 2, 1]


def test_host_cpu_idle_fraction(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    cpu = HostCpu(str(stat))
    stat.write_text("cpu  150 0 150 800 100 0 0 0 0 0\n")  # 200 ticks, 100 idle
    assert cpu.idle() == pytest.approx(0.5)
    assert cpu.idle() is None  # no time passed


def test_host_cpu_without_proc_stat(tmp_path: Path) -> None:
    assert HostCpu(str(tmp_path / "missing")).idle() is None
