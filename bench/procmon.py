"""Run a command; measure its wall time, CPU time and the peak RSS of every process in its tree.

``ru_maxrss`` from ``wait4`` is the largest of the child and its waited-for descendants, so for
``strongroom backup`` it would mix the Python process with ``pg_dump``. Instead a thread polls
``/proc/<pid>/status`` (``VmHWM``, the kernel's own high-water mark of resident memory) for the
root process and every descendant, found through ``/proc/<pid>/task/<tid>/children``. VmHWM only
grows, so a poll every few tens of milliseconds loses at most what a process gained in its last
moments; ``wait4``'s figure is kept as a cross-check.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_SECONDS = 0.02


@dataclass
class ProcPeak:
    """The highest VmHWM seen for one process."""

    pid: int
    name: str
    depth: int
    hwm_kib: int = 0
    #: The process's own user + system CPU seconds at its last sample (children excluded).
    cpu_seconds: float = 0.0


@dataclass
class Measured:
    """One run of one command."""

    argv: list[str]
    wall: float
    returncode: int
    cpu_seconds: float
    wait4_maxrss_kib: int
    peaks: dict[int, ProcPeak] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    #: CPU seconds other processes (the database server, the S3 server) spent meanwhile.
    other_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def total_cpu(self) -> float:
        """CPU seconds of the command's tree plus the servers' work for it."""
        return self.cpu_seconds + sum(self.other_cpu.values())

    @property
    def root_rss(self) -> int:
        """Peak RSS of the command's own process, in bytes."""
        roots = [p.hwm_kib for p in self.peaks.values() if p.depth == 0]
        return max(roots, default=0) * 1024

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds of the command's processes, summed per program name (last samples)."""
        totals: dict[str, float] = {}
        for peak in self.peaks.values():
            totals[peak.name] = totals.get(peak.name, 0.0) + peak.cpu_seconds
        return totals

    def rss_of(self, name: str) -> int:
        """Peak RSS of the largest descendant called ``name`` (e.g. ``pg_dump``), in bytes."""
        found = [p.hwm_kib for p in self.peaks.values() if p.depth > 0 and p.name == name]
        return max(found, default=0) * 1024

    def check(self) -> Measured:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.argv[:3])} ... exited with {self.returncode}:\n"
                f"{self.stderr[-3000:]}"
            )
        return self


def _status(pid: int) -> tuple[str, int] | None:
    """(Name, VmHWM in KiB) of ``pid``; None once it is gone (a zombie has no VmHWM)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    name, hwm = "", -1
    for line in text.splitlines():
        if line.startswith("Name:"):
            name = line.split(None, 1)[1].strip()
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
            break
    return (name, hwm) if hwm >= 0 else None


_TICK = os.sysconf("SC_CLK_TCK")


def own_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` itself; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants, live or already reaped."""
    if pid <= 0:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime (cutime/cstime: children already waited for)
    own = sum(int(f) for f in fields[11:15]) / _TICK
    return own + sum(tree_cpu(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    return out


class _Poller(threading.Thread):
    def __init__(self, root: int) -> None:
        super().__init__(name="bench-rss-poller", daemon=True)
        self.root = root
        self.peaks: dict[int, ProcPeak] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(POLL_SECONDS)

    def sample(self) -> None:
        stack = [(self.root, 0)]
        while stack:
            pid, depth = stack.pop()
            status = _status(pid)
            if status is None:
                continue
            name, hwm = status
            peak = self.peaks.setdefault(pid, ProcPeak(pid, name, depth))
            if peak.name != name:
                # exec: a forked child inherits its parent's VmHWM until it execs a new image,
                # whose memory starts afresh; count only the program it became
                peak.name, peak.hwm_kib = name, 0
            peak.hwm_kib = max(peak.hwm_kib, hwm)
            cpu = own_cpu(pid)
            if cpu is not None:
                peak.cpu_seconds = max(peak.cpu_seconds, cpu)
            stack.extend((child, depth + 1) for child in _children(pid))


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout_path: Path | None = None,
    cwd: Path | None = None,
) -> Measured:
    """Run ``argv`` to completion; stdout goes to ``stdout_path`` (``/dev/null`` when None)."""
    with tempfile.TemporaryFile() as err_file, contextlib.ExitStack() as stack:
        if stdout_path is None:
            out_file = stack.enter_context(open(os.devnull, "wb"))
        else:
            out_file = stack.enter_context(open(stdout_path, "wb"))
        began = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        poller = _Poller(proc.pid)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        poller.stop.set()
        poller.join()
        err_file.seek(0)
        stderr = err_file.read().decode("utf-8", "replace")
    stdout = ""
    if stdout_path is not None and stdout_path.stat().st_size < 10_000_000:
        stdout = stdout_path.read_text(errors="replace")
    return Measured(
        argv=list(argv),
        wall=wall,
        returncode=proc.returncode,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        wait4_maxrss_kib=int(usage.ru_maxrss),
        peaks=poller.peaks,
        stdout=stdout,
        stderr=stderr,
    )
