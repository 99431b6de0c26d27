"""Handing a prefetched WAL segment to recovery: the part of ``wal-fetch`` that needs no network.

``wal-fetch`` checks each segment it prefetches (manifest authenticated, SHA-256 of the stored
object and of the plaintext) before it lands in the spool, so serving one later is a local move:
write ``DEST`` atomically, drop the spool's copy and the ones recovery has passed. Both the CLI
and the executable's lean path (:mod:`strongroom.interfaces.entry`) serve through here, so the
two cannot drift; this module imports nothing beyond the standard library and the spool.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from strongroom.core.wal_spool import Spool, write_whole
from strongroom.errors import WalFetchStop


def serve_prefetched(spool: Spool, name: str, target: Path) -> int:
    """Move prefetched ``name`` to ``target`` (atomically); its size."""
    source = spool.prefetch_path(name)
    data = source.read_bytes()
    write_atomically(target, data)
    source.unlink()
    forget_older(spool, name)
    return len(data)


def newer_prefetched(prefetched: list[str], name: str) -> list[str]:
    """Of ``prefetched``, the segments of ``name``'s timeline after it: recovery's next calls."""
    return [other for other in prefetched if other[:8] == name[:8] and other > name]


def forget_older(spool: Spool, name: str) -> None:
    """Prefetched segments recovery has passed are of no more use."""
    for other in spool.prefetched():
        if other[:8] == name[:8] and other < name:
            with contextlib.suppress(OSError):
                spool.prefetch_path(other).unlink()


def write_atomically(target: Path, data: bytes) -> None:
    """``target`` holds all of ``data`` or is untouched: temporary name, fsync, rename."""
    temp = target.with_name(f"{target.name}.strongroom-{secrets.token_hex(4)}")
    try:
        write_whole(target, data, temp)
    except OSError as exc:
        raise WalFetchStop(f"cannot write {target}: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
