"""Local-disk location (kind ``local``): atomic, durable writes behind the common interface.

A write goes to ``<key>.partial-<random>`` in the final directory, is fsynced, renamed over the
final name and the directory is fsynced (Barman ``infofile.py``'s tmp -> rename -> fsync), so a
reader or a crash sees either nothing or the whole object. Partials are never listed; the ones a
dead process left behind are removed by ``cleanup_incomplete``.

The root directory must exist (unless ``create`` is set): a missing backup mount must fail
loudly, not quietly fill the root filesystem. Directories below it are created 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from strongroom.core.storage.base import (
    CheckResult,
    Location,
    ObjectInfo,
    ObjectWriter,
    register_backend,
)
from strongroom.core.storage.settings import LocationType, Setting, days, register_location
from strongroom.core.streams import Reader
from strongroom.errors import ConfigError, LocationUnavailable, ObjectNotFound, StorageError

_PARTIAL = re.compile(r"\.partial-[0-9a-f]{16}\Z")
_PROBE = ".strongroom-probe-"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _not_a_directory(path: Path) -> str:
    """Name the component that is in the way: the path itself, or the file it lies under."""
    for component in (*reversed(path.parents), path):
        if component.exists() and not component.is_dir():
            if component == path:
                break
            return f"{path} lies under {component}, which is a file, not a directory"
    return f"{path} is not a directory"


def _os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(count: int) -> str:
    """Bytes for an operator: ``512 bytes``, ``12.3 MB``, ``1.2 GB`` (decimal units)."""
    if count < 1000:
        return f"{count} bytes"
    value = count / 1000.0
    for unit in ("kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000.0
    return f"{value:.1f} TB"


def _check_key(key: str) -> list[str]:
    """The key's path segments; refuse anything that could escape the root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}: use non-empty '/'-separated names")
    if _PARTIAL.search(parts[-1]) or parts[-1].startswith(_PROBE):
        raise ValueError(f"invalid object key {key!r}: reserved name")
    return parts


class _LocalWriter(ObjectWriter):
    """Writes ``<final>.partial-<random>``; ``commit`` fsyncs and renames it into place."""

    def __init__(self, location: LocalLocation, final: Path) -> None:
        self._location = location
        self._final = final
        self._partial = final.with_name(f"{final.name}.partial-{secrets.token_hex(8)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(self._partial, flags, _FILE_MODE)
        except OSError as exc:
            raise location.unavailable(exc, final.parent) from exc
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self._done = False
        self._written = 0

    def write(self, data: bytes, /) -> int:
        if self._file is None:
            raise StorageError(f"{self._location.name}: write after commit/abort", self._name)
        try:
            self._file.write(data)
            self._written += len(data)
        except OSError as exc:
            self.abort()
            raise self._failed("writing", exc) from exc
        return len(data)

    def commit(self) -> None:
        if self._file is None:
            if self._done:
                return
            raise StorageError(f"{self._location.name}: commit after abort", self._name)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._partial, self._final)
            self._done = True
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise self._failed("committing", exc) from exc

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if not self._done:
            with contextlib.suppress(FileNotFoundError):
                self._partial.unlink()

    @property
    def _name(self) -> str:
        return self._location.name

    def _failed(self, doing: str, exc: OSError) -> StorageError:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return self._location.unavailable(exc, self._final.parent)
        reason = exc.strerror or str(exc)
        after = f" after {_size(self._written)}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageError(
                f"{self._name}: no space left on device at {self._final.parent}{after} "
                f"({reason}): free space there or point BACKUP_LOCAL_PATH at a larger disk",
                self._name,
            )
        return StorageError(
            f"local location '{self._name}': {doing} {self._final} failed{after} ({reason})",
            self._name,
        )


