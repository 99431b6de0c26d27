"""Authenticated streaming AES-256 with key rotation, and manifest MACs.

Every stored object is our 13-byte header followed by a Tink streaming-AEAD ciphertext
(``AES256_GCM_HKDF_1MB``). Tink splits the plaintext into 1 MiB segments, each sealed with
AES-256-GCM under a per-object key derived by HKDF from the configured key and a random salt;
the last segment is flagged in its nonce, so flipped bytes, truncation (even exactly at a segment
boundary), reordered or dropped segments all fail authentication. We use Tink rather than a
home-made segment format because that format is reviewed and interoperable (Java, Go, C++).

Object layout::

    offset  size  field
    0       4     magic b"SRM1"
    4       1     format version, 1 = Tink AES256_GCM_HKDF_1MB (RAW output prefix)
    5       8     key id: the 8 raw bytes whose hex form is ``Keyring.primary_id``
    13      ...   Tink ciphertext: 40-byte Tink header (length byte, 32-byte HKDF salt,
                  7-byte nonce prefix), then 1 MiB ciphertext segments (the first one includes
                  the Tink header), each ending in a 16-byte GCM tag

The 13-byte header is Tink's associated data, so tampering with it fails authentication too.

Streaming means two things callers must know. Memory stays flat: under 3 MiB is in flight while
encrypting (Tink holds a segment until it knows whether it is the last). And the reader releases
each segment's plaintext once that segment authenticates, so truncation is only reported when the
reader reaches the end: treat the output as untrusted until ``read`` has returned ``b""``.

Keys: ``BACKUP_ENCRYPTION_KEY`` is 32 random bytes in url-safe base64, exactly what
``Fernet.generate_key()`` produces (the seed's format). Its key id is public and stable:
the first 8 bytes of HMAC-SHA256(key, b"strongroom key id"), in hex. Manifests are authenticated
with HMAC-SHA256 under a subkey derived by HKDF (info b"strongroom manifest v1"), so the raw key is
never used for two purposes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from functools import cache
from typing import Any

import tink
from tink import cleartext_keyset_handle, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

from strongroom.core.streams import Reader, Writer
from strongroom.errors import (
    IntegrityError,
    Interrupted,
    KeyConfigError,
    StrongroomError,
    WrongKeyError,
)

CIPHER_NAME = "AES256_GCM_HKDF_1MB"
KEY_SIZE = 32
MAGIC = b"SRM1"
FORMAT_VERSION = 1
KEY_ID_SIZE = 8
HEADER_SIZE = len(MAGIC) + 1 + KEY_ID_SIZE
#: Tink's ciphertext segment size; also the size of the chunks handed downstream.
SEGMENT_SIZE = 1 << 20
#: Tink's own header inside the ciphertext: length byte, HKDF salt, nonce prefix.
TINK_HEADER_SIZE = 1 + KEY_SIZE + 7
TAG_SIZE = 16
#: Plaintext bytes in the first segment, and in every later one.
FIRST_SEGMENT_PLAINTEXT = SEGMENT_SIZE - TINK_HEADER_SIZE - TAG_SIZE
SEGMENT_PLAINTEXT = SEGMENT_SIZE - TAG_SIZE

_KEY_TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"
_KEY_ID_LABEL = b"strongroom key id"
_MANIFEST_INFO = b"strongroom manifest v1"
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_KEY_HELP = "a key must be 32 random bytes, url-safe base64, e.g. from `strongroom keygen`"
_ROTATE_HELP = "set BACKUP_ENCRYPTION_KEY or add the key to BACKUP_ENCRYPTION_OLD_KEYS"


def generate_key() -> str:
    """A new key in the seed's format (same as ``Fernet.generate_key()``)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def parse_key(text: str | None, *, source: str = "BACKUP_ENCRYPTION_KEY") -> bytes:
    """Decode one configured key; every error names ``source`` and never echoes the key."""
    stripped = (text or "").strip()
    if not stripped:
        raise KeyConfigError(
            f"{source} is not set: generate one with `strongroom keygen` and set it in the "
            "environment (keep a copy offline: without it no backup can be restored)"
        )
    if not _URLSAFE_B64.fullmatch(stripped) or len(stripped.rstrip("=")) % 4 == 1:
        raise KeyConfigError(f"{source} is not url-safe base64; {_KEY_HELP}")
    padded = stripped.rstrip("=") + "=" * (-len(stripped.rstrip("=")) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{source} is not url-safe base64; {_KEY_HELP}") from None
    if len(raw) != KEY_SIZE:
        raise KeyConfigError(f"{source} decodes to {len(raw)} bytes; {_KEY_HELP}")
    return raw


def key_id_of(key: bytes) -> str:
    """The public, stable id of a raw key (16 hex characters)."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_SIZE].hex()


def make_header(key_id: str) -> bytes:
    """The 13-byte object header for ``key_id``."""
    return MAGIC + bytes([FORMAT_VERSION]) + bytes.fromhex(key_id)


def read_key_id(header: bytes) -> str:
    """Which key an object needs, from its first ``HEADER_SIZE`` bytes."""
    if len(header) < HEADER_SIZE or header[: len(MAGIC)] != MAGIC:
        raise IntegrityError(
            f"not a strongroom object (bad header: {len(header)} byte(s) starting "
            f"{header[:4]!r}, expected {MAGIC!r}); wrong file, or the copy is corrupt"
        )
    version = header[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"strongroom object format version {version} is not supported by this version "
            f"(reads version {FORMAT_VERSION}); upgrade strongroom or the copy is corrupt"
        )
    return header[len(MAGIC) + 1 : HEADER_SIZE].hex()


@cache
def _register_tink() -> None:
    streaming_aead.register()


def _streaming_primitive(key: bytes) -> streaming_aead.StreamingAead:
    """Tink wants a keyset: wrap our raw key as a single RAW AES-GCM-HKDF streaming key."""
    _register_tink()
    params = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
        ciphertext_segment_size=SEGMENT_SIZE,
        derived_key_size=KEY_SIZE,
        hkdf_hash_type=common_pb2.SHA256,
    )
    proto_key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(
        version=0, params=params, key_value=key
    )
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[
            tink_pb2.Keyset.Key(
                key_data=tink_pb2.KeyData(
                    type_url=_KEY_TYPE_URL,
                    value=proto_key.SerializeToString(),
                    key_material_type=tink_pb2.KeyData.SYMMETRIC,
                ),
                status=tink_pb2.ENABLED,
                key_id=1,
                output_prefix_type=tink_pb2.RAW,
            )
        ],
    )
    handle = cleartext_keyset_handle.from_keyset(keyset)
    return handle.primitive(streaming_aead.StreamingAead)


def hkdf_sha256(key: bytes, info: bytes) -> bytes:
    """RFC 5869 HKDF-SHA256 with no salt, 32 bytes out: one HMAC to extract, one to expand.

    The same bytes as ``cryptography``'s ``HKDF(SHA256(), 32, None, info)`` (a unit test holds
    them equal), from the standard library: that package's 8 MB would be loaded by every
    backup process for this one derivation.
    """
    prk = hmac.new(bytes(hashlib.sha256().digest_size), key, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


class _Key:
    """One raw key with what is derived from it (the Tink primitive is built on first use)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.id = key_id_of(raw)
        self.mac_key = hkdf_sha256(raw, _MANIFEST_INFO)
        self._primitive: streaming_aead.StreamingAead | None = None

    def __repr__(self) -> str:
        return f"_Key(id={self.id!r})"

    @property
    def primitive(self) -> streaming_aead.StreamingAead:
        if self._primitive is None:
            self._primitive = _streaming_primitive(self.raw)
        return self._primitive


