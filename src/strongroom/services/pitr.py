"""Point-in-time recovery: a base backup extracted into an empty directory, set up to replay.

Works with no catalog at all: the base backups are found from their manifests in storage
(``<system identifier>/base/...manifest.json``, authenticated with the key), as the logical
disaster-recovery path finds dumps, so the package, the key and one location's credentials are
enough. The catalog is not consulted even when it exists: storage is what a restore reads.

The chosen copy streams through the one read-back primitive (``core/readback.py``) straight
into the tar extractor, no temporary file. Every byte written has been authenticated first (the
cipher releases a segment only once its tag checked); the SHA-256 of the stored object and the
decrypted size are known only at the end, so a copy that fails them, or any other check, is
removed from the directory again and the next location's copy is tried. Only once a copy
extracted whole are the recovery settings written (``core/postgres/recovery.py``):
``restore_command`` runs this tool's ``wal-fetch`` with the same config file, the target,
``recovery_target_action = promote``, ``recovery_target_timeline = latest`` and
``recovery.signal``. Starting the server is left to the operator, with the one command
printed: the recovered server should be started by the OS user and service manager that will
run it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from strongroom.config import CONFIG_FILE_VAR, Config
from strongroom.core import wal
from strongroom.core.manifest import MANIFEST_SUFFIX, Manifest
from strongroom.core.postgres import ConnInfo, basebackup, recovery
from strongroom.core.postgres.binaries import find_binary
from strongroom.core.postgres.recovery import RecoveryTarget
from strongroom.core.readback import read_copy
from strongroom.core.storage.base import Location
from strongroom.core.tarstream import Extract, TarStream
from strongroom.errors import (
    BackupNotFound,
    ConfigError,
    RestoreError,
    StrongroomError,
    TargetNotEmpty,
    WrongKeyError,
)
from strongroom.services.runtime import Runtime

log = logging.getLogger("strongroom.pitr")


@dataclass
class BaseCandidate:
    """One base backup found in storage, with every location that holds its manifest."""

    manifest: Manifest
    copies: list[tuple[Location, str]] = field(default_factory=list)

    @property
    def stop_lsn(self) -> int:
        return wal.parse_lsn(str(self.manifest.extra.get("stop_lsn", "0/0")))


@dataclass
class PitrReport:
    """What ``pitr-restore`` did, and how to start the result."""

    id: str
    source: str
    pgdata: str
    target: str
    restore_command: str
    start_command: list[str]
    system_identifier: str
    timeline: int
    start_lsn: str
    stop_lsn: str
    backup_finished_at: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)


def pitr_restore(
    config: Config,
    pgdata: str,
    target: RecoveryTarget,
    *,
    tool: list[str],
    backup_id: str | None = None,
) -> PitrReport:
    """Extract the right base backup into ``pgdata`` and set it up to recover to ``target``.

    ``tool`` is the argv that runs this strongroom with the same configuration (``restore_command``
    appends ``wal-fetch %f %p``).
    """
    started = time.monotonic()
    runtime = Runtime.build(config)
    refuse_used(Path(pgdata))  # before anything is read: a used directory is one line
    chosen = choose_backup(find_base_backups(runtime), target, backup_id)
    directory = prepare_directory(Path(pgdata))
    try:
        source, extract, skipped = _extract_first_intact(runtime, chosen, directory)
        command = recovery.restore_command(tool)
        recovery.write_recovery(directory, recovery.recovery_settings(command, target))
    except BaseException:
        _empty(directory)
        raise
    m = chosen.manifest
    return PitrReport(
        id=m.id,
        source=source,
        pgdata=str(directory),
        target=target.describe(),
        restore_command=command,
        start_command=recovery.start_command(_server_bindir(config, m), directory),
        system_identifier=str(m.extra.get("system_identifier", m.database)),
        timeline=int(m.extra.get("timeline", 0)),
        start_lsn=str(m.extra.get("start_lsn", "")),
        stop_lsn=str(m.extra.get("stop_lsn", "")),
        backup_finished_at=m.to_dict()["finished_at"],
        files=extract.files,
        bytes=extract.bytes,
        seconds=time.monotonic() - started,
        skipped=skipped,
    )


def strongroom_command(config_file: str | None, program_path: str | None = None) -> list[str]:
    """The argv that runs this strongroom with the same config file (for ``restore_command``).

    ``program_path`` when given (the path as the server's OS user sees it), else the running
    ``strongroom`` executable when that is what runs, else this interpreter with
    ``-m strongroom``; then ``--config`` with the absolute path of the config file in use
    (``config_file``, else ``$STRONGROOM_CONFIG``), when there is one.
    """
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program_path:
        argv = [str(Path(program_path).expanduser().absolute())]
    elif program is not None and program.name == "strongroom" and program.exists():
        argv = [str(program.absolute())]
    else:
        argv = [sys.executable, "-m", "strongroom"]
    path = config_file or os.environ.get(CONFIG_FILE_VAR, "").strip()
    if path:
        argv += ["--config", str(Path(path).expanduser().absolute())]
    return argv


def refuse_used(path: Path) -> None:
    """``TargetNotEmpty`` for a file, or a directory holding anything."""
    path = path.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise TargetNotEmpty(f"{path} exists and is not a directory: give a new or empty one")
    if path.is_dir() and any(path.iterdir()):
        raise TargetNotEmpty(
            f"{path} is not empty: pitr-restore writes only into a new or empty directory"
        )


def prepare_directory(path: Path) -> Path:
    """A missing directory is created 0700; an existing one must be empty (then set 0700)."""
    path = path.expanduser().absolute()
    refuse_used(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    return path


def _empty(directory: Path) -> None:
    """Remove everything a failed run put into ``directory`` (it was empty before)."""
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def find_base_backups(runtime: Runtime) -> list[BaseCandidate]:
    """Every authenticated base backup manifest in any location, oldest first."""
    found: dict[str, BaseCandidate] = {}
    for loc in runtime.locations:
        try:
            keys = [i.key for i in loc.list("") if _is_base_manifest(i.key)]
        except StrongroomError as exc:
            log.warning("cannot list %s: %s", loc.name, exc)
            continue
        for key in keys:
            try:
                manifest = Manifest.from_document(loc.get_bytes(key), runtime.keyring)
            except WrongKeyError:
                raise
            except StrongroomError as exc:
                log.warning("skipping manifest %s in %s: %s", key, loc.name, exc)
                continue
            if manifest.kind == "base":
                entry = found.setdefault(manifest.id, BaseCandidate(manifest))
                entry.copies.append((loc, key))
    return sorted(found.values(), key=lambda c: (c.manifest.finished_at, c.manifest.id))


def _is_base_manifest(key: str) -> bool:
    """``<scope>/base/YYYY/MM/DD/<id>.manifest.json``: read only these, not every WAL file's."""
    return key.endswith(MANIFEST_SUFFIX) and key.split("/")[-5:-4] == ["base"]


def choose_backup(
    candidates: list[BaseCandidate], target: RecoveryTarget, backup_id: str | None
) -> BaseCandidate:
    """``backup_id``, else the newest base backup that ended before the target.

    For an LSN target that is the highest stop LSN at or below it (replay from a base backup
    can start only once its stop LSN is reached); for a time, the latest end before it.
    """
    if backup_id:
        for c in candidates:
            if c.manifest.id == backup_id:
                return _reaching(c, target)
        raise BackupNotFound(f"base backup {backup_id} not found in any location's manifests")
    if not candidates:
        raise BackupNotFound(
            "no base backup found in any location: run `strongroom base-backup` first"
        )
    scopes = sorted({c.manifest.database for c in candidates})
    if len(scopes) > 1:
        raise ConfigError(
            f"base backups of {len(scopes)} clusters are stored (system identifiers "
            f"{', '.join(scopes)}): pick one with --backup ID"
        )
    if target.kind == "lsn":  # the WAL's order, not the clock's: the highest stop LSN wins
        candidates = sorted(candidates, key=lambda c: (c.stop_lsn, c.manifest.finished_at))
    usable = [c for c in candidates if _before(c, target)]
    if not usable:
        oldest = candidates[0].manifest
        ended = (
            f"stopped at LSN {oldest.extra.get('stop_lsn', '?')}"
            if target.kind == "lsn"
            else f"ended {oldest.to_dict()['finished_at']}"
        )
        raise BackupNotFound(
            f"no base backup ended before {target.describe()} (the oldest, {oldest.id}, "
            f"{ended}): pick a later target"
        )
    return usable[-1]


def _reaching(candidate: BaseCandidate, target: RecoveryTarget) -> BaseCandidate:
    """The given backup, unless it ended after the target (replay cannot go back in time)."""
    if not _before(candidate, target):
        m = candidate.manifest
        raise ConfigError(
            f"base backup {m.id} ended at {m.to_dict()['finished_at']} "
            f"(LSN {m.extra.get('stop_lsn', '?')}), after {target.describe()}: "
            "pick an older base backup or a later target"
        )
    return candidate


def _before(candidate: BaseCandidate, target: RecoveryTarget) -> bool:
    """Whether recovery from this backup can reach ``target`` (its end precedes it)."""
    if target.kind == "time":
        return candidate.manifest.finished_at < parse_time(target.value)
    if target.kind == "lsn":
        return candidate.stop_lsn <= wal.parse_lsn(target.value)
    return True  # a name's position is known only to the WAL; latest: the newest


def parse_time(value: str) -> datetime:
    """An ISO-8601 time with its zone; ``ConfigError`` otherwise."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ConfigError(
            f"--target-time {value!r} is not an ISO-8601 time with a zone "
            "(e.g. 2026-12-02T04:05:06+00:00)"
        )
    return parsed


def _extract_first_intact(
    runtime: Runtime, chosen: BaseCandidate, directory: Path
) -> tuple[str, Extract, list[str]]:
    """Stream each copy in location order into the directory until one checks out whole."""
    skipped: list[str] = []
    for loc, manifest_key in chosen.copies:
        extract = Extract(directory)
        tar = TarStream(extract)
        try:
            read_copy(
                loc,
                chosen.manifest.object_key,
                manifest_key,
                runtime.keyring,
                sink=tar.feed,
                kinds=("base",),
            )
            tar.close()
            return loc.name, extract, skipped
        except (StrongroomError, OSError) as exc:
            extract.abort()
            _empty(directory)
            if isinstance(exc, OSError):
                raise RestoreError(
                    f"cannot write into {directory}: {exc.strerror or exc}"
                ) from None
            skipped.append(f"{loc.name}: {exc}")
            log.warning("copy in %s unusable, trying the next: %s", loc.name, exc)
    raise RestoreError(f"no intact copy of base backup {chosen.manifest.id} ({'; '.join(skipped)})")


def _server_bindir(config: Config, manifest: Manifest) -> str:
    """The bin directory of the backup's major version (pg_ctl must match the data)."""
    major = int(manifest.extra.get("server_version_num", 0)) // 10000
    versioned = Path("/usr/lib/postgresql") / str(major) / "bin"
    if config.pg_bindir:
        return config.pg_bindir
    if (versioned / "pg_ctl").exists():
        return str(versioned)
    return os.path.dirname(find_binary("pg_ctl"))


@dataclass
class RestorePoint:
    """A named restore point: where it is in the WAL, and the segment that holds it."""

    name: str
    lsn: str
    wal_file: str


#: PostgreSQL's limit on a restore point's name (MAXFNAMELEN - 1).
MAX_POINT_NAME = 63


def create_restore_point(config: Config, name: str) -> RestorePoint:
    """``pg_create_restore_point(name)`` then ``pg_switch_wal()``.

    The switch hands the segment holding the point to ``archive_command`` now instead of after
    ``archive_timeout``: a restore to the name can begin as soon as this returns.
    """
    if not name.strip() or len(name.encode()) > MAX_POINT_NAME:
        raise ConfigError(
            f"a restore point name must be 1 to {MAX_POINT_NAME} bytes, got {len(name.encode())}"
        )
    lsn, segment = basebackup.create_restore_point(
        ConnInfo.parse(config.database_url), name, switch=True
    )
    return RestorePoint(name, lsn, segment)
