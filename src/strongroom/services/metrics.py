"""``strongroom metrics``: the overview as Prometheus metrics, for a scrape or a textfile.

Built with ``prometheus_client`` (its families and its exposition, never text of our own) in a
registry of its own, so nothing of the process's default registry leaks in. Every timestamp is
seconds since the epoch; a metric whose fact is unknown (no good backup yet, no drill, the
database not answering) is absent rather than zero, so an alert on its age cannot be fooled by a
value that looks like 1970. ``docs/metrics.md`` lists every metric.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from strongroom.catalog import store
from strongroom.config import Config
from strongroom.core.status import RESTORABLE
from strongroom.errors import ConfigError
from strongroom.services.overview import Overview, gather, missing_wal

if TYPE_CHECKING:
    from strongroom.models import Backup, Drill

BY_KIND = ("database", "kind")


def collect(config: Config, *, probe: bool = True) -> CollectorRegistry:
    """A registry holding the metrics of this moment (see :mod:`strongroom.services.overview`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(list(families(gather(config, probe=probe)))))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format Prometheus and node_exporter's textfile collector read."""
    return generate_latest(registry)


def write_textfile(path: str | Path, registry: CollectorRegistry) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new one, never a part.

    A hidden temporary file in the same directory (node_exporter reads ``*.prom`` only) is
    written, fsynced and renamed over ``path``; the directory is fsynced so the rename survives
    a crash. On any failure the temporary file is removed and the old file stays as it was.
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise ConfigError(f"--textfile {target}: directory {folder} does not exist; create it")
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    data = exposition(registry)
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        _fsync_dir(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"--textfile {target}: cannot write it: {exc.strerror or exc}") from None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Snapshot(Collector):
    """Families computed once; a registry collects them as often as it is asked."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return iter(self.metrics)


def families(facts: Overview) -> Iterator[Metric]:
    """Every metric family of ``facts``, in the order ``docs/metrics.md`` lists them."""
    yield from _backup_families(facts)
    yield _copies(facts)
    if facts.locations is not None:
        up = GaugeMetricFamily(
            "strongroom_location_up",
            "1 if the location answered its probe (reachable and writable) in time, else 0",
            labels=["location"],
        )
        for name, result in sorted(facts.locations.items()):
            up.add_metric([name], 1.0 if result.ok else 0.0)
        yield up
    yield from _drill_families(facts)
    yield from _wal_families(facts)
    yield GaugeMetricFamily(
        "strongroom_metrics_collect_seconds",
        "Seconds it took to gather these metrics (catalog, probes and archiver together)",
        value=facts.seconds,
    )


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(BY_KIND))


def _when(backup: Backup) -> datetime:
    return backup.finished_at or backup.created_at


def _kind(backup_type: str) -> str:
    """``full``, ``tenant``, ``base`` or ``wal``: the label drills and commands use too."""
    return store.TYPE_TO_KIND.get(backup_type, backup_type.lower())


def _backup_families(facts: Overview) -> Iterator[Metric]:
    success = _gauge(
        "strongroom_backup_last_success_timestamp_seconds",
        "When the newest restorable backup (COMPLETED, PARTIAL or VERIFIED) finished",
    )
    duration = _gauge(
        "strongroom_backup_last_duration_seconds", "How long the newest restorable backup ran"
    )
    size = _gauge(
        "strongroom_backup_last_size_bytes",
        "Stored (encrypted) size of the newest restorable backup",
    )
    for b in facts.newest_good:
        labels = [b.database, _kind(b.backup_type)]
        success.add_metric(labels, _when(b).timestamp())
        if b.backup_duration_seconds is not None:
            duration.add_metric(labels, b.backup_duration_seconds)
        if b.size_bytes is not None:
            size.add_metric(labels, float(b.size_bytes))
    run_at = _gauge(
        "strongroom_backup_last_run_timestamp_seconds", "When the newest finished backup run ended"
    )
    run_ok = _gauge(
        "strongroom_backup_last_run_success",
        "1 if the newest finished backup run is restorable, 0 if it FAILED or was SKIPPED",
    )
    for b in facts.newest_runs:
        labels = [b.database, _kind(b.backup_type)]
        run_at.add_metric(labels, _when(b).timestamp())
        run_ok.add_metric(labels, 1.0 if b.status in RESTORABLE else 0.0)
    yield from (success, duration, size, run_at, run_ok)


def _copies(facts: Overview) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "strongroom_backup_copies",
        "Copies in the catalog per location and copy status (pruned copies not counted)",
        labels=[*BY_KIND, "location", "status"],
    )
    for database, backup_type, location, status, count in facts.copies:
        family.add_metric([database, _kind(backup_type), location, status], float(count))
    return family


def _drill_families(facts: Overview) -> Iterator[Metric]:
    success = _gauge(
        "strongroom_drill_last_success_timestamp_seconds",
        "When the newest restore drill that passed finished",
    )
    rto = _gauge(
        "strongroom_drill_last_rto_seconds",
        "Measured recovery time of the newest passed drill: its start to a usable database",
    )
    for d in facts.passed_drills:
        labels = [d.database, d.kind]
        success.add_metric(labels, _drill_when(d).timestamp())
        if d.rto_seconds is not None:
            rto.add_metric(labels, d.rto_seconds)
    ok = _gauge(
        "strongroom_drill_last_run_success", "1 if the newest finished restore drill passed, else 0"
    )
    for d in facts.newest_drills:
        ok.add_metric([d.database, d.kind], 1.0 if d.ok else 0.0)
    yield from (success, rto, ok)


def _drill_when(drill: Drill) -> datetime:
    return drill.finished_at or drill.started_at


def _wal_families(facts: Overview) -> Iterator[Metric]:
    archiver = facts.archiver.status if facts.archiver is not None else None
    if facts.archiver is not None and archiver is not None:
        db = [facts.archiver.database]
        last = GaugeMetricFamily(
            "strongroom_wal_last_archived_timestamp_seconds",
            "When the server last archived a WAL segment (pg_stat_archiver.last_archived_time)",
            labels=["database"],
        )
        failed = GaugeMetricFamily(
            "strongroom_wal_last_failed_timestamp_seconds",
            "When archive_command last failed (pg_stat_archiver.last_failed_time)",
            labels=["database"],
        )
        if archiver.last_archived_time is not None:
            last.add_metric(db, archiver.last_archived_time.timestamp())
        if archiver.last_failed_time is not None:
            failed.add_metric(db, archiver.last_failed_time.timestamp())
        archived = CounterMetricFamily(
            "strongroom_wal_archived_segments",
            "WAL segments the server archived (pg_stat_archiver.archived_count)",
            labels=["database"],
        )
        archived.add_metric(db, float(archiver.archived_count))
        failures = CounterMetricFamily(
            "strongroom_wal_archive_failures",
            "Failed archive_command runs (pg_stat_archiver.failed_count)",
            labels=["database"],
        )
        failures.add_metric(db, float(archiver.failed_count))
        yield from (last, failed, archived, failures)
    if facts.wal_verify is not None:
        missing = GaugeMetricFamily(
            "strongroom_wal_missing_segments",
            "WAL segments the newest wal-verify found missing, per location",
            labels=["location"],
        )
        for location, count in sorted(missing_wal(facts.wal_verify).items()):
            missing.add_metric([location], float(count))
        yield missing
        yield GaugeMetricFamily(
            "strongroom_wal_verify_timestamp_seconds",
            "When the newest wal-verify ran",
            value=facts.wal_verify.created_at.timestamp(),
        )


__all__ = ["CONTENT_TYPE_LATEST", "collect", "exposition", "families", "write_textfile"]
