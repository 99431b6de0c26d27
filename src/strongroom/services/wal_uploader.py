"""``wal-uploader PG_WAL``: with ``BACKUP_WAL_ASYNC`` on, push ``.ready`` files as they appear.

One process per ``pg_wal`` directory, started by ``wal-push`` (:mod:`strongroom.core.wal_async`)
and holding that directory's lock in the spool, watches ``pg_wal/archive_status``: every file
PostgreSQL marks ``.ready`` is pushed exactly as ``wal-push`` pushes it
(:class:`strongroom.services.wal_push._Pusher`: every required location durable, the manifest
last, optional ones noted for ``heal``), ``BACKUP_WAL_PUSH_PARALLEL`` at a time, oldest first,
and recorded in the spool, so PostgreSQL's call for it returns at once. The key, the codec and
the S3 clients are built once for the whole stay. A file it cannot push is noted in
``failed/<name>`` and left to PostgreSQL's own call, which pushes it and says why it failed; it
is not tried again by this process. It stays at most ``BACKUP_WAL_PUSH_AHEAD`` files ahead of
PostgreSQL's calls (so pausing archiving with an empty ``archive_command`` pauses it too, that
far ahead). It leaves after ``BACKUP_WAL_ASYNC_IDLE_SECONDS`` with nothing to push, when the
directory goes, or on SIGTERM (records are written only after a push completed, so stopping at
any point loses nothing).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from strongroom.config import Config
from strongroom.core.wal_async import holding_uploader_lock
from strongroom.core.wal_spool import Spool
from strongroom.errors import ConfigError
from strongroom.services.wal_push import Pushed, _Pusher, make_pusher, ready_names

log = logging.getLogger("strongroom.wal_uploader")

#: Seconds between looks at ``archive_status`` while pushes are in flight, and while idle.
_BUSY_PAUSE, _IDLE_PAUSE = 0.02, 0.1


def run_uploader(config: Config, wal_dir: Path) -> int:
    """Push ``wal_dir``'s ``.ready`` files until idle; how many were pushed (0 at once when
    another uploader holds the lock)."""
    if not config.wal.spool_dir:
        raise ConfigError(
            "BACKUP_WAL_ASYNC needs BACKUP_WAL_SPOOL_DIR: the uploader's records live there"
        )
    spool, wal_dir = Spool(config.wal.spool_dir), wal_dir.absolute()
    with holding_uploader_lock(spool, wal_dir) as held:
        if not held:
            log.info("another uploader is running for %s", spool.root)
            return 0
        return _Uploader(config, wal_dir, spool).run()


class _Uploader:
    """One stay: what is in flight, and what this process has already dealt with."""

    def __init__(self, config: Config, wal_dir: Path, spool: Spool) -> None:
        self.config = config
        self.wal_dir = wal_dir
        self.spool = spool
        # any path in the directory names the cluster (the data directory is its parent)
        self.pusher: _Pusher = make_pusher(config, wal_dir / "archive_status")
        self.parallel = config.wal.push_parallel
        self.limit = max(config.wal.push_ahead, self.parallel)
        self.inflight: dict[str, Future[Pushed]] = {}
        #: Pushed or failed by this process: never pushed again by it (a failure is the
        #: archiver's call's to retry and report).
        self.done: set[str] = set()
        self.pushed = 0

    def run(self) -> int:
        idle_since = time.monotonic()
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="strongroom-upload") as pool:
            while True:
                self._settle()
                if not self.wal_dir.is_dir():
                    log.warning("%s is gone: the uploader stops", self.wal_dir)
                    break
                for name in self._waiting():
                    self.inflight[name] = pool.submit(self.pusher.push, self.wal_dir / name, True)
                now = time.monotonic()
                if self.inflight:
                    idle_since = now
                elif now - idle_since >= self.config.wal.async_idle_seconds:
                    break
                time.sleep(_BUSY_PAUSE if self.inflight else _IDLE_PAUSE)
        return self.pushed

    def _waiting(self) -> list[str]:
        """``.ready`` files neither recorded, in flight, nor dealt with by this process, as
        many as keep it at most ``BACKUP_WAL_PUSH_AHEAD`` files ahead of PostgreSQL's calls
        (with archiving paused, ``archive_command = ''``, it pushes no further than that)."""
        ready = ready_names(self.wal_dir)
        recorded = self.spool.pushed_names()
        ahead = sum(1 for n in ready if n in recorded) + len(self.inflight)
        room = min(self.parallel - len(self.inflight), self.limit - ahead)
        busy = self.done | self.inflight.keys() | recorded
        return [n for n in ready if n not in busy][: max(room, 0)]

    def _settle(self) -> None:
        for name, future in list(self.inflight.items()):
            if not future.done():
                continue
            del self.inflight[name]
            self.done.add(name)
            exc = future.exception()
            if exc is None:
                self.pushed += 1
                self.spool.forget_failed(name)
            else:
                reason = str(exc) or type(exc).__name__
                log.warning("%s: not pushed, left to the archiver's own call: %s", name, reason)
                self.spool.mark_failed(name, reason)
