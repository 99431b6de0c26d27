"""The WAL spool (``BACKUP_WAL_SPOOL_DIR``): what archiving remembers between invocations.

PostgreSQL starts one ``archive_command`` per file and one ``restore_command`` per file, so
anything learnt by one call that helps the next lives here, never inside ``pg_wal`` (pg_rewind
and pg_basebackup trip over foreign files there)::

    pushed/<name>            plaintext SHA-256 of a file pushed ahead of the archiver's call,
                             and the file's stamp (see :func:`file_stamp`) as it was read
    down/<location>          an optional location that just failed (skipped for a while)
    missed/<location>/<name> a file an optional location did not get (``heal`` back-fills it)
    prefetch/<name>          a segment fetched and checked ahead of recovery's call
    failed/<name>            why the background uploader could not push a file (the
                             archiver's own call then pushes it and reports)
    uploader-<dir>.lock      locked by the background uploader of one ``pg_wal`` directory
                             (``BACKUP_WAL_ASYNC``; ``<dir>`` a digest of its path)
    uploader.log             what the background uploader said (warnings and failures)

Every file is written to a temporary name and renamed, so a reader sees all or nothing. The
spool is private (0700): prefetched segments are plaintext WAL. Losing it loses nothing: a
marker only saves a round trip, and each is checked against the file before it is believed.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

_DIR_MODE = 0o700


class Spool:
    """One spool directory; created on first use."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._locks: dict[Path, Path] = {}

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        return path

    def _write(self, path: Path, data: bytes) -> None:
        import secrets  # here, not at the top: wal-push's fast path only reads the spool

        write_whole(path, data, path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}"))

    # -- pushed ahead ------------------------------------------------------------------------

    def mark_pushed(self, name: str, sha256: str, stamp: str = "") -> None:
        self._write(self._dir("pushed") / name, f"{sha256}\n{stamp}".encode("ascii"))

    def pushed(self, name: str) -> tuple[str, str]:
        """``(plaintext SHA-256, stamp)`` recorded for ``name`` pushed ahead, or ``("", "")``;
        the stamp is ``""`` in a record of an older version, or when the file changed while
        it was read."""
        try:
            text = (self.root / "pushed" / name).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return "", ""
        sha, _, stamp = text.strip().partition("\n")
        return sha.strip(), stamp.strip()

    def pushed_sha(self, name: str) -> str:
        """The plaintext SHA-256 recorded for ``name`` pushed ahead, or ``""``."""
        return self.pushed(name)[0]

    def pushed_names(self) -> set[str]:
        """Every file with a record of a push ahead (one directory listing)."""
        try:
            return set(self._names("pushed"))
        except OSError:
            return set()

    def forget_pushed(self, name: str) -> None:
        """A marker answers one call: after a crash PostgreSQL's re-push checks the archive."""
        self._forget("pushed", name)

    # -- the background uploader ------------------------------------------------------------

    def mark_failed(self, name: str, reason: str) -> None:
        self._write(self._dir("failed") / name, reason.encode("utf-8", "replace"))

    def failed(self, name: str) -> str:
        """Why the uploader could not push ``name``, or ``""``."""
        try:
            return (self.root / "failed" / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def failed_names(self) -> list[str]:
        """The files the uploader could not push and no call has pushed since, by name."""
        return self._names("failed")

    def forget_failed(self, name: str) -> None:
        self._forget("failed", name)

    def uploader_lock(self, wal_dir: Path) -> Path:
        """The lock of ``wal_dir``'s uploader: one per cluster, so clusters that share a spool
        (and a config file) do not wait for each other's uploader. Worked out once per spool
        object: ``wal-push`` asks for it every few milliseconds while it waits."""
        if wal_dir not in self._locks:
            import hashlib  # here: only the asynchronous path needs it

            self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            digest = hashlib.sha256(str(wal_dir.absolute()).encode()).hexdigest()[:16]
            self._locks[wal_dir] = self.root / f"uploader-{digest}.lock"
        return self._locks[wal_dir]

    @property
    def uploader_log(self) -> Path:
        return self.root / "uploader.log"

    # -- optional locations that fail --------------------------------------------------------

    def mark_down(self, location: str, reason: str) -> None:
        self._write(self._dir("down") / location, reason.encode("utf-8", "replace"))

    def down_since(self, location: str) -> float | None:
        """When ``location`` was marked down (epoch seconds), or ``None``."""
        try:
            return (self.root / "down" / location).stat().st_mtime
        except OSError:
            return None

    def mark_up(self, location: str) -> None:
        self._forget("down", location)

    def is_down(self, location: str, seconds: float) -> bool:
        since = self.down_since(location)
        return since is not None and time.time() - since < seconds

    def mark_missed(self, location: str, name: str, reason: str) -> None:
        self._write(self._dir("missed", location) / name, reason.encode("utf-8", "replace"))

    def missed(self, location: str) -> list[str]:
        """The files ``location`` missed, oldest name first."""
        return self._names("missed", location)

    def forget_missed(self, location: str, name: str) -> None:
        self._forget("missed", location, name)

    # -- prefetched for recovery -------------------------------------------------------------

    def prefetch_path(self, name: str) -> Path:
        return self._dir("prefetch") / name

    def store_prefetched(self, name: str, data: bytes) -> None:
        self._write(self.prefetch_path(name), data)

    def prefetched(self) -> list[str]:
        return self._names("prefetch")

    # -- shared ------------------------------------------------------------------------------

    def _names(self, *parts: str) -> list[str]:
        """The entries of a spool folder by name (none while it does not exist), leaving out
        files still being written (``.name.tmp-...``)."""
        folder = self.root.joinpath(*parts)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def _forget(self, *parts: str) -> None:
        """A spool file removed; one already gone is no error."""
        with contextlib.suppress(OSError):
            self.root.joinpath(*parts).unlink()


def file_stamp(st: os.stat_result) -> str:
    """What identifies one version of a file without reading it: device, inode, size, and the
    modification and change times in nanoseconds. Writing to the file changes its change
    time, which no process can set back, and replacing it changes the inode."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def write_whole(path: Path, data: bytes, temp: Path) -> None:
    """``path`` holds all of ``data`` or is untouched: written to ``temp``, fsynced, renamed
    (``temp`` removed on any failure, which is re-raised)."""
    try:
        with temp.open("xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        temp.rename(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
