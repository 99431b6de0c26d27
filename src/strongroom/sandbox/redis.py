"""A Redis for Celery in tests and the demo: a private throwaway one, else the machine's own.

A private server (free port, loopback only, no persistence) keeps tests from sharing queues with
anything else; a Redis already answering on 127.0.0.1:6379 is the fallback where
``redis-server`` is not installed. PING is spoken over a raw socket so this needs no client.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from strongroom.errors import StrongroomError
from strongroom.sandbox.ports import HOST, free_port

DEFAULT_PORT = 6379
_INSTALL = "apt-get install redis-server"


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A Redis on 127.0.0.1; stops it on exit only when we started it (``owned``)."""

    def __init__(
        self,
        port: int,
        *,
        process: subprocess.Popen[bytes] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.host = HOST
        self.port = port
        self.process = process
        self._workdir = workdir

    @property
    def owned(self) -> bool:
        return self.process is not None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """URL of logical database ``db`` (0-15), e.g. one per test to keep queues apart."""
        return f"redis://{self.host}:{self.port}/{db}"

    def ping(self) -> bool:
        return ping(self.host, self.port)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_redis(binary: str, timeout: float = 15.0) -> RedisServer:
    """Start a private ``redis-server`` on a free loopback port, without persistence."""
    for _ in range(3):
        workdir = Path(tempfile.mkdtemp(prefix="strongroom-redis-"))
        port = free_port()
        log = workdir / "redis.log"
        argv = [
            binary, "--port", str(port), "--bind", HOST, "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(log),
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        server = RedisServer(port, process=process, workdir=workdir)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if server.ping():
                return server
            time.sleep(0.05)
        detail = _tail(log) or (
            process.stderr.read().decode(errors="replace") if process.stderr else ""
        )
        server.stop()
        if "Address already in use" not in detail:
            raise StrongroomError(f"redis-server did not start on port {port}: {detail.strip()}")
    raise StrongroomError("redis-server could not bind a free port on 127.0.0.1 (3 attempts)")


def ensure_redis() -> RedisServer:
    """A Redis to use as a context manager: ours if ``redis-server`` exists, else the local one."""
    binary = shutil.which("redis-server")
    if binary:
        return start_redis(binary)
    if ping(HOST, DEFAULT_PORT):
        return RedisServer(DEFAULT_PORT)
    raise StrongroomError(
        f"redis-server is not on PATH and nothing answers PING on {HOST}:{DEFAULT_PORT}: {_INSTALL}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
