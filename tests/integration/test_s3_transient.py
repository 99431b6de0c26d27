"""R2 and B2 answer with transient errors under load: they are retried with backoff, and a
location that keeps failing gives up in bounded time with the provider's reason.

The server is real SeaweedFS; a proxy in front of it injects the providers' error responses
(503 SlowDown / ServiceUnavailable, 500 InternalError) for the requests each test picks.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flaky_proxy import Rule, flaky_proxy

from strongroom.core.storage import S3Location, backend_for
from strongroom.core.storage.s3 import MiB
from strongroom.errors import StorageError
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

BUCKET = "r2-backups"


def _location(seaweed: SeaweedServer, endpoint: str, **options: Any) -> S3Location:
    opts = seaweed.location_options(BUCKET, f"t-{uuid.uuid4().hex[:10]}", **options)
    opts["endpoint_url"] = endpoint
    location = backend_for("s3").from_options("b2", opts)
    assert isinstance(location, S3Location)
    return location


def _query(path: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(path).query, keep_blank_values=True)


def _first_time(picks: dict[tuple[str, str], tuple[int, str]]) -> Rule:
    """Inject each picked (method, request kind) once, on its first occurrence."""
    pending = dict(picks)

    def rule(method: str, path: str) -> tuple[int, str] | None:
        query = _query(path)
        if "partNumber" in query:
            kind = f"part {query['partNumber'][0]}"
        elif method == "POST" and "uploadId" in query:
            kind = "complete"
        else:
            kind = "other"
        return pending.pop((method, kind), None)

    return rule


def _open_uploads(seaweed: SeaweedServer, location: S3Location) -> list[str]:
    reply = seaweed.client().list_multipart_uploads(Bucket=BUCKET, Prefix=location.prefix + "/")
    return [u["Key"] for u in reply.get("Uploads", [])]


def test_transient_provider_errors_are_retried_and_the_object_is_byte_exact(
    seaweed: SeaweedServer,
) -> None:
    rule = _first_time(
        {
            ("PUT", "part 2"): (503, "SlowDown"),
            ("PUT", "part 4"): (503, "ServiceUnavailable"),
            ("POST", "complete"): (500, "InternalError"),
        }
    )
    data = os.urandom(22 * MiB)  # four full 5 MiB parts and a short fifth
    with flaky_proxy(seaweed.endpoint_url, rule) as (endpoint, traffic):
        location = _location(seaweed, endpoint, part_size=5 * MiB)
        writer = location.open_writer("db/full/x.dump.zst.enc")
        for i in range(0, len(data), 3 * MiB):
            writer.write(data[i : i + 3 * MiB])
        writer.commit()
        stored = location.get_bytes("db/full/x.dump.zst.enc")
    assert [(m, status, code) for m, _, status, code in traffic.injected] == [
        ("PUT", 503, "SlowDown"),
        ("PUT", 503, "ServiceUnavailable"),
        ("POST", 500, "InternalError"),
    ]
    for method, path, _, _ in traffic.injected:  # each refused request was sent again
        assert traffic.requests.count((method, path)) == 2, path
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert _open_uploads(seaweed, location) == []


def test_a_location_that_keeps_failing_gives_up_in_bounded_time_with_the_reason(
    seaweed: SeaweedServer,
) -> None:
    def every_part(method: str, path: str) -> tuple[int, str] | None:
        return (503, "ServiceUnavailable") if "partNumber" in _query(path) else None

    with flaky_proxy(seaweed.endpoint_url, every_part) as (endpoint, traffic):
        location = _location(seaweed, endpoint, part_size=5 * MiB, max_attempts=2, part_retries=1)
        writer = location.open_writer("db/full/y.dump.zst.enc")
        started = time.monotonic()
        with pytest.raises(StorageError) as failure:
            writer.write(os.urandom(6 * MiB))
        elapsed = time.monotonic() - started
        writer.abort()
    message = str(failure.value)
    assert "upload part 1 failed" in message and "ServiceUnavailable" in message, message
    assert "\n" not in message and seaweed.secret_access_key not in message
    attempts = [p for m, p in traffic.requests if m == "PUT" and "partNumber" in _query(p)]
    # max_attempts=2 per round, 1 + part_retries rounds
    assert len(attempts) == 4, traffic.requests
    assert elapsed < 30
    assert _open_uploads(seaweed, location) == []  # the failed upload was aborted
