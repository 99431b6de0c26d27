"""Free TCP ports on loopback for the throwaway servers the sandbox starts.

The kernel hands out an ephemeral port that is free *now*; a server started a moment later may
still lose it to someone else, so callers that can detect "address in use" should retry. Ports
handed out by this process are remembered so two servers started back to back (PostgreSQL,
Redis, several SeaweedFS services) never get the same one from us.
"""

from __future__ import annotations

import socket
import threading

HOST = "127.0.0.1"

_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on and this process has not handed out."""
    with _lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _given:
                _given.add(port)
                return port
    raise OSError(f"no free TCP port found on {host}")
