"""Triple redundancy against real servers: local disk, R2 and B2 side by side, faults included.

A throwaway PostgreSQL cluster holds the RLS-forced demo shop; SeaweedFS with enforced
authentication stands in for Cloudflare R2 and Backblaze B2 (the shared server's two buckets, or
a private server that a test stops, kills mid-upload and restarts on the same directory and
ports). Every test has its own key prefix, local directory, SQLite catalog and encryption key.
Outcomes are read back from the catalog, from storage through the servers' own admin keys, and
from the ``strongroom`` command's output; no output may contain a secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from clisupport import CLI, Cli, clean_environ, command, require_cli

from strongroom.catalog import bootstrap
from strongroom.config import load_config
from strongroom.core import crypto
from strongroom.core.crypto import Keyring
from strongroom.core.manifest import Manifest, manifest_key_for
from strongroom.core.storage.base import Location
from strongroom.core.storage.s3 import MiB, S3Location
from strongroom.sandbox.demo_data import DemoDatabase, table_digests
from strongroom.sandbox.pgcluster import PgCluster
from strongroom.sandbox.seaweed import SeaweedServer

pytestmark = pytest.mark.integration

R2_BUCKET, B2_BUCKET = "r2-backups", "b2-backups"
LOCATIONS = ("local", "r2", "b2")
#: Small retry budgets so a dead server is reported in seconds, not minutes.
FAST = {"MAX_ATTEMPTS": "2", "CONNECT_TIMEOUT": "1", "READ_TIMEOUT": "20"}

SeaweedFactory = Callable[..., SeaweedServer]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"red-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def catalog(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    bootstrap.ensure_django(url)
    return url


@pytest.fixture
def settings(
    tmp_path: Path, seaweed: SeaweedServer, demo_db: DemoDatabase, catalog: str, prefix: str
) -> dict[str, str]:
    """Local disk, R2 and B2 (the shared server's two buckets) and a new key."""
    (tmp_path / "local").mkdir()
    return {
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": crypto.generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local,r2,b2",
        **_cloud(seaweed, "r2", R2_BUCKET, prefix),
        **_cloud(seaweed, "b2", B2_BUCKET, prefix),
        "STRONGROOM_CATALOG_URL": catalog,
    }


@pytest.fixture
def cli(tmp_path: Path, settings: dict[str, str]) -> Cli:
    """``cli(*args, **overrides)``: the command, configured only through its environment."""
    require_cli()
    (tmp_path / "home").mkdir(exist_ok=True)
    base = clean_environ()
    base["HOME"] = str(tmp_path / "home")

    return command(base, settings, timeout=240)


@pytest.fixture
def new_db(pg_cluster: PgCluster) -> Iterator[Callable[[], str]]:
    """``new_db()``: the superuser URL of an unused database name (dropped afterwards)."""
    names: list[str] = []

    def make() -> str:
        names.append(f"restored_{uuid.uuid4().hex[:10]}")
        return pg_cluster.url(names[-1])

    yield make
    for name in names:
        pg_cluster.drop_database(name)


# -- helpers -----------------------------------------------------------------------------------


def _cloud(server: SeaweedServer, name: str, bucket: str, prefix: str) -> dict[str, str]:
    env = name.upper()
    fast = {f"{env}_{option}": value for option, value in FAST.items()}
    return {**server.settings(name, bucket), f"{env}_PREFIX": prefix, **fast}


def _locations(settings: dict[str, str]) -> dict[str, Location]:
    from strongroom.services.runtime import build_locations

    locations, problems = build_locations(load_config(settings).locations)
    assert not problems
    return {loc.name: loc for loc in locations}


def _bucket_keys(server: SeaweedServer, bucket: str, prefix: str) -> set[str]:
    """Every key under ``prefix/`` in ``bucket``, read with the server's admin key."""
    reply = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {item["Key"].removeprefix(prefix + "/") for item in reply.get("Contents", [])}


def _open_uploads(server: SeaweedServer, bucket: str, prefix: str) -> list[str]:
    reply = server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/")
    return [u["Key"].removeprefix(prefix + "/") for u in reply.get("Uploads", [])]


def _local_files(settings: dict[str, str]) -> set[str]:
    """Every file under the local location, partials included."""
    root = Path(settings["BACKUP_LOCAL_PATH"])
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _sha256(loc: Location, key: str) -> str:
    digest = hashlib.sha256()
    reader = loc.open_reader(key)
    try:
        while data := reader.read(MiB):
            digest.update(data)
    finally:
        reader.close()
    return digest.hexdigest()


def _copies(backup_id: str) -> dict[str, Any]:
    from strongroom.catalog import store

    return {c.location: c for c in store.copies_of(backup_id)}


def _secrets_absent(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret was printed"


def _json_out(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in done.stderr, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The operator's one line: non-zero exit, no traceback, the error last on stderr."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("strongroom: error: "), done.stderr
    return lines[-1]


def _add_ballast(url: str, mib: int) -> None:
    """A table of incompressible bytes, so the dump (and every upload) is about ``2 * mib`` MB."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.ballast (id int PRIMARY KEY, payload bytea NOT NULL)")
        conn.execute("ALTER TABLE public.ballast ALTER payload SET STORAGE EXTERNAL")
        with conn.cursor().copy("COPY public.ballast (id, payload) FROM STDIN") as copy:
            for i in range(mib):
                copy.write_row((i, os.urandom(MiB)))


def _user_tables(pg_cluster: PgCluster, url: str) -> int | None:
    """Tables in the database of ``url``; ``None`` when it does not exist."""
    name = url.rsplit("/", 1)[-1]
    if not pg_cluster.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
        return None
    rows = pg_cluster.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
        "'information_schema')",
        dbname=name,
    )
    return int(rows[0][0])


def _flip_byte(server: SeaweedServer, bucket: str, full_key: str) -> None:
    client = server.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=full_key)["Body"].read())
    body[len(body) // 2] ^= 0x40
    client.put_object(Bucket=bucket, Key=full_key, Body=bytes(body))


# -- every location ----------------------------------------------------------------------------


def test_a_backup_to_three_locations_is_recorded_per_copy_and_verified_everywhere(
    settings: dict[str, str], seaweed: SeaweedServer, prefix: str, demo_db: DemoDatabase
) -> None:
    from strongroom.catalog import store
    from strongroom.services.backup import run_full_backup
    from strongroom.services.verify import verify_backup

    config = load_config(settings)
    report = run_full_backup(config)
    assert report.status == "COMPLETED", report.error
    assert report.error == ""
    assert report.locations == {"local": "ok", "r2": "ok", "b2": "ok"}

    backup = store.get_backup(report.id)
    assert backup.size_bytes == report.stored_size > 0
    assert len(backup.checksum) == 64
    copies = _copies(report.id)
    assert sorted(copies) == sorted(LOCATIONS)
    key = copies["local"].key
    assert key.startswith(f"{demo_db.name}/full/") and key.endswith(".enc")
    keyring = Keyring.from_strings(settings["BACKUP_ENCRYPTION_KEY"])
    locations = _locations(settings)
    for name, copy in copies.items():
        assert (copy.status, copy.error) == ("STORED", ""), name
        assert copy.key == key and copy.manifest_key == manifest_key_for(key)
        assert copy.size_bytes == backup.size_bytes and copy.checksum == backup.checksum
        assert copy.duration_seconds is not None and copy.duration_seconds > 0
        loc = locations[name]
        assert loc.stat(key).size == backup.size_bytes
        assert _sha256(loc, key) == backup.checksum  # the stored bytes, re-read independently
        manifest = Manifest.from_document(loc.get_bytes(copy.manifest_key), keyring)
        assert (manifest.id, manifest.object_key) == (report.id, key)
        assert (manifest.sha256, manifest.stored_size) == (backup.checksum, backup.size_bytes)
    # the manifest sits beside the object, and nothing else is there, in every location
    expected = {key, manifest_key_for(key)}
    assert _bucket_keys(seaweed, R2_BUCKET, prefix) == expected
    assert _bucket_keys(seaweed, B2_BUCKET, prefix) == expected
    assert _local_files(settings) == expected
    assert backup.local_path == backup.r2_path == backup.b2_path == key

    verified = verify_backup(config, report.id)
    assert verified.ok and verified.status == "VERIFIED", verified.problems()
    assert sorted((c.location, c.status) for c in verified.copies) == [
        ("b2", "VERIFIED"),
        ("local", "VERIFIED"),
        ("r2", "VERIFIED"),
    ]
    assert all(c.detail == f"sha256 {backup.checksum[:16]}... ok" for c in verified.copies)
    after = _copies(report.id)
    assert {n: c.status for n, c in after.items()} == dict.fromkeys(LOCATIONS, "VERIFIED")
    assert all(c.verified_at is not None for c in after.values())
    again = store.get_backup(report.id)
    assert again.status == "VERIFIED" and again.verified_at is not None


def test_the_client_sends_no_optional_checksum_headers_providers_reject(
    settings: dict[str, str],
) -> None:
    """boto3 >= 1.36 adds CRC headers to every upload unless told to send them only when
    required; R2, B2 and SeaweedFS reject or mishandle them."""
    loc = _locations({**settings, "R2_PART_SIZE": str(5 * MiB)})["r2"]
    assert isinstance(loc, S3Location)
    client = loc.client()
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    sent: list[tuple[str, dict[str, str]]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append((request.url, {k.lower(): str(v) for k, v in request.headers.items()}))

    client.meta.events.register("before-send.s3", capture)
    try:
        loc.put_bytes("small", b"x" * 1000)
        writer = loc.open_writer("big")
        writer.write(os.urandom(6 * MiB))
        writer.commit()
    finally:
        client.meta.events.unregister("before-send.s3", capture)
    assert len(sent) >= 4  # put, create, two parts, complete
    for url, headers in sent:
        assert not [h for h in headers if h.startswith("x-amz-checksum-")], url
        assert "x-amz-sdk-checksum-algorithm" not in headers, url
    assert loc.get_bytes("small") == b"x" * 1000
    assert loc.stat("big").size == 6 * MiB


# -- a location that is down -------------------------------------------------------------------


def test_a_cloud_location_down_before_the_backup_gives_partial_and_the_rest_verifies(
    settings: dict[str, str],
    seaweed: SeaweedServer,
    seaweed_factory: SeaweedFactory,
    prefix: str,
) -> None:
    from strongroom.catalog import store
    from strongroom.services.backup import run_full_backup
    from strongroom.services.heal import heal_backups
    from strongroom.services.verify import verify_backup

    b2 = seaweed_factory(buckets=(B2_BUCKET,))
    settings.update(_cloud(b2, "b2", B2_BUCKET, prefix))
    config = load_config(settings)
    b2.stop()

    started = time.monotonic()
    report = run_full_backup(config)
    assert time.monotonic() - started < 30  # a dead location costs seconds, not retries for ever
    reason = f"b2: cannot reach {b2.endpoint_url}: connection refused"
    assert report.status == "PARTIAL"
    assert report.locations == {"local": "ok", "r2": "ok", "b2": reason}
    assert report.error == reason
    copies = _copies(report.id)
    assert (copies["b2"].status, copies["b2"].error) == ("FAILED", reason)
    assert copies["b2"].checksum == ""
    assert {n: copies[n].status for n in ("local", "r2")} == {"local": "STORED", "r2": "STORED"}

    verified = verify_backup(config, report.id)
    assert verified.ok, verified.problems()
    assert sorted((c.location, c.status) for c in verified.copies) == [
        ("local", "VERIFIED"),
        ("r2", "VERIFIED"),
    ]
    # the copies it has are intact, but b2 has none: still PARTIAL, and it says where and why
    assert (verified.status, verified.absent) == ("PARTIAL", {"b2": reason.removeprefix("b2: ")})
    backup = store.get_backup(report.id)
    assert (backup.status, backup.error) == ("PARTIAL", reason)
    after = _copies(report.id)
    assert (after["b2"].status, after["b2"].error) == ("FAILED", reason)  # no claim about b2
    key = after["r2"].key
    assert _bucket_keys(seaweed, R2_BUCKET, prefix) == {key, manifest_key_for(key)}
    assert _open_uploads(seaweed, R2_BUCKET, prefix) == []

    b2.start()  # same directory and ports: nothing arrived, nothing half-arrived
    assert _bucket_keys(b2, B2_BUCKET, prefix) == set()
    assert _open_uploads(b2, B2_BUCKET, prefix) == []
    healed = heal_backups(config, report.id)
    assert [(r.location, r.source, r.ok) for r in healed.repairs] == [("b2", "local", True)]
    assert _bucket_keys(b2, B2_BUCKET, prefix) == {key, manifest_key_for(key)}
    assert (store.get_backup(report.id).status, _copies(report.id)["b2"].status) == (
        "VERIFIED",
        "VERIFIED",
    )
    second = run_full_backup(config)
    assert second.status == "COMPLETED", second.error
    new_key = _copies(second.id)["b2"].key
    assert _bucket_keys(b2, B2_BUCKET, prefix) == {
        *(key, manifest_key_for(key)),
        *(new_key, manifest_key_for(new_key)),
    }
    assert verify_backup(config, second.id).status == "VERIFIED"


def _kill_when_parts_arrive(
    server: SeaweedServer, bucket: str, prefix: str, parts: int, done: threading.Event
) -> Callable[[], int]:
    """Start a thread that SIGKILLs ``server`` once an upload there holds ``parts`` parts."""
    seen = {"parts": 0}
    client = server.client(connect_timeout=1.0, read_timeout=5.0, max_attempts=1)

    def watch() -> None:
        while not done.is_set():
            for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get(
                "Uploads", []
            ):
                reply = client.list_parts(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                seen["parts"] = len(reply.get("Parts", []))
                if seen["parts"] >= parts:
                    server.stop()
                    return
            time.sleep(0.05)

    threading.Thread(target=watch, name="killer", daemon=True).start()
    return lambda: seen["parts"]


def _run_measured(argv: list[str], env: dict[str, str], out: Path) -> tuple[int, int, str, str]:
    """Run the command; (exit code, peak RSS in bytes, stdout, stderr)."""
    with open(out / "stdout", "w") as stdout, open(out / "stderr", "w") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + 240
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{' '.join(argv)} did not finish in 240 s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (
        proc.returncode,
        usage.ru_maxrss * 1024,
        (out / "stdout").read_text(),
        (out / "stderr").read_text(),
    )


def test_a_server_killed_mid_upload_gives_partial_and_its_parts_are_aborted_when_it_returns(
    tmp_path: Path,
    settings: dict[str, str],
    cli: Cli,
    seaweed: SeaweedServer,
    seaweed_factory: SeaweedFactory,
    prefix: str,
    demo_db: DemoDatabase,
) -> None:
    from strongroom.catalog import store

    b2 = seaweed_factory(buckets=(B2_BUCKET,))
    settings.update(_cloud(b2, "b2", B2_BUCKET, prefix))
    settings["B2_PART_SIZE"] = str(5 * MiB)
    env = clean_environ()
    env.update(settings, HOME=str(tmp_path))
    code, baseline_rss, stdout, stderr = _run_measured(
        [str(CLI), "backup", "--json"], env, tmp_path
    )
    assert code == 0, stderr  # the small shop: what the process needs whatever the size
    first = json.loads(stdout)["copies"][0]["key"]
    earlier = {first, manifest_key_for(first)}
    _add_ballast(demo_db.admin_url, 128)  # ~256 MB of pg_dump output, ~140 MB stored

    done = threading.Event()
    parts_seen = _kill_when_parts_arrive(b2, B2_BUCKET, prefix, 3, done)
    started = time.monotonic()
    code, peak_rss, stdout, stderr = _run_measured([str(CLI), "backup", "--json"], env, tmp_path)
    done.set()
    elapsed = time.monotonic() - started
    assert not b2.running, f"the upload finished before the kill ({parts_seen()} parts seen)"
    assert code == 6, stderr
    assert elapsed < 120
    doc = json.loads(stdout)
    reason = f"b2: cannot reach {b2.endpoint_url}: connection refused"
    assert doc["status"] == "PARTIAL" and doc["error"] == reason
    assert stderr.strip().splitlines()[-1] == (
        f"strongroom: error: backup {doc['id']} is PARTIAL: {reason}"
    )
    copies = {c["location"]: c for c in doc["copies"]}
    assert (copies["b2"]["status"], copies["b2"]["error"]) == ("FAILED", reason)
    assert 3 * 5 * MiB <= copies["b2"]["size_bytes"] < doc["size_bytes"]
    # a part and a few chunks in flight per location: memory never grows with the object
    growth = peak_rss - baseline_rss
    assert growth < 96 * MiB < doc["size_bytes"], f"peak RSS grew {growth / MiB:.0f} MiB"

    verify = cli("verify", doc["id"], "--json")
    assert verify.returncode == 0, verify.stderr
    verified = _json_out(verify)
    checks = {c["location"]: c["status"] for c in verified["checks"]}
    assert checks == {"local": "VERIFIED", "r2": "VERIFIED"}
    assert verified["status"] == "PARTIAL" and verified["error"] == reason
    assert verified["absent"] == {"b2": reason.removeprefix("b2: ")}
    assert _open_uploads(seaweed, R2_BUCKET, prefix) == []
    assert not [f for f in _local_files(settings) if ".partial-" in f]

    b2.start()  # same directory and ports: the parts it took before dying are still there
    key = copies["local"]["key"]
    assert _open_uploads(b2, B2_BUCKET, prefix) == [key]
    assert _bucket_keys(b2, B2_BUCKET, prefix) == earlier  # nothing new looks complete

    with psycopg.connect(demo_db.admin_url, autocommit=True) as conn:
        conn.execute("DROP TABLE public.ballast")  # the next run need not be big
    second = cli("backup", "--json")
    assert second.returncode == 0, second.stderr
    again = _json_out(second)
    assert again["status"] == "COMPLETED"
    cleaned = store.events_of(again["id"], "cleaned")
    assert [(e.location, e.message) for e in cleaned] == [("b2", "aborted 1 incomplete upload(s)")]
    assert _open_uploads(b2, B2_BUCKET, prefix) == []
    new_key = again["copies"][0]["key"]
    assert {c["location"]: c["status"] for c in again["copies"]} == dict.fromkeys(
        LOCATIONS, "STORED"
    )
    assert _bucket_keys(b2, B2_BUCKET, prefix) == {*earlier, new_key, manifest_key_for(new_key)}


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_credentials_for_one_location_give_partial_naming_it_without_the_secret(
    cli: Cli, seaweed: SeaweedServer, prefix: str, wrong: str
) -> None:
    bad_secret = "wrong-" + uuid.uuid4().hex
    overrides = {"R2_SECRET_ACCESS_KEY": bad_secret}
    if wrong == "key":
        overrides["R2_ACCESS_KEY_ID"] = "SRNOSUCHKEY" + uuid.uuid4().hex[:8].upper()
    done = cli("backup", "--json", **overrides)
    printed = done.stdout + done.stderr
    _secrets_absent(printed, bad_secret, seaweed.secret_access_key, seaweed.access_key_id)
    assert done.returncode == 6, done.stderr
    doc = _json_out(done)
    code = "SignatureDoesNotMatch" if wrong == "secret" else "InvalidAccessKeyId"
    reason = (
        f"r2: {seaweed.endpoint_url} refused the credentials ({code}): check R2_ACCESS_KEY_ID "
        f"and R2_SECRET_ACCESS_KEY, and that the key may read and write bucket '{R2_BUCKET}'"
    )
    assert (doc["status"], doc["error"]) == ("PARTIAL", reason)
    assert _error_line(done) == f"strongroom: error: backup {doc['id']} is PARTIAL: {reason}"
    copies = {c["location"]: c for c in doc["copies"]}
    assert (copies["r2"]["status"], copies["r2"]["error"]) == ("FAILED", reason)
    assert copies["local"]["status"] == copies["b2"]["status"] == "STORED"
    assert _bucket_keys(seaweed, R2_BUCKET, prefix) == set()
    assert _open_uploads(seaweed, R2_BUCKET, prefix) == []
    key = copies["b2"]["key"]
    assert _bucket_keys(seaweed, B2_BUCKET, prefix) == {key, manifest_key_for(key)}

    shown = cli("show", doc["id"])
    assert shown.returncode == 0, shown.stderr
    assert reason in shown.stdout
    _secrets_absent(shown.stdout + shown.stderr, bad_secret, seaweed.secret_access_key)


# -- the required local location ---------------------------------------------------------------


def test_a_local_path_under_a_regular_file_fails_before_anything_is_uploaded(
    tmp_path: Path, cli: Cli, seaweed: SeaweedServer, prefix: str
) -> None:
    """Root writes through any mode bits, but not below a file."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the backup mount should be\n")
    done = cli("backup", "--json", BACKUP_LOCAL_PATH=str(blocker / "backups"))
    line = _error_line(done)
    assert done.returncode == 1
    assert line == (
        f"strongroom: error: local location 'local': {blocker}/backups lies under {blocker}, "
        f"which is a file, not a directory (Not a directory): create it as a directory and give "
        f"user root write access, or set BACKUP_LOCAL_PATH"
    )
    listed = cli("list", "--json")
    (row,) = _json_out(listed)
    assert (row["status"], row["error"]) == ("FAILED", line.removeprefix("strongroom: error: "))
    assert row["copies"] == []
    for bucket in (R2_BUCKET, B2_BUCKET):
        assert _bucket_keys(seaweed, bucket, prefix) == set()
        assert _open_uploads(seaweed, bucket, prefix) == []
    assert blocker.read_text() == "a file where the backup mount should be\n"


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_the_local_disk_failing_midway_stops_the_run_and_aborts_the_cloud_uploads(
    tmp_path: Path,
    settings: dict[str, str],
    seaweed: SeaweedServer,
    prefix: str,
    demo_db: DemoDatabase,
) -> None:
    """The required location fails midway: pg_dump is stopped there and then (not read to
    the end), the run is FAILED with the local error, and no copy anywhere looks complete (a
    file-size limit makes the local write fail, even for root)."""
    _add_ballast(demo_db.admin_url, 32)  # > 6 parts of 5 MiB in each bucket if read through
    env = clean_environ()
    env.update(
        settings,
        HOME=str(tmp_path),
        PYTHONDONTWRITEBYTECODE="1",
        R2_PART_SIZE=str(5 * MiB),
        B2_PART_SIZE=str(5 * MiB),
    )
    done = subprocess.run(
        [str(CLI), "backup", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        preexec_fn=_file_size_limit(4 * MiB),  # Python ignores SIGXFSZ: writes fail with EFBIG
    )
    line = _error_line(done)
    assert line.startswith("strongroom: error: required location failed: local: local location ")
    assert "(File too large)" in line
    from strongroom.catalog import store

    (backup,) = store.list_backups()
    assert backup.status == "FAILED" and "File too large" in backup.error
    copies = _copies(backup.id)
    assert {n: c.status for n, c in copies.items()} == dict.fromkeys(LOCATIONS, "FAILED")
    assert "(File too large)" in copies["local"].error
    for name in ("r2", "b2"):  # stopped with the local failure, long before the dump's end
        assert copies[name].size_bytes is not None and copies[name].size_bytes < 16 * MiB
        assert copies[name].error == (
            "upload stopped and aborted because a required location failed"
        )
    assert backup.local_path == backup.r2_path == backup.b2_path == ""
    for bucket in (R2_BUCKET, B2_BUCKET):
        assert _bucket_keys(seaweed, bucket, prefix) == set()
        assert _open_uploads(seaweed, bucket, prefix) == []
    assert _local_files(settings) == set()  # no partial file either


# -- a corrupt copy ----------------------------------------------------------------------------


def test_a_corrupt_copy_is_named_by_verify_and_restore_falls_back_to_a_good_one(
    cli: Cli,
    seaweed: SeaweedServer,
    prefix: str,
    demo_db: DemoDatabase,
    new_db: Callable[[], str],
    pg_cluster: PgCluster,
) -> None:
    source = table_digests(demo_db.admin_url)
    done = cli("backup", "--json")
    assert done.returncode == 0, done.stderr
    doc = _json_out(done)
    backup_id, key = doc["id"], doc["copies"][0]["key"]
    _flip_byte(seaweed, B2_BUCKET, f"{prefix}/{key}")

    # b2 first, as when restoring from the cloud: its copy is refused, r2's is used
    target = new_db()
    done = cli("restore", "--latest", "--target", target, STRONGROOM_LOCATIONS="b2,r2,local")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("skipped copy b2: stored object failed authentication "), lines[0]
    assert lines[0].endswith(": it is truncated, tampered with or corrupt; try another copy")
    assert lines[1].startswith(f"restored backup {backup_id} from r2 into "), lines[1]
    assert table_digests(target) == source

    done = cli("verify", backup_id)
    assert done.returncode == 4
    out = done.stdout.splitlines()  # copies in the configured order
    assert out[0].startswith("ok   local ") and out[1].startswith("ok   r2 ")
    assert out[2].startswith("FAIL b2       corrupt: "), out[2]
    assert out[-1] == f"backup {backup_id}: PARTIAL"
    assert _error_line(done).startswith(
        f"strongroom: error: backup {backup_id} failed verification: b2: corrupt: "
    )
    shown = _json_out(cli("show", backup_id, "--json"))
    assert shown["status"] == "PARTIAL" and shown["verified_at"] is None
    assert {c["location"]: c["status"] for c in shown["copies"]} == {
        "local": "VERIFIED",
        "r2": "VERIFIED",
        "b2": "CORRUPT",
    }

    # now the catalog knows: the corrupt copy is passed over, and the output says why
    target = new_db()
    done = cli("restore", "--latest", "--target", target, STRONGROOM_LOCATIONS="b2,r2,local")
    assert done.returncode == 0, done.stderr
    lines_after = done.stdout.splitlines()
    assert lines_after[0].startswith("skipped copy b2: the catalog has this copy as CORRUPT")
    assert lines_after[1].startswith(f"restored backup {backup_id} from r2 into ")
    assert table_digests(target) == source

    target = new_db()
    done = cli("restore", "--latest", "--from", "r2", "--target", target)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"restored backup {backup_id} from r2 into ")
    assert table_digests(target) == source

    target = new_db()
    done = cli("restore", "--latest", "--from", "b2", "--target", target)
    assert _error_line(done) == (
        f"strongroom: error: no intact copy to restore from (b2: {lines[0].split(': ', 1)[1]})"
    )
    assert _user_tables(pg_cluster, target) in (None, 0)  # no bad byte reached the target


# -- strongroom check --------------------------------------------------------------------------


def _location_lines(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) > 2 and words[1] == "location":
            assert words[2] not in found, f"two lines for {words[2]}"
            found[words[2]] = line
    return found


def test_check_probes_every_location_and_fails_only_for_a_required_one(
    cli: Cli, seaweed: SeaweedServer, seaweed_factory: SeaweedFactory, prefix: str
) -> None:
    secrets = [
        seaweed.secret_access_key,
        seaweed.access_key_id,
        seaweed.readonly_secret_access_key,
        seaweed.readonly_access_key_id,
    ]
    assert cli("backup", "--json").returncode == 0  # so that freshness passes
    r2_where = f"s3://{R2_BUCKET}/{prefix} at {seaweed.endpoint_url}"
    b2_where = f"s3://{B2_BUCKET}/{prefix} at {seaweed.endpoint_url}"

    done = cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = _location_lines(done.stdout)
    assert sorted(lines) == sorted(LOCATIONS)
    assert lines["local"].startswith("ok   location local ")
    assert lines["local"].endswith(": reachable and writable")
    assert lines["r2"] == f"ok   location r2      {r2_where}: reachable and writable"
    assert lines["b2"] == f"ok   location b2      {b2_where}: reachable and writable"
    _secrets_absent(done.stdout + done.stderr, *secrets)

    # a read-only key: reachable, not writable; optional, so a warning and exit 0
    done = cli(
        "check",
        R2_ACCESS_KEY_ID=seaweed.readonly_access_key_id,
        R2_SECRET_ACCESS_KEY=seaweed.readonly_secret_access_key,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _location_lines(done.stdout)["r2"] == (
        f"warn location r2      {r2_where}: reachable but not writable: r2: "
        f"{seaweed.endpoint_url} refused the credentials (AccessDenied): check R2_ACCESS_KEY_ID "
        f"and R2_SECRET_ACCESS_KEY, and that the key may read and write bucket '{R2_BUCKET}'"
    )
    _secrets_absent(done.stdout + done.stderr, *secrets)

    # a wrong secret for a required location: FAIL and a non-zero exit, in both forms
    wrong = "wrong-" + uuid.uuid4().hex
    secrets.append(wrong)
    broken = {"STRONGROOM_REQUIRED_LOCATIONS": "local,b2", "B2_SECRET_ACCESS_KEY": wrong}
    refused = (
        f"b2: {seaweed.endpoint_url} refused the credentials (SignatureDoesNotMatch): check "
        f"B2_ACCESS_KEY_ID and B2_SECRET_ACCESS_KEY, and that the key may read and write "
        f"bucket '{B2_BUCKET}'"
    )
    done = cli("check", **broken)
    assert done.returncode == 8, done.stdout + done.stderr
    lines = _location_lines(done.stdout)
    assert lines["b2"] == f"FAIL location b2      {b2_where}: {refused}"
    assert lines["r2"].startswith("ok   ") and lines["local"].startswith("ok   ")
    _secrets_absent(done.stdout + done.stderr, *secrets)
    done = cli("check", "--json", **broken)
    assert done.returncode == 8, done.stdout + done.stderr
    _secrets_absent(done.stdout + done.stderr, *secrets)
    doc = _json_out(done)
    assert (doc["ok"], doc["status"]) == (False, "FAILED")
    probes = {c["name"]: c for c in doc["checks"]}
    assert probes["location b2"] == {
        "name": "location b2",
        "ok": False,
        "required": True,
        "detail": f"{b2_where}: {refused}",
    }
    assert probes["location r2"]["ok"] and not probes["location r2"]["required"]
    assert probes["location local"]["ok"] and probes["location local"]["required"]

    # a required location whose server is down
    down = seaweed_factory(buckets=(B2_BUCKET,))
    down.stop()
    done = cli(
        "check",
        STRONGROOM_REQUIRED_LOCATIONS="local,b2",
        **_cloud(down, "b2", B2_BUCKET, prefix),
    )
    assert done.returncode == 8, done.stdout + done.stderr
    assert _location_lines(done.stdout)["b2"] == (
        f"FAIL location b2      s3://{B2_BUCKET}/{prefix} at {down.endpoint_url}: b2: cannot "
        f"reach {down.endpoint_url}: connection refused"
    )
    _secrets_absent(done.stdout + done.stderr, *secrets, down.secret_access_key)
