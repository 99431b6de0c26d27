"""Where are a backup's copies? Ask the catalog, or, when it knows nothing, storage itself.

The storage path is the disaster-recovery path: with only the package, the key and storage
credentials, the manifests stored beside every object say what exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from strongroom.catalog import store
from strongroom.core.manifest import Manifest, database_prefix
from strongroom.core.postgres import ConnInfo
from strongroom.core.status import USABLE_COPY
from strongroom.core.storage.base import Location
from strongroom.errors import BackupNotFound, ConfigError, StrongroomError
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.discovery")

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class CopyRef:
    """One stored copy to try: where, under which key, and the checksum the catalog expects."""

    backup_id: str
    location: Location
    key: str
    manifest_key: str
    expected_sha256: str = ""


def _ordered(runtime: Runtime, from_location: str | None) -> list[Location]:
    if from_location:
        return [runtime.location(from_location)]
    return list(runtime.locations)


def find_copies(
    runtime: Runtime,
    backup_id: str | None,
    from_location: str | None,
    passed_over: list[str] | None = None,
) -> list[CopyRef]:
    """Copies of the backup in preference order (configured location order, or just one).

    ``--latest`` means the newest restorable backup of the configured database when one is
    configured. Copies the catalog knows to be unusable (CORRUPT, MISSING, FAILED) are not
    tried; each is described in ``passed_over`` so the operator sees why.
    """
    locations = _ordered(runtime, from_location)
    try:
        copies = _from_catalog(runtime, backup_id, locations, passed_over)
    except BackupNotFound:
        copies = []
    if copies:
        return copies
    copies = _from_storage(runtime, backup_id, locations)
    if copies:
        return copies
    where = from_location or ", ".join(loc.name for loc in locations)
    what = f"backup {backup_id}" if backup_id else "any restorable backup"
    raise BackupNotFound(f"{what} not found in the catalog or in storage ({where})")


def latest_of_configured_database(runtime: Runtime) -> str:
    """Id of the newest restorable backup of the configured database (any, if none is set)."""
    return str(store.latest_backup(database=_database_filter(runtime)).id)


def _from_catalog(
    runtime: Runtime,
    backup_id: str | None,
    locations: list[Location],
    passed_over: list[str] | None,
) -> list[CopyRef]:
    backup = store.get_backup(backup_id or latest_of_configured_database(runtime))
    by_location = {c.location: c for c in store.copies_of(backup.id)}
    refs = []
    for loc in locations:
        copy = by_location.get(loc.name)
        if copy is None:
            continue
        if copy.status in USABLE_COPY:
            refs.append(CopyRef(backup.id, loc, copy.key, copy.manifest_key, backup.checksum))
        elif passed_over is not None:
            why = f": {copy.error}" if copy.error else ""
            passed_over.append(f"{loc.name}: the catalog has this copy as {copy.status}{why}")
    return refs


def scan_manifests(location: Location, database: str | None = None) -> list[tuple[str, Manifest]]:
    """Every manifest in a location (unverified; authenticate before trusting), oldest first."""
    found = []
    prefix = database_prefix(database) if database else ""
    for info in location.list(prefix):
        if not info.key.endswith(MANIFEST_SUFFIX):
            continue
        try:
            found.append((info.key, Manifest.read_unverified(location.get_bytes(info.key))))
        except StrongroomError as exc:
            log.warning("unreadable manifest %s in %s: %s", info.key, location.name, exc)
    found.sort(key=lambda item: (item[1].finished_at, item[1].id))
    return found


def _database_filter(runtime: Runtime) -> str | None:
    try:
        return ConnInfo.parse(runtime.config.database_url).dbname or None
    except ConfigError:
        return None


def _from_storage(
    runtime: Runtime, backup_id: str | None, locations: list[Location]
) -> list[CopyRef]:
    database = _database_filter(runtime)
    refs: list[CopyRef] = []
    wanted = backup_id
    for loc in locations:
        try:
            manifests = scan_manifests(loc, database)
        except StrongroomError as exc:
            log.warning("cannot list %s: %s", loc.name, exc)
            continue
        if wanted is None and manifests:
            wanted = manifests[-1][1].id  # newest in the first reachable location
        for key, manifest in manifests:
            if manifest.id == wanted:
                refs.append(CopyRef(manifest.id, loc, manifest.object_key, key))
    return refs
