"""The S3 location against a real S3 server (SeaweedFS), faults included."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from strongroom.core.storage import S3Location, b2_endpoint, backend_for, r2_endpoint
from strongroom.core.storage.s3 import MiB, part_size_for
from strongroom.errors import ConfigError, LocationUnavailable, ObjectNotFound, StorageError
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

BUCKET = "r2-backups"
#: Small budgets so a dead server is reported in seconds, not minutes.
FAST: dict[str, Any] = {
    "max_attempts": 2,
    "connect_timeout": 1.0,
    "read_timeout": 10.0,
    "part_retries": 1,
}


def make(server: SeaweedServer, bucket: str = BUCKET, **options: Any) -> S3Location:
    prefix = options.pop("prefix", f"t-{uuid.uuid4().hex[:10]}")
    location = backend_for("s3").from_options(
        "r2", server.location_options(bucket, prefix, **options)
    )
    assert isinstance(location, S3Location)
    return location


def uploads(server: SeaweedServer, location: S3Location, bucket: str = BUCKET) -> list[str]:
    reply = server.client().list_multipart_uploads(Bucket=bucket, Prefix=location.prefix + "/")
    return [u["Key"] for u in reply.get("Uploads", [])]


def sha256_of(location: S3Location, key: str, chunk: int = MiB) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    reader = location.open_reader(key)
    try:
        while data := reader.read(chunk):
            digest.update(data)
            size += len(data)
    finally:
        reader.close()
    return digest.hexdigest(), size


# -- pure helpers ----------------------------------------------------------------------------


def test_endpoints_and_part_sizes() -> None:
    assert r2_endpoint("abc123") == "https://abc123.r2.cloudflarestorage.com"
    assert b2_endpoint("us-west-004") == "https://s3.us-west-004.backblazeb2.com"
    base = 16 * MiB
    assert part_size_for(1, base) == part_size_for(5000, base) == base
    assert part_size_for(5001, base) == 2 * base
    assert part_size_for(6001, base) == 4 * base
    assert part_size_for(10_000, base) == 32 * base
    assert sum(part_size_for(n, base) for n in range(1, 10_001)) > 1 << 40  # > 1 TiB
    assert part_size_for(10_000, 1024 * MiB) == 5 * 1024 * MiB  # capped at 5 GiB
    with pytest.raises(ValueError):
        part_size_for(10_001, base)


def test_options_are_validated(seaweed: SeaweedServer) -> None:
    with pytest.raises(ConfigError, match="part_size"):
        make(seaweed, part_size=MiB)
    with pytest.raises(ConfigError, match="unknown option"):
        make(seaweed, colour="blue")
    with pytest.raises(ConfigError, match="R2_BUCKET_NAME"):
        backend_for("s3").from_options("r2", {"endpoint_url": seaweed.endpoint_url})


def test_describe_and_repr_hold_no_secret(seaweed: SeaweedServer) -> None:
    location = make(seaweed, prefix="pre/fix")
    assert location.describe() == f"s3://{BUCKET}/pre/fix at {seaweed.endpoint_url}"
    for text in (repr(location), location.describe(), repr(location.open_writer("k"))):
        assert seaweed.access_key_id not in text
        assert seaweed.secret_access_key not in text


# -- primitives ------------------------------------------------------------------------------


def test_put_get_stat_list_delete(seaweed: SeaweedServer) -> None:
    location = make(seaweed)
    location.put_bytes("db/full/2024/01/02/a.dump.enc", b"x" * 1000)
    location.put_bytes("db/full/2024/01/02/a.manifest.json", b"{}")
    location.put_bytes("other/b", b"")
    assert location.get_bytes("db/full/2024/01/02/a.dump.enc") == b"x" * 1000
    assert location.get_bytes("other/b") == b""
    info = location.stat("db/full/2024/01/02/a.dump.enc")
    assert info.size == 1000 and info.modified is not None and info.modified.tzinfo is not None
    assert [i.key for i in location.list("db/")] == [
        "db/full/2024/01/02/a.dump.enc",
        "db/full/2024/01/02/a.manifest.json",
    ]
    assert len(list(location.list())) == 3
    raw = seaweed.client().head_object(Bucket=BUCKET, Key=f"{location.prefix}/other/b")
    assert raw["ContentLength"] == 0  # keys live under the prefix
    location.delete("other/b")
    location.delete("other/b")  # absent is fine
    with pytest.raises(ObjectNotFound):
        location.stat("other/b")
    with pytest.raises(ObjectNotFound):
        location.open_reader("other/b")
    assert [i.key for i in location.list("other/")] == []


def test_list_paginates(seaweed: SeaweedServer) -> None:
    location = make(seaweed)
    client = seaweed.client()
    for i in range(1005):  # more than one page of 1,000
        client.put_object(Bucket=BUCKET, Key=f"{location.prefix}/k/{i:05d}", Body=b"")
    keys = [i.key for i in location.list("k/")]
    assert len(keys) == 1005 and keys[0] == "k/00000" and keys[-1] == "k/01004"


def test_small_object_is_a_single_put(seaweed: SeaweedServer) -> None:
    location = make(seaweed, part_size=5 * MiB)
    writer = location.open_writer("small")
    writer.write(os.urandom(3 * MiB))
    assert uploads(seaweed, location) == []  # no multipart upload for less than a part
    writer.commit()
    assert location.stat("small").size == 3 * MiB


def test_40_mib_in_5_mib_parts_round_trips_byte_exact(seaweed: SeaweedServer) -> None:
    location = make(seaweed, part_size=5 * MiB)
    data = os.urandom(40 * MiB + 12345)  # 8 full parts and a short last one
    writer = location.open_writer("db/big.dump.enc")
    for i in range(0, len(data), 1_000_003):  # chunks that do not align with parts
        writer.write(data[i : i + 1_000_003])
    assert uploads(seaweed, location) == [f"{location.prefix}/db/big.dump.enc"]
    with pytest.raises(ObjectNotFound):
        location.stat("db/big.dump.enc")  # invisible until commit
    writer.commit()
    assert uploads(seaweed, location) == []
    assert location.stat("db/big.dump.enc").size == len(data)
    assert sha256_of(location, "db/big.dump.enc") == (hashlib.sha256(data).hexdigest(), len(data))
    assert location.get_bytes("db/big.dump.enc") == data  # read(-1) reads everything


def test_exact_multiple_of_part_size(seaweed: SeaweedServer) -> None:
    location = make(seaweed, part_size=5 * MiB)
    data = os.urandom(10 * MiB)
    writer = location.open_writer("even")
    writer.write(data)
    writer.commit()
    assert location.get_bytes("even") == data


def test_abort_midway_leaves_no_parts(seaweed: SeaweedServer) -> None:
    location = make(seaweed, part_size=5 * MiB)
    writer = location.open_writer("db/aborted")
    writer.write(os.urandom(12 * MiB))  # two parts uploaded, 2 MiB buffered
    assert len(uploads(seaweed, location)) == 1
    writer.abort()
    writer.abort()  # twice is fine
    assert uploads(seaweed, location) == []
    with pytest.raises(ObjectNotFound):
        location.stat("db/aborted")
    with pytest.raises(StorageError):
        writer.commit()


def test_failed_part_upload_discards_the_upload(seaweed: SeaweedServer) -> None:
    location = make(seaweed, part_size=5 * MiB, **FAST)
    writer = location.open_writer("k")
    writer.write(os.urandom(6 * MiB))  # part 1 uploaded
    (upload,) = seaweed.client().list_multipart_uploads(
        Bucket=BUCKET, Prefix=location.prefix + "/"
    )["Uploads"]
    seaweed.client().abort_multipart_upload(
        Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
    )
    with pytest.raises(StorageError, match="upload part 2 failed"):
        writer.write(os.urandom(5 * MiB))
    with pytest.raises(StorageError, match="aborted"):
        writer.commit()
    assert uploads(seaweed, location) == []


def test_cleanup_incomplete_respects_prefix_and_time(seaweed: SeaweedServer) -> None:
    location = make(seaweed)
    client = seaweed.client()
    for key in ("db1/a", "db1/b", "db2/a"):
        client.create_multipart_upload(Bucket=BUCKET, Key=f"{location.prefix}/{key}")
    past = datetime.now(UTC) - timedelta(hours=1)
    assert location.cleanup_incomplete("db1/", past) == 0  # all younger than the cut-off
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert location.cleanup_incomplete("db1/", future) == 2
    assert uploads(seaweed, location) == [f"{location.prefix}/db2/a"]
    assert location.cleanup_incomplete() == 1
    assert uploads(seaweed, location) == []


def test_check_reports_reachable_and_writable(seaweed: SeaweedServer) -> None:
    location = make(seaweed)
    result = location.check()
    assert result.reachable and result.writable, result.detail
    assert list(location.list()) == []  # the probe is gone
    reader = S3Location.from_options(
        "r2",
        {
            **seaweed.location_options(BUCKET, location.prefix),
            "access_key_id": seaweed.readonly_access_key_id,
            "secret_access_key": seaweed.readonly_secret_access_key,
        },
    )
    result = reader.check()
    assert result.reachable and not result.writable
    assert seaweed.readonly_secret_access_key not in result.detail


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_credentials_say_so_without_leaking_them(seaweed: SeaweedServer, wrong: str) -> None:
    key_id = "SRWRONGKEY0000000" if wrong == "key" else seaweed.access_key_id
    secret = "not-the-secret-" + uuid.uuid4().hex
    location = make(seaweed, access_key_id=key_id, secret_access_key=secret, **FAST)
    started = time.monotonic()
    with pytest.raises(LocationUnavailable) as err:
        location.put_bytes("k", b"v")
    assert time.monotonic() - started < 5
    messages = [str(err.value), repr(err.value), location.check().detail]
    for text in messages:
        assert "credentials" in text
        assert "R2_ACCESS_KEY_ID" in text and "R2_SECRET_ACCESS_KEY" in text
        assert key_id not in text and secret not in text
        assert seaweed.secret_access_key not in text
    assert err.value.transient is False
    assert err.value.location == "r2"
    assert err.value.__cause__ is None  # the provider's raw response is not chained
    assert LocationUnavailable.transient is True  # only this instance is marked permanent
    with pytest.raises(LocationUnavailable, match="credentials"):
        list(location.list())


def test_missing_bucket_is_named(seaweed: SeaweedServer) -> None:
    location = make(seaweed, bucket="no-such-bucket", **FAST)
    with pytest.raises(LocationUnavailable, match="bucket 'no-such-bucket' does not exist"):
        list(location.list())
    result = location.check()
    assert not result.reachable and "no-such-bucket" in result.detail


def test_stopped_server_is_unavailable_within_seconds(seaweed_factory: Any) -> None:
    server: SeaweedServer = seaweed_factory()
    location = make(server, **FAST)
    location.put_bytes("k", b"v")
    server.stop()
    ops: list[Callable[[], object]] = [
        lambda: location.stat("k"),
        lambda: location.put_bytes("k2", b"v"),
    ]
    for op in ops:
        started = time.monotonic()
        with pytest.raises(LocationUnavailable) as err:
            op()
        assert time.monotonic() - started < 6
        assert str(err.value) == f"r2: cannot reach {server.endpoint_url}: connection refused"
        assert err.value.transient is True
    started = time.monotonic()
    result = location.check()
    assert not result.reachable and not result.writable
    assert "cannot reach" in result.detail and time.monotonic() - started < 6


def test_server_killed_mid_upload_leaves_parts_that_cleanup_aborts(seaweed_factory: Any) -> None:
    server: SeaweedServer = seaweed_factory()
    location = make(server, part_size=5 * MiB, **FAST)
    started = datetime.now(UTC)
    writer = location.open_writer("db/full/x.dump.enc")
    writer.write(os.urandom(11 * MiB))  # two parts are on the server
    server.stop()  # kill -9: the location vanishes mid-upload
    with pytest.raises(LocationUnavailable):
        writer.write(os.urandom(5 * MiB))
    writer.abort()  # cannot reach the server either: logged, not raised

    server.start()  # same data directory and ports
    assert uploads(server, location) == [f"{location.prefix}/db/full/x.dump.enc"]
    assert location.cleanup_incomplete("db/", started - timedelta(minutes=5)) == 0
    assert location.cleanup_incomplete("db/", datetime.now(UTC) + timedelta(minutes=1)) == 1
    assert uploads(server, location) == []
    with pytest.raises(ObjectNotFound):
        location.stat("db/full/x.dump.enc")
    location.put_bytes("after", b"ok")  # the restarted server works normally
    assert location.get_bytes("after") == b"ok"


def test_read_resumes_after_the_server_comes_back(seaweed_factory: Any) -> None:
    server: SeaweedServer = seaweed_factory()
    location = make(server, max_attempts=10, connect_timeout=1.0, read_timeout=10.0)
    data = os.urandom(24 * MiB)
    location.put_bytes("big", data)
    reader = location.open_reader("big")
    try:
        head = reader.read(MiB)
        server.stop()
        restart = threading.Timer(0.5, server.start)
        restart.start()
        rest = b"".join(iter(lambda: reader.read(MiB), b""))
        restart.join()
    finally:
        reader.close()
    assert head + rest == data