class Keyring:
    """The primary key (encrypts and signs) and older keys (only decrypt and verify)."""

    def __init__(self, primary: bytes, previous: Sequence[bytes] = ()) -> None:
        self._primary = _Key(primary)
        self._keys: dict[str, _Key] = {self._primary.id: self._primary}
        for raw in previous:
            key = _Key(raw)
            self._keys.setdefault(key.id, key)

    @classmethod
    def from_strings(cls, primary: str | None, previous: Sequence[str] = ()) -> Keyring:
        """Parse BACKUP_ENCRYPTION_KEY and the entries of BACKUP_ENCRYPTION_OLD_KEYS."""
        raw = parse_key(primary)
        olds = [
            parse_key(text, source=f"BACKUP_ENCRYPTION_OLD_KEYS entry {i}")
            for i, text in enumerate(previous, start=1)
        ]
        return cls(raw, olds)

    @property
    def primary_id(self) -> str:
        return self._primary.id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every configured key id, primary first."""
        return tuple(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(primary_id={self.primary_id!r}, key_ids={self.key_ids!r})"

    def _key(self, key_id: str, what: str) -> _Key:
        key = self._keys.get(key_id)
        if key is None:
            raise WrongKeyError(
                f"{what} with key id {key_id}, which is not configured "
                f"(configured: {', '.join(self.key_ids)}); {_ROTATE_HELP}",
                key_id=key_id,
            )
        return key

    def encrypting_writer(self, downstream: Writer) -> EncryptingWriter:
        """Push stage: plaintext in, header + ciphertext out; ``close`` closes downstream."""
        return EncryptingWriter(self._primary, downstream)

    def decrypting_reader(self, source: Reader) -> DecryptingReader:
        """Pull stage: reads the header now (so a wrong key fails fast), then plaintext."""
        header = _read_exactly(source, HEADER_SIZE)
        key = self._key(read_key_id(header), "backup was encrypted")
        return DecryptingReader(key, header, source)

    def sign(self, payload: bytes) -> tuple[str, str]:
        """(key id, hex HMAC-SHA256) of ``payload`` under the primary key's manifest subkey."""
        mac = hmac.new(self._primary.mac_key, payload, hashlib.sha256).hexdigest()
        return self._primary.id, mac

    def verify(self, payload: bytes, key_id: str, mac_hex: str) -> None:
        """Raise unless ``mac_hex`` authenticates ``payload`` under key ``key_id``."""
        key = self._key(key_id, "manifest was signed")
        expected = hmac.new(key.mac_key, payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac_hex.lower()):
            raise IntegrityError(
                f"manifest failed authentication under key id {key_id}: it was modified or "
                "is corrupt; use another copy's manifest"
            )


