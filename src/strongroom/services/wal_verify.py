"""``wal-verify``: is every WAL segment a restore would need present and authentic everywhere?

Gaps are found at restore time otherwise, when it is too late (WAL-G's ``wal-verify`` exists
for the same reason). For each cluster in the archive and each timeline, every segment from the
first one needed to the newest archived one must be in every location with its manifest, the
manifest must authenticate and name that file, and the object must have the manifest's size
(``deep`` re-reads and checks every copy in full instead):

- the first needed segment in a location is the start of the oldest base backup kept *there*
  (``<id>/base/...`` manifests of kind ``base``); with none yet, the oldest segment archived
  anywhere; a timeline after the first starts where its ``.history`` file says it branched;
- a timeline's ``.history`` file must be in every location that needs its segments.

Needs no catalog and no database: storage and the key are enough, as in a disaster. When a
catalog is at hand the CLI records the result as a ``wal_verify`` event (metrics read it).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from strongroom.config import Config
from strongroom.core import wal
from strongroom.core.manifest import Manifest
from strongroom.core.readback import read_copy
from strongroom.core.storage.base import Location
from strongroom.errors import StrongroomError
from strongroom.services import wal as walstore
from strongroom.services.runtime import Runtime
from strongroom.services.wal_cluster import cluster_scope, data_dir_of
from strongroom.services.wal_fetch import read_archived

log = logging.getLogger("strongroom.wal_verify")

#: Manifests read at once per location.
PARALLEL_READS = 8
MISSING = "missing"


@dataclass(frozen=True)
class Gap:
    """A file a restore needs that ``location`` lacks (``missing``) or holds damaged."""

    name: str
    location: str
    problem: str


@dataclass
class ClusterCheck:
    """One cluster's archive, checked in every location."""

    scope: str
    locations: list[str]
    timelines: list[int] = field(default_factory=list)
    newest: str = ""
    #: Per location: the first segment needed there (``""``: nothing archived).
    first_needed: dict[str, str] = field(default_factory=dict)
    #: Per location: files checked.
    checked: dict[str, int] = field(default_factory=dict)
    base_backups: dict[str, int] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    #: Locations whose listing or base backups could not be read, and why.
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> dict[str, int]:
        """Gaps per location, every location listed (0 when complete)."""
        counts = dict.fromkeys(self.locations, 0)
        for gap in self.gaps:
            counts[gap.location] = counts.get(gap.location, 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        return not self.gaps and not self.unreadable


@dataclass
class WalVerifyReport:
    clusters: list[ClusterCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.clusters)

    def event_data(self) -> dict[str, object]:
        """What the catalog's ``wal_verify`` event holds (summed over clusters)."""
        missing: dict[str, int] = {}
        timelines: set[int] = set()
        newest = ""
        for c in self.clusters:
            for loc, count in c.missing.items():
                missing[loc] = missing.get(loc, 0) + count
            for loc in c.unreadable:
                missing.setdefault(loc, 0)
            timelines.update(c.timelines)
            newest = max(newest, c.newest)
        return {"missing": missing, "newest": newest, "timelines": sorted(timelines)}


def verify_wal(config: Config, *, scope: str | None = None, deep: bool = False) -> WalVerifyReport:
    """Check the archive of ``scope`` (default: the configured cluster, else every one found)."""
    runtime = Runtime.build(config)
    scopes = [scope] if scope else _scopes(runtime)
    report = WalVerifyReport()
    for one in scopes:
        report.clusters.append(_ClusterVerify(runtime, one, deep).run())
    return report


def _scopes(runtime: Runtime) -> list[str]:
    if runtime.config.wal.pgdata:
        return [cluster_scope(data_dir_of(runtime.config))]
    return walstore.discover_scopes(runtime.locations)


class _ClusterVerify:
    def __init__(self, runtime: Runtime, scope: str, deep: bool) -> None:
        self.rt = runtime
        self.scope = scope
        self.deep = deep
        self.check = ClusterCheck(scope, [loc.name for loc in runtime.locations])
        self.listings: dict[str, dict[str, walstore.Archived]] = {}
        self.bases: dict[str, list[Manifest]] = {}

    def run(self) -> ClusterCheck:
        for loc in self.rt.locations:
            try:
                self.listings[loc.name] = walstore.list_archive(loc, self.scope)
                self.bases[loc.name] = walstore.base_manifests(self.rt, loc, self.scope)
            except StrongroomError as exc:
                self.check.unreadable[loc.name] = str(exc)
        self.check.base_backups = {n: len(b) for n, b in self.bases.items()}
        names = {n for listing in self.listings.values() for n in listing}
        segments = sorted(n for n in names if wal.parse_name(n).kind == "segment")
        if not segments:
            return self.check
        self.size = self._segment_size()
        by_timeline = _by_timeline(segments, self.size)
        self.check.timelines = sorted(by_timeline)
        top = max(by_timeline)
        self.check.newest = wal.segment_name(top, max(by_timeline[top]), self.size)
        branch = {t: self._branch_point(t) for t in by_timeline}
        for loc in self.rt.locations:
            if loc.name in self.listings:
                self._verify_location(loc, by_timeline, branch)
        return self.check

    def _segment_size(self) -> int:
        """From a base backup's manifest, else a segment's, else PostgreSQL's default."""
        bases = [b for group in self.bases.values() for b in group]
        size = walstore.base_segment_size(bases)
        if size:
            return size
        for name, listing in self.listings.items():
            for entry in listing.values():
                if entry.complete and wal.parse_name(entry.name).kind == "segment":
                    loc = self.rt.location(name)
                    keys = walstore.keys_for(self.rt, self.scope, entry.name)
                    try:
                        manifest = walstore.read_manifest(self.rt, loc, keys)
                    except StrongroomError:
                        continue
                    value = manifest.extra.get("segment_size") if manifest else None
                    if isinstance(value, int) and value in wal.SEGMENT_SIZES:
                        return value
        return wal.DEFAULT_SEGMENT_SIZE

    def _branch_point(self, timeline: int) -> int:
        """The first segment of ``timeline``: where its history says it branched (else 0)."""
        if timeline == 1:
            return 0
        try:
            text = read_archived(self.rt, self.scope, f"{timeline:08X}.history")
        except StrongroomError:
            return 0  # a missing history file is reported per location as a gap
        switches = wal.parse_history(text.decode("utf-8", "replace"))
        return switches[-1].lsn // self.size if switches else 0

    def _verify_location(
        self, loc: Location, by_timeline: dict[int, list[int]], branch: dict[int, int]
    ) -> None:
        listing = self.listings[loc.name]
        floor = self._floor(loc.name)
        oldest = min(n for numbers in by_timeline.values() for n in numbers)
        needed: list[str] = []
        for timeline, numbers in sorted(by_timeline.items()):
            low = max(floor if floor is not None else oldest, branch[timeline])
            high = max(numbers)
            if high < low:
                continue
            if timeline > 1:
                needed.append(f"{timeline:08X}.history")
            needed += [wal.segment_name(timeline, n, self.size) for n in range(low, high + 1)]
        segments = [n for n in needed if not n.endswith(".history")]
        self.check.first_needed[loc.name] = segments[0] if segments else ""
        present: list[walstore.Archived] = []
        for name in needed:
            entry = listing.get(name)
            if entry is None or not entry.complete:
                self.check.gaps.append(Gap(name, loc.name, self._absence(entry)))
            else:
                present.append(entry)
        with ThreadPoolExecutor(max_workers=PARALLEL_READS) as pool:
            problems = list(pool.map(lambda e: self._authentic(loc, e), present))
        for entry, problem in zip(present, problems, strict=True):
            if problem:
                self.check.gaps.append(Gap(entry.name, loc.name, problem))
        self.check.checked[loc.name] = len(needed)

    def _floor(self, location: str) -> int | None:
        """The first segment the oldest base backup kept in ``location`` needs."""
        starts = [walstore.base_start(b, self.size) for b in self.bases.get(location, [])]
        known = [s for s in starts if s is not None]
        return min(known) if known else None

    @staticmethod
    def _absence(entry: walstore.Archived | None) -> str:
        if entry is None:
            return MISSING
        return f"{MISSING}: {'no manifest' if not entry.has_manifest else 'no object'}"

    def _authentic(self, loc: Location, entry: walstore.Archived) -> str:
        """``""`` when the copy checks out, else what is wrong with it."""
        keys = walstore.WalKeys(entry.name, entry.object_key)
        try:
            if self.deep:
                manifest, _ = read_copy(
                    loc, entry.object_key, keys.manifest_key, self.rt.keyring, kinds=("wal",)
                )
            else:
                manifest = walstore.read_manifest(self.rt, loc, keys) or _absent(entry)
            if manifest.id != entry.name or manifest.database != self.scope:
                return "corrupt: its manifest names another file"
            if manifest.object_key != entry.object_key:
                return "corrupt: its manifest names another object"
            if not self.deep and manifest.stored_size != entry.object_size:
                return (
                    f"corrupt: {entry.object_size} bytes stored, the manifest says "
                    f"{manifest.stored_size}"
                )
        except StrongroomError as exc:
            return f"unreadable or corrupt: {exc}"
        return ""


def _absent(entry: walstore.Archived) -> Manifest:
    raise StrongroomError(f"{entry.name}: the manifest vanished while checking")


def _by_timeline(segments: list[str], size: int) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for name in segments:
        try:
            number = wal.segment_number(name, size)
        except ValueError:
            continue
        found.setdefault(int(name[:8], 16), []).append(number)
    return found