@register_backend
class LocalLocation(Location):
    """Backup objects as files under ``path`` (plus the location prefix, if any)."""

    kind = "local"

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        required: bool = False,
        prefix: str = "",
        create: bool = False,
        setting: str = "BACKUP_LOCAL_PATH",
    ) -> None:
        super().__init__(name, required=required, prefix=prefix)
        self.path = Path(path).expanduser()
        self.create = create
        self.setting = setting

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> LocalLocation:
        known = {"path", "prefix", "create", "setting"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"local location '{name}': unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        path = options.get("path")
        if not path:
            raise ConfigError(f"local location '{name}' has no path: set BACKUP_LOCAL_PATH")
        return cls(
            name,
            str(path),
            prefix=str(options.get("prefix") or ""),
            create=bool(options.get("create", False)),
            setting=str(options.get("setting") or "BACKUP_LOCAL_PATH"),
        )

    def describe(self) -> str:
        return str(self.root)

    @property
    def root(self) -> Path:
        return self.path / self.prefix if self.prefix else self.path

    # -- errors ----------------------------------------------------------------------------

    def unavailable(self, exc: OSError, path: Path | None = None) -> LocationUnavailable:
        """One line naming the path, the OS user and the fix."""
        where = path or self.path
        reason = exc.strerror or type(exc).__name__
        user = _os_user()
        if exc.errno == errno.ENOENT:
            what = f"{where} does not exist"
        elif exc.errno == errno.ENOTDIR:
            what = _not_a_directory(Path(os.fsdecode(exc.filename)) if exc.filename else where)
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            what = f"{where} is not writable by user {user}"
        else:
            what = f"{where} is not usable by user {user}"
        return LocationUnavailable(
            f"local location '{self.name}': {what} ({reason}): create it as a directory and give "
            f"user {user} write access, or set {self.setting}",
            location=self.name,
        )

    def _ensure_root(self) -> None:
        """The configured path must be an existing directory (or be creatable, if allowed)."""
        try:
            if self.create:
                self._make_dirs(self.path, Path(self.path.anchor))
            if not self.path.is_dir():
                os.listdir(self.path)  # raises the precise OSError (ENOENT, ENOTDIR, EACCES)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        except OSError as exc:
            raise self.unavailable(exc, self.path) from exc

    @staticmethod
    def _make_dirs(target: Path, top: Path) -> None:
        """``mkdir -p`` below ``top`` with mode 0700 on every new level, parents fsynced."""
        missing: list[Path] = []
        current = target
        while current != top and not current.is_dir():
            # asked again: a concurrent writer may have made it since the is_dir() above
            if current.exists() and not current.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target))
            missing.append(current)
            current = current.parent
        for directory in reversed(missing):
            try:
                os.mkdir(directory, _DIR_MODE)
            except FileExistsError:
                if not directory.is_dir():
                    raise NotADirectoryError(
                        errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target)
                    ) from None
                continue  # a concurrent writer made it
            _fsync_dir(directory.parent)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key))

    # -- primitives ------------------------------------------------------------------------

    def open_writer(self, key: str) -> ObjectWriter:
        final = self._path(key)
        self._ensure_root()
        try:
            self._make_dirs(final.parent, self.path)
        except OSError as exc:
            raise self.unavailable(exc, final.parent) from exc
        return _LocalWriter(self, final)

    def open_reader(self, key: str) -> Reader:
        path = self._path(key)
        try:
            return open(path, "rb")  # the caller closes the reader
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as exc:
            raise self.unavailable(exc, path) from exc

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as exc:
            raise self.unavailable(exc, path) from exc
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def _not_found(self, key: str) -> StorageError:
        self._ensure_root()  # a missing root is an unavailable location, not a missing object
        return ObjectNotFound(
            f"local location '{self.name}': {key} not found in {self.root}", self.name
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._ensure_root()
        for key, path in self._walk(prefix):
            if _PARTIAL.search(path.name) or path.name.startswith(_PROBE):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # deleted while we walked
            yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def _walk(self, prefix: str) -> Iterator[tuple[str, Path]]:
        """Every regular file whose key starts with ``prefix``, in key order."""
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*head.split("/")) if head else self.root
        base = f"{head}/" if head else ""
        yield from self._scan(start, base, prefix)

    def _scan(self, directory: Path, base: str, prefix: str) -> Iterator[tuple[str, Path]]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self.unavailable(exc, directory) from exc
        for entry in entries:
            key = base + entry.name
            if entry.is_dir(follow_symlinks=False):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._scan(Path(entry.path), key + "/", prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                yield key, Path(entry.path)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            self._ensure_root()
            return
        except OSError as exc:
            raise self.unavailable(exc, path) from exc
        with contextlib.suppress(OSError):
            _fsync_dir(path.parent)

    def check(self) -> CheckResult:
        try:
            self._ensure_root()
        except LocationUnavailable as exc:
            return CheckResult(False, False, str(exc))
        probe = self.path / f"{_PROBE}{secrets.token_hex(8)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):
                probe.unlink()
            return CheckResult(True, False, str(self.unavailable(exc, self.path)))
        return CheckResult(True, True, f"local location '{self.name}': {self.root} is writable")

    def cleanup_incomplete(self, prefix: str = "", initiated_before: datetime | None = None) -> int:
        """Remove ``*.partial-*`` files under ``prefix`` (only older ones if a time is given)."""
        self._ensure_root()
        cutoff = initiated_before.timestamp() if initiated_before is not None else None
        removed = 0
        for _key, path in self._walk(prefix):
            if not _PARTIAL.search(path.name):
                continue
            try:
                if cutoff is not None and path.stat().st_mtime >= cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self.unavailable(exc, path.parent) from exc
            removed += 1
        return removed


DEFAULT_LOCAL_PATH = "/var/backups/strongroom"

LOCAL = register_location(
    LocationType(
        "local",
        LocalLocation,
        settings=(Setting("BACKUP_LOCAL_PATH", "path", default=DEFAULT_LOCAL_PATH),),
        retention=Setting("BACKUP_LOCAL_RETENTION_DAYS", parse=days, default=30),
        tenant_retention=Setting("BACKUP_LOCAL_TENANT_RETENTION_DAYS", parse=days, default=56),
    )
)