def _read_exactly(source: Reader, size: int) -> bytes:
    parts: list[bytes] = []
    need = size
    while need > 0:
        chunk = source.read(need)
        if not chunk:
            break
        parts.append(chunk)
        need -= len(chunk)
    return b"".join(parts)


class _TinkSink:
    """What Tink writes ciphertext into: coalesces its 128 KiB writes into 1 MiB chunks.

    It only forwards while ``EncryptingWriter`` is inside a call, so a stream finalised by the
    garbage collector can never push a "complete" ciphertext of partial data downstream.
    """

    def __init__(self, downstream: Writer) -> None:
        self.downstream = downstream
        self.active = False
        self.closed = False
        self.error: BaseException | None = None
        self.bytes_out = 0
        self._parts: list[bytes] = []
        self._pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if not self.active:
            return len(data)
        try:
            self._parts.append(bytes(data))
            self._pending += len(data)
            if self._pending >= SEGMENT_SIZE:
                self.flush()
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        if self._pending:
            chunk = b"".join(self._parts)
            self._parts, self._pending = [], 0
            self.downstream.write(chunk)
            self.bytes_out += len(chunk)

    def close(self) -> None:
        if not self.active or self.closed:
            return
        self.closed = True
        try:
            self.flush()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.downstream.close()


class EncryptingWriter:
    """Encrypt pushed plaintext under one key; ``close`` seals the last segment."""

    def __init__(self, key: _Key, downstream: Writer) -> None:
        self.key_id = key.id
        self.header = make_header(key.id)
        self.bytes_in = 0
        self._sink = _TinkSink(downstream)
        self._sink.active = True
        try:
            self._sink.write(self.header)
            self._stream = key.primitive.new_encrypting_stream(self._sink, self.header)
        finally:
            self._sink.active = False

    @property
    def bytes_out(self) -> int:
        """Stored bytes handed downstream so far (header included)."""
        return self._sink.bytes_out

    def write(self, data: bytes, /) -> int:
        if not data:
            return 0
        self._sink.active = True
        try:
            self._stream.write(data)
        except tink.TinkError as exc:
            raise self._failure(exc) from exc
        finally:
            self._sink.active = False
        self.bytes_in += len(data)
        return len(data)

    def close(self) -> None:
        """Seal the final segment, flush, and close downstream (even when sealing fails)."""
        if self._sink.closed:
            return
        self._sink.active = True
        try:
            self._stream.close()
        except tink.TinkError as exc:
            raise self._failure(exc) from exc
        finally:
            if not self._sink.closed:
                self._sink.closed = True
                self._sink.downstream.close()
            self._sink.active = False

    def _failure(self, exc: tink.TinkError) -> BaseException:
        """Surface the downstream's own error (e.g. a StorageError) rather than Tink's wrap.

        So too a signal's ``Interrupted``, raised while Tink's C++ was calling back into Python.
        """
        interrupted = Interrupted.pending()
        if interrupted is not None:
            return interrupted
        if self._sink.error is not None:
            return self._sink.error
        return StrongroomError(f"encryption failed: {exc}")


class DecryptingReader:
    """Authenticated plaintext of one object; any tampering raises ``IntegrityError``."""

    def __init__(self, key: _Key, header: bytes, source: Reader) -> None:
        self.key_id = key.id
        self.bytes_out = 0
        self._source = _TinkSource(source)
        try:
            self._stream = key.primitive.new_decrypting_stream(self._source, header)
        except tink.TinkError:
            raise self._failure() from None

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(SEGMENT_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        try:
            data: bytes = self._stream.read(size)
        except tink.TinkError:
            raise self._failure() from None
        self.bytes_out += len(data)
        return data

    def close(self) -> None:
        self._stream.close()
        self._source.close()

    def _failure(self) -> BaseException:
        """The source's own error (e.g. a StorageError) if it had one, else tampering.

        A signal's ``Interrupted`` raised inside Tink's callback is itself, never "tampered".
        """
        interrupted = Interrupted.pending()
        if interrupted is not None:
            return interrupted
        if self._source.error is not None:
            return self._source.error
        where = (
            f"after {self.bytes_out} authenticated plaintext bytes"
            if self.bytes_out
            else "in its first segment"
        )
        return IntegrityError(
            f"stored object failed authentication {where} (key id {self.key_id}): "
            "it is truncated, tampered with or corrupt; try another copy"
        )


class _TinkSource:
    """What Tink reads ciphertext from; remembers the source's own error to re-raise it."""

    def __init__(self, source: Reader) -> None:
        self.source = source
        self.error: BaseException | None = None
        self.closed = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.source.read(size)
        except BaseException as exc:
            self.error = exc
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.source.close()
