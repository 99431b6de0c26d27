"""Manifests: authenticated round trip, tampering, rotation, and the storage key layout."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.core import crypto
from strongroom.core.crypto import Keyring
from strongroom.core.manifest import (
    FORMAT,
    MANIFEST_SUFFIX,
    Manifest,
    canonical_json,
    database_prefix,
    manifest_key_for,
    object_key_for,
    read_unverified,
    wal_key_for,
)
from strongroom.errors import IntegrityError, WrongKeyError

KEY_A = crypto.generate_key()
KEY_B = crypto.generate_key()
RING_A = Keyring.from_strings(KEY_A)
RING_B = Keyring.from_strings(KEY_B)
RING_BA = Keyring.from_strings(KEY_B, [KEY_A])
STARTED = datetime(2024, 3, 7, 2, 0, 0, 123456, tzinfo=UTC)


def sample(**changes: Any) -> Manifest:
    manifest = Manifest(
        id="01HRQ4Z3K9",
        kind="full",
        database="saas",
        server_version="16.2",
        pg_dump_version="16.2",
        started_at=STARTED,
        finished_at=STARTED + timedelta(minutes=3, seconds=5),
        raw_size=1_340_000_000,
        compressed_size=210_000_000,
        stored_size=210_003_300,
        sha256="ab" * 32,
        codec="zstd",
        codec_level=3,
        cipher=crypto.CIPHER_NAME,
        key_id=RING_A.primary_id,
        object_key="saas/full/2024/03/07/01HRQ4Z3K9.dump.zst.enc",
        table_rows={"public.tenants": 12, "public.orders": 1_000_000, "app.café": 3},
        tenant_id=None,
        tool_version="0.1.0",
        extra={"role": "strongroom_backup", "nested": {"list": [1, 2.5, None, "x"]}},
    )
    return replace(manifest, **changes)


def edit(document: bytes, change: Any) -> bytes:
    data = json.loads(document)
    change(data)
    return json.dumps(data).encode()


def test_round_trip() -> None:
    manifest = sample()
    document = manifest.to_document(RING_A)
    assert Manifest.from_document(document, RING_A) == manifest
    assert Manifest.read_unverified(document) == manifest
    assert read_unverified(document) == manifest


def test_document_is_human_readable_and_self_describing() -> None:
    document = sample().to_document(RING_A)
    text = document.decode("utf-8")
    assert "\n" in text and "café" in text
    data = json.loads(text)
    assert data["format"] == FORMAT == "strongroom-manifest/1"
    assert data["key_id"] == RING_A.primary_id
    assert set(data) == {"format", "key_id", "mac", "manifest"}
    assert data["manifest"]["started_at"] == "2024-03-07T02:00:00.123456Z"
    assert data["manifest"]["table_rows"]["public.orders"] == 1_000_000
    # the MAC covers the canonical JSON of the manifest object
    RING_A.verify(canonical_json(data["manifest"]), data["key_id"], data["mac"])
    assert KEY_A not in text


def test_reformatting_the_document_keeps_it_valid() -> None:
    document = sample().to_document(RING_A)
    compact = json.dumps(json.loads(document), separators=(",", ":")).encode()
    assert Manifest.from_document(compact, RING_A) == sample()


def test_times_are_stored_in_utc() -> None:
    local = datetime(2024, 3, 7, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    manifest = sample(started_at=local, finished_at=local + timedelta(hours=1))
    data = json.loads(manifest.to_document(RING_A))
    assert data["manifest"]["started_at"] == "2024-03-08T04:30:00Z"
    back = Manifest.from_document(manifest.to_document(RING_A), RING_A)
    assert back.started_at == local and back.started_at.tzinfo == UTC


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sample(finished_at=datetime(2024, 1, 1)).to_document(RING_A)


def test_tenant_manifest() -> None:
    manifest = sample(kind="tenant", tenant_id="acme", table_rows={})
    assert Manifest.from_document(manifest.to_document(RING_A), RING_A) == manifest


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["manifest"].update(raw_size=d["manifest"]["raw_size"] + 1),
        lambda d: d["manifest"].update(sha256="cd" * 32),
        lambda d: d["manifest"]["table_rows"].update({"public.orders": 999_999}),
        lambda d: d["manifest"]["table_rows"].pop("public.tenants"),
        lambda d: d["manifest"].update(object_key="elsewhere/x.dump.zst.enc"),
        lambda d: d["manifest"].update(smuggled="field"),
        lambda d: d["manifest"]["extra"].update(role="postgres"),
        lambda d: d.update(mac="0" * 64),
        lambda d: d.update(mac=d["mac"][:-1] + ("0" if d["mac"][-1] != "0" else "1")),
    ],
)
def test_tampering_is_rejected(change: Any) -> None:
    document = edit(sample().to_document(RING_A), change)
    with pytest.raises(IntegrityError, match="manifest failed authentication"):
        Manifest.from_document(document, RING_A)


def test_relabelled_key_id_is_rejected() -> None:
    document = edit(sample().to_document(RING_A), lambda d: d.update(key_id=RING_B.primary_id))
    with pytest.raises(IntegrityError):
        Manifest.from_document(document, RING_BA)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"{not json", "not valid UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"format": "strongroom-manifest/9", "manifest": {}}', "newer format"),
        (b'{"format": "strongroom-manifest/1", "manifest": []}', "not a JSON object"),
        (b'{"format": "strongroom-manifest/1", "manifest": {}}', "key_id and mac"),
        (
            b'{"format": "strongroom-manifest/1", "manifest": {"x": NaN}, "key_id": "a", '
            b'"mac": "b"}',
            "not valid UTF-8 JSON",
        ),
    ],
)
def test_malformed_documents(data: bytes, match: str) -> None:
    with pytest.raises(IntegrityError, match=match):
        Manifest.from_document(data, RING_A)


def test_signed_but_malformed_manifest_is_rejected() -> None:
    """A validly signed object that lacks fields (e.g. from a broken writer) is still refused."""
    body = {"id": "x"}
    key_id, mac = RING_A.sign(canonical_json(body))
    document = json.dumps({"format": FORMAT, "key_id": key_id, "mac": mac, "manifest": body})
    with pytest.raises(IntegrityError, match="field 'kind' is missing"):
        Manifest.from_document(document.encode(), RING_A)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("raw_size", "12"),
        ("raw_size", True),
        ("codec_level", 3.0),
        ("started_at", "yesterday"),
        ("started_at", "2024-03-07T02:00:00"),
        ("table_rows", {"public.t": "5"}),
        ("table_rows", []),
        ("tenant_id", 5),
        ("extra", "x"),
        ("id", None),
        ("codec_levels", []),
        ("codec_levels", {"1": {"raw_bytes": "5"}}),
        ("codec_levels", {"1": 5}),
    ],
)
def test_mistyped_fields_are_rejected(field: str, value: Any) -> None:
    data = sample().to_dict()
    data[field] = value
    with pytest.raises(IntegrityError, match="malformed manifest"):
        Manifest.from_dict(data)


def test_levels_of_adaptive_zstd_round_trip_and_old_manifests_have_none() -> None:
    levels = {
        "1": {"raw_bytes": 900, "compressed_bytes": 300},
        "3": {"raw_bytes": 100, "compressed_bytes": 25},
    }
    manifest = sample(codec_levels=levels)
    assert Manifest.from_document(manifest.to_document(RING_A), RING_A).codec_levels == levels
    old = sample().to_dict()
    del old["codec_levels"]  # written before adaptive zstd existed
    key_id, mac = RING_A.sign(canonical_json(old))
    document = json.dumps({"format": FORMAT, "key_id": key_id, "mac": mac, "manifest": old})
    assert Manifest.from_document(document.encode(), RING_A) == sample()


def test_unknown_fields_from_newer_versions_are_ignored() -> None:
    data = sample().to_dict() | {"future_field": 1}
    key_id, mac = RING_A.sign(canonical_json(data))
    document = json.dumps({"format": FORMAT, "key_id": key_id, "mac": mac, "manifest": data})
    assert Manifest.from_document(document.encode(), RING_A) == sample()


def test_wrong_key_names_the_key_needed() -> None:
    document = sample().to_document(RING_A)
    with pytest.raises(WrongKeyError) as caught:
        Manifest.from_document(document, RING_B)
    assert caught.value.key_id == RING_A.primary_id
    assert RING_A.primary_id in str(caught.value)
    assert "BACKUP_ENCRYPTION_OLD_KEYS" in str(caught.value)


def test_old_key_verifies_and_new_manifests_use_the_primary() -> None:
    old = sample().to_document(RING_A)
    assert Manifest.from_document(old, RING_BA) == sample()
    new = sample().to_document(RING_BA)
    assert json.loads(new)["key_id"] == RING_B.primary_id


def test_read_unverified_does_not_authenticate_but_checks_shape() -> None:
    tampered = edit(sample().to_document(RING_A), lambda d: d["manifest"].update(raw_size=1))
    assert Manifest.read_unverified(tampered).raw_size == 1
    with pytest.raises(IntegrityError):
        Manifest.read_unverified(b"{}")


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    table_rows=st.dictionaries(
        st.text(min_size=1, max_size=30), st.integers(0, 2**63), max_size=20
    ),
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    tenant_id=st.none() | st.text(max_size=20),
    database=st.text(min_size=1, max_size=30),
)
def test_round_trip_any_content(
    table_rows: dict[str, int], extra: dict[str, Any], tenant_id: str | None, database: str
) -> None:
    manifest = sample(table_rows=table_rows, extra=extra, tenant_id=tenant_id, database=database)
    assert Manifest.from_document(manifest.to_document(RING_A), RING_A) == manifest


def test_to_dict_is_json_ready() -> None:
    data = sample().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Manifest.from_dict(data) == sample()


# --- key layout --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extension", "expected"),
    [
        ("zst", "saas/full/2024/03/07/01HRQ4Z3K9.dump.zst.enc"),
        ("gz", "saas/full/2024/03/07/01HRQ4Z3K9.dump.gz.enc"),
        ("", "saas/full/2024/03/07/01HRQ4Z3K9.dump.enc"),
    ],
)
def test_object_key_layout(extension: str, expected: str) -> None:
    key = object_key_for("saas", "full", "01HRQ4Z3K9", STARTED, extension)
    assert key == expected
    assert manifest_key_for(key) == "saas/full/2024/03/07/01HRQ4Z3K9.manifest.json"
    assert key.startswith(database_prefix("saas"))


def test_object_key_date_is_utc() -> None:
    local = datetime(2024, 12, 31, 22, 0, tzinfo=timezone(timedelta(hours=-5)))
    key = object_key_for("saas", "tenant", "b-1", local, "zst")
    assert key == "saas/tenant/2025/01/01/b-1.dump.zst.enc"


@pytest.mark.parametrize(
    ("database", "segment"),
    [
        ("my_db-2", "my_db-2"),
        ("a/b", "a%2Fb"),
        ("..", "%2E."),
        ("Ünïcode db", "%C3%9Cn%C3%AFcode%20db"),
    ],
)
def test_unusual_database_names_stay_one_segment(database: str, segment: str) -> None:
    key = object_key_for(database, "full", "x1", STARTED, "zst")
    assert key.split("/")[0] == segment
    assert database_prefix(database) == segment + "/"
    assert key.count("/") == 5


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("saas", "weekly", "x1"), "kind"),
        (("saas", "full", "../x"), "backup id"),
        (("saas", "full", "a.b"), "backup id"),
        (("saas", "full", ""), "backup id"),
        (("", "full", "x1"), "empty"),
    ],
)
def test_object_key_rejects_unsafe_parts(args: tuple[str, str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        object_key_for(*args, STARTED, "zst")


def test_object_key_needs_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        object_key_for("saas", "full", "x1", datetime(2024, 1, 1), "zst")


def test_manifest_key_for_bare_names() -> None:
    assert manifest_key_for("abc.dump.enc") == "abc.manifest.json"
    assert manifest_key_for("p/q/abc.dump.gz.enc") == "p/q/abc.manifest.json"


def test_every_kind_has_its_own_key_shape() -> None:
    assert object_key_for("saas", "tenant", "t1", STARTED, "zst").endswith("/t1.dump.zst.enc")
    base = object_key_for("saas", "base", "b1", STARTED, "zst")
    assert base.startswith("saas/base/") and base.endswith("/b1.tar.zst.enc")
    assert manifest_key_for(base) == base.removesuffix("b1.tar.zst.enc") + "b1.manifest.json"
    with pytest.raises(ValueError, match="kind"):
        object_key_for("saas", "wal", "w1", STARTED, "zst")  # WAL is named by PostgreSQL


@pytest.mark.parametrize(
    ("name", "manifest"),
    [
        ("000000010000000000000002", "000000010000000000000002.manifest.json"),
        ("00000002.history", "00000002.history.manifest.json"),
        ("000000010000000000000002.00000028.backup", "000000010000000000000002.00000028.backup"),
        ("000000010000000000000003.partial", "000000010000000000000003.partial"),
    ],
)
def test_wal_files_keep_their_names_and_manifests_never_collide(name: str, manifest: str) -> None:
    key = wal_key_for("cluster-7301", name, "zst")
    assert key == f"cluster-7301/wal/{name[:8]}/{name}.wal.zst.enc"
    expected = manifest if manifest.endswith(MANIFEST_SUFFIX) else manifest + MANIFEST_SUFFIX
    assert manifest_key_for(key) == f"cluster-7301/wal/{name[:8]}/{expected}"


@pytest.mark.parametrize("name", ["../x", "00000001000000000000000Z", "00000002", "pg_wal/1", ""])
def test_wal_key_refuses_names_postgres_never_archives(name: str) -> None:
    with pytest.raises(ValueError, match="not a WAL"):
        wal_key_for("cluster-7301", name, "zst")
