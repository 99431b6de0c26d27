"""What WAL push, fetch, verify, prune and heal share: where a file lives and how it is sealed.

A WAL file is stored like every other object (compress -> encrypt -> SHA-256, through
:func:`strongroom.core.pipeline.stream_to_locations`) under
``<system identifier>/wal/<timeline>/<name>.wal[.zst].enc`` with its authenticated manifest
(kind ``wal``) beside it, written last: a manifest in a location means the file is durable
there. The manifest's ``extra`` holds the plaintext SHA-256 (so a re-push can be compared), the
system identifier, the timeline and the segment size.

None of this needs the catalog: ``archive_command`` runs as the server's OS user with only the
config file, so these modules import no Django.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime

from strongroom import __version__
from strongroom.core import wal
from strongroom.core.crypto import CIPHER_NAME
from strongroom.core.manifest import (
    MANIFEST_SUFFIX,
    Manifest,
    key_segment,
    manifest_key_for,
    wal_key_for,
)
from strongroom.core.pipeline import StreamResult, stream_to_locations
from strongroom.core.storage.base import Location, ObjectWriter
from strongroom.errors import ObjectNotFound
from strongroom.services.runtime import Runtime


@dataclass(frozen=True)
class WalKeys:
    """One WAL file's object and manifest keys in every location."""

    name: str
    key: str

    @property
    def manifest_key(self) -> str:
        return manifest_key_for(self.key)


def keys_for(runtime: Runtime, scope: str, name: str) -> WalKeys:
    return WalKeys(name, wal_key_for(scope, name, runtime.codec.extension))


class _Buffer(ObjectWriter):
    """The sealed object, in memory: a WAL file is at most one segment (16 MB by default)."""

    def __init__(self) -> None:
        self.data = io.BytesIO()

    def write(self, data: bytes, /) -> int:
        return self.data.write(data)

    def commit(self) -> None:
        return None

    def abort(self) -> None:
        return None


def seal(runtime: Runtime, plaintext: bytes) -> tuple[bytes, StreamResult]:
    """Compress, encrypt and hash ``plaintext`` once, through the pipeline every object takes."""
    buffer = _Buffer()
    result = stream_to_locations(
        io.BytesIO(plaintext), runtime.codec, runtime.keyring, {"sealed": buffer}
    )
    failed = result.outcomes["sealed"].error
    if failed is not None:
        raise failed
    return buffer.data.getvalue(), result


def wal_manifest(
    runtime: Runtime,
    keys: WalKeys,
    result: StreamResult,
    *,
    scope: str,
    plaintext_sha256: str,
    segment_size: int | None,
    started_at: datetime,
) -> Manifest:
    """The manifest of one WAL file (kind ``wal``), written last beside each copy."""
    parsed = wal.parse_name(keys.name)
    return Manifest(
        id=keys.name,
        kind="wal",
        database=scope,
        server_version="",
        pg_dump_version="",
        started_at=started_at,
        finished_at=datetime.now(UTC),
        raw_size=result.raw_size,
        compressed_size=result.compressed_size,
        stored_size=result.stored_size,
        sha256=result.sha256,
        codec=runtime.codec.name,
        codec_level=runtime.codec.level,
        cipher=CIPHER_NAME,
        key_id=runtime.keyring.primary_id,
        object_key=keys.key,
        tool_version=__version__,
        extra={
            "plaintext_sha256": plaintext_sha256,
            "system_identifier": scope,
            "timeline": parsed.timeline,
            "file_name": keys.name,
            "segment_size": segment_size,
        },
    )


def read_manifest(runtime: Runtime, location: Location, keys: WalKeys) -> Manifest | None:
    """The authenticated manifest of ``keys`` in ``location``, ``None`` when it has none."""
    try:
        document = location.get_bytes(keys.manifest_key)
    except ObjectNotFound:
        return None
    return Manifest.from_document(document, runtime.keyring)


def plaintext_sha(manifest: Manifest) -> str:
    return str(manifest.extra.get("plaintext_sha256", ""))


@dataclass
class Archived:
    """One WAL file as a location's listing shows it: its object and whether its manifest is."""

    name: str
    object_key: str = ""
    object_size: int | None = None
    has_manifest: bool = False

    @property
    def complete(self) -> bool:
        return self.has_manifest and self.object_size is not None


def wal_prefix(scope: str) -> str:
    return f"{key_segment(scope)}/wal/"


def manifest_key(scope: str, name: str) -> str:
    """Where the manifest of WAL file ``name`` is, whatever codec its object was stored with."""
    return f"{wal_prefix(scope)}{name[:8]}/{name}{MANIFEST_SUFFIX}"


def list_archive(location: Location, scope: str) -> dict[str, Archived]:
    """Every WAL file of ``scope`` in ``location``, by name (objects and manifests paired)."""
    found: dict[str, Archived] = {}
    for info in location.list(wal_prefix(scope)):
        file = info.key.rsplit("/", 1)[-1]
        if file.endswith(MANIFEST_SUFFIX):
            name = file[: -len(MANIFEST_SUFFIX)]
            found.setdefault(name, Archived(name)).has_manifest = True
            continue
        name, dot, _ = file.partition(".wal")
        if not dot:
            continue
        entry = found.setdefault(name, Archived(name))
        entry.object_key, entry.object_size = info.key, info.size
    return {name: entry for name, entry in found.items() if _is_wal_name(name)}


def _is_wal_name(name: str) -> bool:
    try:
        wal.parse_name(name)
    except ValueError:
        return False
    return True


def base_manifests(runtime: Runtime, location: Location, scope: str) -> list[Manifest]:
    """The base backups of ``scope`` kept in ``location`` (manifests authenticated).

    A manifest that does not authenticate raises: the WAL a damaged base backup needs must not
    be judged (or pruned) on a guess.
    """
    bases: list[Manifest] = []
    for info in location.list(f"{key_segment(scope)}/base/"):
        if info.key.endswith(MANIFEST_SUFFIX):
            manifest = Manifest.from_document(location.get_bytes(info.key), runtime.keyring)
            if manifest.kind == "base":
                bases.append(manifest)
    return bases


def base_start(manifest: Manifest, segment_size: int) -> int | None:
    """The number of a base backup's first WAL segment (``None`` if its manifest lacks it)."""
    start = manifest.extra.get("start_wal")
    if isinstance(start, str):
        with contextlib.suppress(ValueError):
            return wal.segment_number(start, segment_size)
    lsn = manifest.extra.get("start_lsn")
    if isinstance(lsn, str):
        with contextlib.suppress(ValueError):
            return wal.parse_lsn(lsn) // segment_size
    return None


def base_segment_size(bases: list[Manifest]) -> int | None:
    for manifest in bases:
        size = manifest.extra.get("wal_segment_size")
        if isinstance(size, int) and size in wal.SEGMENT_SIZES:
            return size
    return None


def discover_scopes(locations: list[Location]) -> list[str]:
    """The clusters whose WAL the archive holds (top-level ``<id>/wal/`` prefixes).

    Only the required locations are listed (every location when none is): ``wal-push``
    succeeds only once a file is in each of them, so they know every cluster, and an optional
    location that is down does not hold up the search.
    """
    scopes: set[str] = set()
    required = [loc for loc in locations if loc.required]
    for loc in required or locations:
        for info in loc.list(""):
            head, _, rest = info.key.partition("/")
            if rest.startswith("wal/") and head.isdigit():
                scopes.add(head)
    return sorted(scopes)
