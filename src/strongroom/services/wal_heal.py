"""Back-fill WAL files a location lacks (or holds damaged) from a good copy elsewhere.

An optional location that was down while PostgreSQL archived misses those files: ``wal-push``
never waits for it (that would hold WAL in ``pg_wal``), so the gap is closed here. The gaps are
the ones ``wal-verify`` finds; for each, the first other location whose copy passes a full
read-back (manifest authenticated, stored SHA-256, decryption, plaintext SHA-256) is the
source. Its stored bytes are copied as they are (no re-encryption), the manifest last, and the
new copy is read back in full before it counts. Needs no catalog.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field

from strongroom.config import Config
from strongroom.core.codecs import get_codec
from strongroom.core.manifest import Manifest
from strongroom.core.readback import read_back, read_copy
from strongroom.core.storage.base import Location
from strongroom.core.wal_spool import Spool
from strongroom.errors import IntegrityError, StorageError, StrongroomError
from strongroom.services import wal as walstore
from strongroom.services.runtime import Runtime
from strongroom.services.wal_verify import Gap, verify_wal

log = logging.getLogger("strongroom.wal_heal")


@dataclass
class WalRepair:
    name: str
    location: str
    problem: str
    source: str = ""
    ok: bool = False
    detail: str = ""


@dataclass
class WalHealReport:
    repairs: list[WalRepair] = field(default_factory=list)
    #: Locations that could not even be listed (nothing healed there), and why.
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unreadable and all(r.ok for r in self.repairs)

    def problems(self) -> str:
        failed = [f"{r.name} in {r.location}: {r.detail}" for r in self.repairs if not r.ok]
        return "; ".join([*failed, *(f"{n}: {why}" for n, why in self.unreadable.items())])


def heal_wal(config: Config, *, scope: str | None = None) -> WalHealReport:
    """Close every gap ``wal-verify`` finds, from a good copy in another location."""
    runtime = Runtime.build(config)
    spool = Spool(config.wal.spool_dir) if config.wal.spool_dir else None
    report = WalHealReport()
    for cluster in verify_wal(config, scope=scope).clusters:
        report.unreadable.update(cluster.unreadable)
        for gap in cluster.gaps:
            repair = _heal_one(runtime, cluster.scope, gap)
            report.repairs.append(repair)
            if repair.ok and spool is not None:
                spool.forget_missed(gap.location, gap.name)
    return report


def _heal_one(runtime: Runtime, scope: str, gap: Gap) -> WalRepair:
    repair = WalRepair(gap.name, gap.location, gap.problem)
    target = runtime.location(gap.location)
    keys = walstore.keys_for(runtime, scope, gap.name)
    source = _good_copy(runtime, keys, exclude=gap.location)
    if source is None:
        repair.detail = "no other location holds a copy that verifies"
        return repair
    loc, manifest, stored, document = source
    repair.source = loc.name
    try:
        target.delete(keys.manifest_key)  # never a manifest beside an object being replaced
        target.put_bytes(manifest.object_key, stored)
        target.put_bytes(keys.manifest_key, document)  # manifest last, as wal-push does
        read_copy(target, manifest.object_key, keys.manifest_key, runtime.keyring, kinds=("wal",))
    except StrongroomError as exc:
        repair.detail = f"copy from {loc.name} failed: {exc}"
        log.warning("healing %s in %s: %s", gap.name, gap.location, repair.detail)
        return repair
    repair.ok = True
    repair.detail = f"copied from {loc.name} ({gap.problem}) and verified"
    return repair


def _good_copy(
    runtime: Runtime, keys: walstore.WalKeys, exclude: str
) -> tuple[Location, Manifest, bytes, bytes] | None:
    """The first other copy that passes a full read-back: its manifest, bytes and document."""
    for loc in runtime.locations:
        if loc.name == exclude:
            continue
        try:
            document = loc.get_bytes(keys.manifest_key)
            manifest = Manifest.from_document(document, runtime.keyring)
            stored = loc.get_bytes(manifest.object_key)
            plain = io.BytesIO()
            codec = get_codec(manifest.codec, manifest.codec_level)
            back = read_back(
                io.BytesIO(stored),
                runtime.keyring,
                codec,
                expected_sha256=manifest.sha256,
                sink=plain.write,
            )
            if back.raw_size != manifest.raw_size or hashlib.sha256(
                plain.getvalue()
            ).hexdigest() != walstore.plaintext_sha(manifest):
                raise IntegrityError(f"{loc.name}: {keys.name} decrypts to other bytes")
        except (StorageError, StrongroomError) as exc:
            log.info("no source for %s in %s: %s", keys.name, loc.name, exc)
            continue
        return loc, manifest, stored, document
    return None
