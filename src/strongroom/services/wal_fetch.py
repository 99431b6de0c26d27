"""``wal-fetch NAME DEST``: PostgreSQL's ``restore_command``, one archived WAL file back.

The contract: a non-zero exit up to 125 tells PostgreSQL the file is not in the archive, and
it asks for files that never existed (``.history`` probes, the segment after the last one), so
"not found" must be said only when it is true. Here that means every location answered "no such
file" (``WalNotFound``, exit 1). A location that cannot be reached, or a copy that fails its
checks, sends us to the next location in order; when no location yields a good copy after
``BACKUP_WAL_FETCH_RETRIES`` more rounds, ``WalFetchStop`` (exit 200) makes PostgreSQL stop
recovery instead of ending it early, silently, at an older point.

Every copy is proven whole before a byte reaches ``DEST`` (manifest authenticated, stored
SHA-256, decryption, plaintext SHA-256 and size), and ``DEST`` is written to a temporary name,
fsynced and renamed. After a segment, the next ``BACKUP_WAL_PREFETCH`` segments are fetched and
checked at once into the spool (outside ``pg_wal``), so recovery's next calls are local.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from strongroom.config import Config
from strongroom.core import wal
from strongroom.core.readback import read_copy
from strongroom.core.storage.base import Location
from strongroom.core.wal_serve import serve_prefetched, write_atomically
from strongroom.core.wal_spool import Spool
from strongroom.errors import (
    ConfigError,
    IntegrityError,
    ObjectNotFound,
    StrongroomError,
    WalFetchStop,
    WalNotFound,
)
from strongroom.services import wal as walstore
from strongroom.services.runtime import Runtime
from strongroom.services.wal_cluster import cluster_scope, data_dir_of

log = logging.getLogger("strongroom.wal_fetch")

#: Seconds before the first extra round over the locations; doubled each round, at most 10.
FIRST_BACKOFF = 0.5


@dataclass
class Fetched:
    name: str
    location: str
    size: int
    from_spool: bool = False
    prefetched: list[str] = field(default_factory=list)


def fetch_wal(config: Config, name: str, dest: str) -> Fetched:
    """Write archived ``name`` to ``dest``; ``WalNotFound`` or ``WalFetchStop`` otherwise."""
    try:
        parsed = wal.parse_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    target = Path(dest)
    runtime = Runtime.build(config)
    scope = cluster_scope(data_dir_of(config, target))
    fetcher = _Fetcher(runtime, scope)
    served = fetcher.from_spool(name, target)
    if served is not None:
        result = served
    else:
        data, location, _ = fetcher.fetch(name)
        write_atomically(target, data)
        result = Fetched(name, location, len(data))
    if parsed.kind == "segment" and fetcher.spool is not None:
        fetcher.segment_size = _segment_size(target)
        result.prefetched = fetcher.prefetch(name, config.wal.prefetch)
    return result


class _Fetcher:
    def __init__(self, runtime: Runtime, scope: str) -> None:
        self.rt = runtime
        self.scope = scope
        settings = runtime.config.wal
        self.retries = settings.fetch_retries
        self.spool = Spool(settings.spool_dir) if settings.spool_dir else None
        self.segment_size = wal.DEFAULT_SEGMENT_SIZE

    def from_spool(self, name: str, target: Path) -> Fetched | None:
        """A segment prefetched (and checked) earlier: moved into place, no network."""
        if self.spool is None or name not in self.spool.prefetched():
            return None
        size = serve_prefetched(self.spool, name, target)
        return Fetched(name, "spool", size, from_spool=True)

    def fetch(self, name: str, rounds: int | None = None) -> tuple[bytes, str, int | None]:
        """The plaintext of ``name`` from the first location with a good copy."""
        keys = walstore.keys_for(self.rt, self.scope, name)
        rounds = self.retries + 1 if rounds is None else rounds
        delay = FIRST_BACKOFF
        problems: dict[str, str] = {}
        for attempt in range(rounds):
            # A location named but not configured might hold the file: "not found" is unproven.
            problems = dict(self.rt.unconfigured)
            for loc in self.rt.locations:
                try:
                    data, size = self._one(loc, keys)
                    return data, loc.name, size
                except ObjectNotFound:
                    continue
                except StrongroomError as exc:
                    problems[loc.name] = str(exc)
                    log.warning("%s from %s: %s", name, loc.name, exc)
            if not problems:
                raise WalNotFound(f"{name} is not archived in any location")
            if attempt + 1 < rounds:
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise WalFetchStop(
            f"{name}: no location gave a good copy after {rounds} round(s) ("
            + "; ".join(f"{n}: {p}" for n, p in problems.items())
            + "): recovery stops here rather than end early; fix the location and restart"
        )

    def _one(self, loc: Location, keys: walstore.WalKeys) -> tuple[bytes, int | None]:
        """The checked plaintext of one copy; ``ObjectNotFound`` when this location lacks it."""
        manifest = walstore.read_manifest(self.rt, loc, keys)
        if manifest is None:
            raise ObjectNotFound(f"{loc.name}: {keys.name} not found", loc.name)
        if manifest.id != keys.name or manifest.database != self.scope:
            raise IntegrityError(f"{loc.name}: the manifest of {keys.name} names another file")
        out = io.BytesIO()
        read_copy(
            loc,
            manifest.object_key,
            keys.manifest_key,
            self.rt.keyring,
            sink=out.write,
            kinds=("wal",),
        )
        data = out.getvalue()
        if hashlib.sha256(data).hexdigest() != walstore.plaintext_sha(manifest):
            raise IntegrityError(f"{loc.name}: {keys.name} decrypts to other bytes than archived")
        size = manifest.extra.get("segment_size")
        return data, size if isinstance(size, int) else None

    def prefetch(self, name: str, count: int) -> list[str]:
        """Fetch the next ``count`` segments into the spool at once; stop at the first absent."""
        assert self.spool is not None
        spool = self.spool
        names, following = [], name
        have = set(spool.prefetched())
        for _ in range(count):
            following = wal.next_segment(following, self.segment_size)
            if following not in have:
                names.append(following)
        if not names:
            return []

        def one(segment: str) -> str:
            try:
                data, _, _ = self.fetch(segment, rounds=1)
            except StrongroomError:
                return ""  # not archived yet, or a problem its own call will report
            spool.store_prefetched(segment, data)
            return segment

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            return [n for n in pool.map(one, names) if n]


def _segment_size(segment: Path) -> int:
    """The segment size its page header states (the default when it cannot be read)."""
    try:
        with segment.open("rb") as head:
            return wal.read_page_header(head.read(wal.LONG_HEADER_SIZE)).segment_size
    except (OSError, StrongroomError):
        return wal.DEFAULT_SEGMENT_SIZE


def read_archived(runtime: Runtime, scope: str, name: str) -> bytes:
    """The checked plaintext of archived ``name`` from the first location with a good copy
    (one round: for verify and heal, which report rather than wait)."""
    data, _, _ = _Fetcher(runtime, scope).fetch(name, rounds=1)
    return data
