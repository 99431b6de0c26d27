"""A storage backend defined and registered by this test module alone backs up like any other.

Nothing outside this file knows the ``vault`` location: it is a ``Location`` that keeps objects
in a dict, registered with its one setting, then named in ``STRONGROOM_LOCATIONS``. The real
command (in this process, so the dict is visible) dumps the session's PostgreSQL into it and
the local disk, records both copies in the catalog and verifies them.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from strongroom.core.crypto import generate_key
from strongroom.core.manifest import MANIFEST_SUFFIX, manifest_key_for, read_unverified
from strongroom.core.storage import (
    CheckResult,
    Location,
    LocationType,
    ObjectInfo,
    ObjectWriter,
    Setting,
    register_backend,
    register_location,
    unregister_location,
)
from strongroom.core.storage.settings import integer
from strongroom.core.streams import Reader
from strongroom.errors import ObjectNotFound
from strongroom.interfaces.cli import main
from strongroom.sandbox.demo_data import DemoDatabase

pytestmark = pytest.mark.integration

#: Every vault's objects, by the VAULT_NAME that selects it.
VAULTS: dict[str, dict[str, bytes]] = {}


class _DictWriter(ObjectWriter):
    """Nothing is visible until ``commit``, as the interface requires."""

    def __init__(self, objects: dict[str, bytes], key: str) -> None:
        self._objects, self._key, self._parts = objects, key, list[bytes]()

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def commit(self) -> None:
        self._objects[self._key] = b"".join(self._parts)

    def abort(self) -> None:
        self._parts.clear()


@register_backend
class DictLocation(Location):
    """Objects in one of ``VAULTS``."""

    kind = "dict"

    def __init__(self, name: str, vault: str) -> None:
        super().__init__(name)
        self.objects = VAULTS.setdefault(vault, {})

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> DictLocation:
        return cls(name, str(options["vault"]))

    def open_writer(self, key: str) -> ObjectWriter:
        return _DictWriter(self.objects, key)

    def open_reader(self, key: str) -> Reader:
        return io.BytesIO(self._get(key))

    def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self._get(key)))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(self.objects[key]))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def check(self) -> CheckResult:
        return CheckResult(True, True, f"{len(self.objects)} objects in memory")

    def _get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFound(f"{self.name}: no object {key}", self.name) from None


@pytest.fixture
def vault() -> Iterator[LocationType]:
    kind = register_location(
        LocationType(
            "vault",
            DictLocation,
            settings=(Setting("VAULT_NAME", "vault", required=True),),
            retention=Setting("VAULT_RETENTION_DAYS", parse=integer, default=7),
        )
    )
    yield kind
    unregister_location("vault")


@pytest.fixture
def environment(
    tmp_path: Path, demo_db: DemoDatabase, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("PG", "BACKUP_", "STRONGROOM_", "R2_", "B2_", "DATABASE_URL")):
            monkeypatch.delenv(name)
    (tmp_path / "local").mkdir()
    env = {
        "DATABASE_URL": demo_db.admin_url,
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(tmp_path / "local"),
        "STRONGROOM_LOCATIONS": "local,vault",
        "STRONGROOM_REQUIRED_LOCATIONS": "local,vault",
        "VAULT_NAME": tmp_path.name,
        "STRONGROOM_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite3'}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    document: dict[str, Any] = json.loads(out.out)
    return document


def test_a_backend_registered_here_is_backed_up_to_recorded_and_verified(
    vault: LocationType,
    environment: dict[str, str],
    demo_db: DemoDatabase,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = _json(capsys, "backup")
    assert (doc["status"], doc["database"]) == ("COMPLETED", demo_db.name)
    copies = {c["location"]: c for c in doc["copies"]}
    assert set(copies) == {"local", "vault"}
    assert copies["vault"]["status"] == "STORED"

    stored = VAULTS[environment["VAULT_NAME"]]
    key = copies["vault"]["key"]
    manifest = manifest_key_for(key)
    assert manifest.endswith(f"/{doc['id']}{MANIFEST_SUFFIX}")
    assert sorted(stored) == sorted([key, manifest])
    assert len(stored[key]) == copies["vault"]["size_bytes"] > 0
    assert stored[key] == (Path(environment["BACKUP_LOCAL_PATH"]) / key).read_bytes()
    assert read_unverified(stored[manifest]).id == doc["id"]

    shown = _json(capsys, "show", doc["id"])
    assert {c["location"]: c["status"] for c in shown["copies"]} == {
        "local": "STORED",
        "vault": "STORED",
    }
    verified = _json(capsys, "verify", doc["id"])
    assert {c["location"]: c["status"] for c in verified["checks"]} == {
        "local": "VERIFIED",
        "vault": "VERIFIED",
    }
    checked = _json(capsys, "check")
    assert {p["name"]: p["ok"] for p in checked["checks"]}["location vault"] is True
