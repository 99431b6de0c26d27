"""Read a stored object back: hash the stored bytes, authenticate, decrypt and decompress.

The one read-back primitive: verify (output discarded), restore (output written to a private
scratch file that is handed to pg_restore only after everything checked out) and heal (a
source's and a new copy's proof) all call :func:`read_copy`, whatever kind of backup the copy
holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from strongroom.core.codecs import Codec, get_codec
from strongroom.core.crypto import Keyring
from strongroom.core.manifest import Manifest
from strongroom.core.readahead import Pipeline
from strongroom.core.storage.base import Location
from strongroom.core.streams import Reader
from strongroom.errors import IntegrityError, WrongBackupKind

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
    """Stream ``source`` through every check; raise ``IntegrityError`` on the first failure.

    Reading and hashing, decryption and decompression each run in a thread of their own
    (:mod:`strongroom.core.readahead`), so they overlap; ``sink`` and ``progress`` are called
    in the caller's thread, in order. Every thread has ended when this returns or raises.
    """
    hashed = HashingReader(source)
    with Pipeline() as pipe:
        stored = pipe.stage(hashed, "read")
        decrypted = pipe.stage(keyring.decrypting_reader(stored), "decrypt")
        plain = pipe.stage(codec.decompress_reader(decrypted), "decompress")
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
        # hash whatever the decryptor left unread, so trailing garbage changes the digest
        while stored.read(CHUNK_SIZE):
            pass
    digest = hashed.sha256.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise IntegrityError(
            f"SHA-256 mismatch: stored object hashes to {digest[:16]}..., "
            f"expected {expected_sha256[:16]}... (corrupt or replaced copy)"
        )
    return ReadBack(digest, hashed.size, raw)


def read_copy(
    location: Location,
    key: str,
    manifest_key: str,
    keyring: Keyring,
    *,
    expected_sha256: str = "",
    sink: Callable[[bytes], object] | None = None,
    progress: Callable[[int], None] | None = None,
    kinds: Collection[str] = (),
) -> tuple[Manifest, ReadBack]:
    """Prove one stored copy whole: manifest authenticated, SHA-256 and decrypted size match.

    ``expected_sha256`` is what the catalog recorded (empty without a catalog). Raises
    ``ObjectNotFound``, ``IntegrityError``, ``WrongKeyError`` or another ``StrongroomError``;
    ``sink`` receives the plaintext as it is checked, so it must not trust it before this
    returns. ``kinds``, when given, refuses (``WrongBackupKind``) a copy of another kind before
    a byte of it is read.
    """
    manifest = Manifest.from_document(location.get_bytes(manifest_key), keyring)
    if kinds and manifest.kind not in kinds:
        what = f"a {manifest.kind} backup"
        if manifest.tenant_id:
            what += f" of tenant {manifest.tenant_id}"
        raise WrongBackupKind(
            f"backup {manifest.id} is {what}, not one this command restores "
            f"({', '.join(kinds)}): pick a full backup (`strongroom list`)"
        )
    if expected_sha256 and manifest.sha256 != expected_sha256:
        raise IntegrityError(
            f"manifest checksum {manifest.sha256[:16]}... differs from the catalog's "
            f"{expected_sha256[:16]}..."
        )
    codec = get_codec(manifest.codec, manifest.codec_level)
    back = read_back(
        location.open_reader(key),
        keyring,
        codec,
        expected_sha256=manifest.sha256,
        sink=sink,
        progress=progress,
    )
    if back.raw_size != manifest.raw_size:
        raise IntegrityError(
            f"decrypted size {back.raw_size} differs from the manifest's {manifest.raw_size}"
        )
    return manifest, back
