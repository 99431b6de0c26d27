"""Rebuild the catalog from the manifests in one location: storage is the source of truth.

Every ``*.manifest.json`` in the location is read and authenticated with the keyring; a manifest
that fails (tampered, truncated, another key) is reported and skipped, never trusted. For each
authentic manifest the backup is upserted from the manifest alone (id, type, database, times,
sizes, checksum, codec, key id, row counts), with a copy in that location: ``STORED`` when the
object is there with the manifest's size, ``MISSING`` when it is not (``CORRUPT`` when its size
is wrong). The other configured locations are probed the same way (two ``stat`` calls per
backup; no manifest there means no copy there), so a rebuild from R2 also
knows about the copies in B2 and on local disk; an unreachable location is reported and its
copies are left unrecorded rather than guessed.

Nothing is marked ``VERIFIED``: a rebuild reads manifests, not objects; run ``strongroom verify``
(or ``heal --deep``) to earn that status. Rebuilding twice gives the same catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.manifest import MANIFEST_SUFFIX, Manifest, manifest_key_for
from strongroom.core.status import CopyStatus
from strongroom.core.storage.base import Location
from strongroom.errors import ObjectNotFound, StorageError, StrongroomError
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.rebuild")


@dataclass
class Skipped:
    key: str
    reason: str


@dataclass
class RebuildReport:
    location: str
    backups: list[str] = field(default_factory=list)
    copies: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.unreachable

    def problems(self) -> str:
        parts = [f"{s.key}: {s.reason}" for s in self.skipped]
        parts += [f"{name}: {why}" for name, why in self.unreachable.items()]
        return "; ".join(parts)


def rebuild_catalog(
    config: Config, from_location: str, *, probe_others: bool = True
) -> RebuildReport:
    """Recreate (or refresh) the catalog from ``from_location``'s manifests."""
    runtime = Runtime.build(config)
    source = runtime.location(from_location)
    report = RebuildReport(source.name)
    others = [loc for loc in runtime.locations if loc is not source] if probe_others else []
    for key, manifest in authentic_manifests(runtime, source, report.skipped):
        copies = {source.name: _copy_status(source, manifest)}
        for loc in others:
            if loc.name in report.unreachable:
                continue
            try:
                copies[loc.name] = _copy_status(loc, manifest, absent="")
            except StorageError as exc:
                report.unreachable[loc.name] = str(exc)
        copies = {name: status for name, status in copies.items() if status}
        store.import_manifest(manifest, manifest_key=key, copies=copies)
        report.backups.append(manifest.id)
        report.copies[manifest.id] = copies
    return report


def authentic_manifests(
    runtime: Runtime, location: Location, skipped: list[Skipped]
) -> list[tuple[str, Manifest]]:
    """Every manifest in ``location`` that authenticates, oldest first; the rest in ``skipped``."""
    found: list[tuple[str, Manifest]] = []
    for info in location.list(""):
        if not info.key.endswith(MANIFEST_SUFFIX):
            continue
        try:
            manifest = Manifest.from_document(location.get_bytes(info.key), runtime.keyring)
            if manifest_key_for(manifest.object_key) != info.key:
                raise StrongroomError(f"names object {manifest.object_key}, not the one beside it")
        except StrongroomError as exc:
            log.warning("skipping manifest %s in %s: %s", info.key, location.name, exc)
            skipped.append(Skipped(info.key, str(exc) or type(exc).__name__))
            continue
        found.append((info.key, manifest))
    found.sort(key=lambda item: (item[1].finished_at, item[1].id))
    return found


def _copy_status(loc: Location, manifest: Manifest, absent: str = "MISSING") -> str:
    """The copy's state from two ``stat`` calls: no manifest means no copy (``absent``)."""
    try:
        loc.stat(manifest_key_for(manifest.object_key))
    except ObjectNotFound:
        return absent
    try:
        info = loc.stat(manifest.object_key)
    except ObjectNotFound:
        return CopyStatus.MISSING
    return CopyStatus.STORED if info.size == manifest.stored_size else CopyStatus.CORRUPT
