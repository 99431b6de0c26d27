"""A reverse proxy in front of a real S3 server that answers chosen requests with provider errors.

R2 and B2 return transient errors (503 SlowDown / ServiceUnavailable, 500 InternalError) under
load. This proxy injects exactly those responses for the requests a test picks, and forwards
everything else unchanged (Host header included, so SigV4 signatures still verify).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: (method, path with query) -> (status, S3 error code) to inject, or None to forward.
Rule = Callable[[str, str], tuple[int, str] | None]


@dataclass
class Traffic:
    """What the proxy saw: every request, and the ones it answered with an injected error."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    injected: list[tuple[str, str, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(upstream: str, rule: Rule, traffic: Traffic) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with traffic.lock:
                traffic.requests.append((self.command, self.path))
                fault = rule(self.command, self.path)
                if fault:
                    traffic.injected.append((self.command, self.path, *fault))
            if fault:
                status, code = fault
                payload = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>injected by the test proxy</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in ("expect", "connection"):
                        conn.putheader(name, value)
                conn.endheaders(body)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status, reply.reason)
                for name, value in reply.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length = reply.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@contextmanager
def flaky_proxy(upstream: str, rule: Rule) -> Iterator[tuple[str, Traffic]]:
    """Yield (endpoint URL of the proxy, its traffic record); stopped on exit."""
    traffic = Traffic()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, rule, traffic))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="flaky-s3-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", traffic
    finally:
        server.shutdown()
        server.server_close()
