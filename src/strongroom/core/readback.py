"""Read a stored object back: hash the stored bytes, authenticate, decrypt and decompress.

Used by verify (output discarded) and restore (output written to a private scratch file that is
handed to pg_restore only after everything checked out).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from strongroom.core.codecs import Codec
from strongroom.core.crypto import Keyring
from strongroom.core.streams import Reader
from strongroom.errors import IntegrityError

CHUNK_SIZE = 1 << 20


class HashingReader:
    """Pass-through reader that hashes and counts every stored byte it hands on."""

    def __init__(self, source: Reader) -> None:
        self.source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.source.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Hash whatever the decryptor left unread, so trailing garbage changes the digest."""
        while self.read(CHUNK_SIZE):
            pass

    def close(self) -> None:
        self.source.close()


@dataclass(frozen=True)
class ReadBack:
    sha256: str
    stored_size: int
    raw_size: int


def read_back(
    source: Reader,
    keyring: Keyring,
    codec: Codec,
    *,
    expected_sha256: str | None = None,
    sink: Callable[[bytes], object] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReadBack:
    """Stream ``source`` through every check; raise ``IntegrityError`` on the first failure."""
    hashed = HashingReader(source)
    try:
        plain = codec.decompress_reader(keyring.decrypting_reader(hashed))
        raw = 0
        while True:
            chunk = plain.read(CHUNK_SIZE)
            if not chunk:
                break
            raw += len(chunk)
            if sink is not None:
                sink(chunk)
            if progress is not None:
                progress(hashed.size)
        hashed.drain()
    finally:
        hashed.close()
    digest = hashed.sha256.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise IntegrityError(
            f"SHA-256 mismatch: stored object hashes to {digest[:16]}..., "
            f"expected {expected_sha256[:16]}... (corrupt or replaced copy)"
        )
    return ReadBack(digest, hashed.size, raw)
