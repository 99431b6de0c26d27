"""Streaming encryption, key parsing, rotation and manifest MACs (no servers).

Every way a stored object can be damaged (flipped byte in the header, a body segment or the last
segment; truncation anywhere, including exactly at a segment boundary and right after the header;
swapped, dropped or duplicated segments; trailing bytes) must fail authentication, and every key
error must name what to fix without ever echoing the key.
"""

from __future__ import annotations

import base64
import gc
import io
import os

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.core import crypto
from strongroom.core.crypto import (
    FIRST_SEGMENT_PLAINTEXT,
    HEADER_SIZE,
    SEGMENT_PLAINTEXT,
    SEGMENT_SIZE,
    TAG_SIZE,
    TINK_HEADER_SIZE,
    Keyring,
    hkdf_sha256,
    parse_key,
    read_key_id,
)
from strongroom.errors import IntegrityError, KeyConfigError, StorageError, WrongKeyError

KEY_A = crypto.generate_key()
KEY_B = crypto.generate_key()
RING_A = Keyring.from_strings(KEY_A)
RING_B = Keyring.from_strings(KEY_B)
RING_BA = Keyring.from_strings(KEY_B, [KEY_A])
MIB = 1 << 20


class Sink:
    """A downstream Writer that records every chunk and how often it was closed."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closes = 0

    def write(self, data: bytes, /) -> int:
        assert self.closes == 0, "write after close"
        self.chunks.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.closes += 1

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def encrypt(plain: bytes, ring: Keyring = RING_A, chunk: int = 256 * 1024) -> bytes:
    sink = Sink()
    writer = ring.encrypting_writer(sink)
    for start in range(0, len(plain), chunk):
        writer.write(plain[start : start + chunk])
    writer.close()
    assert sink.closes == 1
    return sink.data


def decrypt(stored: bytes, ring: Keyring = RING_A, read_size: int = MIB) -> bytes:
    reader = ring.decrypting_reader(io.BytesIO(stored))
    parts = []
    while chunk := reader.read(read_size):
        parts.append(chunk)
    reader.close()
    return b"".join(parts)


def expected_size(plain_len: int) -> int:
    """Stored size from Tink's layout: our header, Tink's header, one tag per segment."""
    rest = max(0, plain_len - FIRST_SEGMENT_PLAINTEXT)
    segments = 1 + -(-rest // SEGMENT_PLAINTEXT)
    return HEADER_SIZE + TINK_HEADER_SIZE + plain_len + segments * TAG_SIZE


SIZES = [
    0,
    1,
    FIRST_SEGMENT_PLAINTEXT - 1,
    FIRST_SEGMENT_PLAINTEXT,
    FIRST_SEGMENT_PLAINTEXT + 1,
    FIRST_SEGMENT_PLAINTEXT + SEGMENT_PLAINTEXT,
    5 * MIB + 12345,
]


@pytest.fixture(scope="module")
def three_segments() -> tuple[bytes, bytes]:
    """A plaintext spanning exactly 3 full segments plus a short fourth one, and its object."""
    plain = os.urandom(FIRST_SEGMENT_PLAINTEXT + 2 * SEGMENT_PLAINTEXT + 1000)
    return plain, encrypt(plain)


def segment(stored: bytes, index: int) -> bytes:
    start = HEADER_SIZE + index * SEGMENT_SIZE
    return stored[start : start + SEGMENT_SIZE]


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_at_segment_edges(size: int) -> None:
    plain = os.urandom(size)
    stored = encrypt(plain)
    assert len(stored) == expected_size(size)
    assert stored[:HEADER_SIZE] == b"SRM1\x01" + bytes.fromhex(RING_A.primary_id)
    assert decrypt(stored) == plain


def test_exactly_one_segment_fills_one_ciphertext_segment() -> None:
    assert len(encrypt(os.urandom(FIRST_SEGMENT_PLAINTEXT))) == HEADER_SIZE + SEGMENT_SIZE


@settings(max_examples=60, deadline=None)
@given(
    plain=st.binary(max_size=20_000),
    chunk=st.integers(min_value=1, max_value=5000),
    read_size=st.integers(min_value=1, max_value=7000),
)
def test_round_trip_any_chunking(plain: bytes, chunk: int, read_size: int) -> None:
    assert decrypt(encrypt(plain, chunk=chunk), read_size=read_size) == plain


def test_read_all_with_negative_size() -> None:
    plain = os.urandom(3 * MIB)
    reader = RING_A.decrypting_reader(io.BytesIO(encrypt(plain)))
    assert reader.read() == plain
    assert reader.read(10) == b""


def test_same_plaintext_encrypts_differently() -> None:
    assert encrypt(b"same") != encrypt(b"same")


def test_streams_with_bounded_buffering() -> None:
    """Ciphertext flows downstream while writing, in chunks of about one segment.

    In flight at most: Tink's segment awaiting the next byte (it must know whether a segment is
    the last), the one being filled, and our < 1 MiB outgoing chunk: under 3 MiB in all.
    """
    sink = Sink()
    writer = RING_A.encrypting_writer(sink)
    block = os.urandom(256 * 1024)
    for i in range(24):  # 6 MiB
        writer.write(block)
        buffered = writer.bytes_in - (len(sink.data) - HEADER_SIZE)
        assert buffered <= 3 * SEGMENT_SIZE, f"after {i + 1} writes"
    writer.close()
    assert all(len(c) <= SEGMENT_SIZE + 256 * 1024 for c in sink.chunks)
    assert writer.bytes_in == 24 * len(block)
    assert writer.bytes_out == len(sink.data) == expected_size(writer.bytes_in)


def test_close_is_idempotent_and_closes_downstream_once() -> None:
    sink = Sink()
    writer = RING_A.encrypting_writer(sink)
    writer.write(b"x")
    writer.close()
    writer.close()
    assert sink.closes == 1


# --- damage ------------------------------------------------------------------------------------


def test_bad_magic_is_not_a_strongroom_object(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    with pytest.raises(IntegrityError, match="not a strongroom object"):
        decrypt(b"XRM1" + stored[4:])


def test_unknown_version_byte(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    with pytest.raises(IntegrityError, match="format version 2"):
        decrypt(stored[:4] + b"\x02" + stored[5:])


def test_flipped_key_id_byte_names_the_key_it_asks_for(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    bad = bytearray(stored)
    bad[7] ^= 0x01
    with pytest.raises(WrongKeyError) as caught:
        decrypt(bytes(bad))
    assert caught.value.key_id == bad[5:HEADER_SIZE].hex()


def test_header_is_authenticated() -> None:
    """Relabelling an object with another configured key's id fails authentication."""
    stored = encrypt(b"secret dump", RING_BA)  # primary B
    relabelled = crypto.make_header(RING_A.primary_id) + stored[HEADER_SIZE:]
    with pytest.raises(IntegrityError, match="failed authentication"):
        decrypt(relabelled, RING_BA)


@pytest.mark.parametrize(
    "offset",
    [
        HEADER_SIZE,  # Tink header length byte
        HEADER_SIZE + 5,  # HKDF salt
        HEADER_SIZE + TINK_HEADER_SIZE + 10,  # first segment body
        HEADER_SIZE + SEGMENT_SIZE - 1,  # first segment's tag
        HEADER_SIZE + SEGMENT_SIZE + 500_000,  # a middle segment
        -500,  # last (short) segment body
        -1,  # last tag byte
    ],
)
def test_flipped_body_byte_fails(three_segments: tuple[bytes, bytes], offset: int) -> None:
    _, stored = three_segments
    bad = bytearray(stored)
    bad[offset] ^= 0x40
    with pytest.raises(IntegrityError, match="truncated, tampered with or corrupt"):
        decrypt(bytes(bad))


@pytest.mark.parametrize(
    "cut",
    [
        0,
        3,
        HEADER_SIZE - 1,
        HEADER_SIZE,  # right after our header: empty ciphertext body
        HEADER_SIZE + 1,
        HEADER_SIZE + TINK_HEADER_SIZE,
        HEADER_SIZE + SEGMENT_SIZE,  # exactly at segment boundaries
        HEADER_SIZE + 2 * SEGMENT_SIZE,
        HEADER_SIZE + 3 * SEGMENT_SIZE,
        HEADER_SIZE + 3 * SEGMENT_SIZE + 1,
        -TAG_SIZE,
        -1,
    ],
)
def test_truncation_fails(three_segments: tuple[bytes, bytes], cut: int) -> None:
    _, stored = three_segments
    with pytest.raises(IntegrityError):
        decrypt(stored[:cut])


@pytest.mark.parametrize("size", [0, 1, FIRST_SEGMENT_PLAINTEXT, FIRST_SEGMENT_PLAINTEXT + 1])
def test_truncation_of_small_objects(size: int) -> None:
    stored = encrypt(os.urandom(size))
    for cut in {HEADER_SIZE, HEADER_SIZE + 1, len(stored) - 1, HEADER_SIZE + SEGMENT_SIZE}:
        if cut < len(stored):
            with pytest.raises(IntegrityError):
                decrypt(stored[:cut])


def test_truncation_reports_how_far_it_got(three_segments: tuple[bytes, bytes]) -> None:
    plain, stored = three_segments
    reader = RING_A.decrypting_reader(io.BytesIO(stored[: HEADER_SIZE + 2 * SEGMENT_SIZE]))
    got = reader.read(FIRST_SEGMENT_PLAINTEXT)
    assert got == plain[:FIRST_SEGMENT_PLAINTEXT]  # released only once authenticated
    with pytest.raises(
        IntegrityError, match=f"after {FIRST_SEGMENT_PLAINTEXT} authenticated plaintext bytes"
    ):
        reader.read(MIB)


def test_damage_in_the_first_segment_says_so(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    bad = bytearray(stored)
    bad[HEADER_SIZE + TINK_HEADER_SIZE + 10] ^= 0x01
    with pytest.raises(IntegrityError, match="failed authentication in its first segment"):
        decrypt(bytes(bad))


def test_trailing_bytes_fail(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    with pytest.raises(IntegrityError):
        decrypt(stored + b"\x00")


def test_swapped_segments_fail(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    s = [segment(stored, i) for i in range(4)]
    swapped = stored[:HEADER_SIZE] + s[0] + s[2] + s[1] + s[3]
    assert len(swapped) == len(stored)
    with pytest.raises(IntegrityError):
        decrypt(swapped)


def test_dropped_segment_fails(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    s = [segment(stored, i) for i in range(4)]
    with pytest.raises(IntegrityError):
        decrypt(stored[:HEADER_SIZE] + s[0] + s[2] + s[3])


def test_duplicated_segment_fails(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    s = [segment(stored, i) for i in range(4)]
    with pytest.raises(IntegrityError):
        decrypt(stored[:HEADER_SIZE] + s[0] + s[1] + s[1] + s[2] + s[3])


def test_segments_cannot_be_spliced_between_objects() -> None:
    plain = os.urandom(FIRST_SEGMENT_PLAINTEXT + SEGMENT_PLAINTEXT + 10)
    one, two = encrypt(plain), encrypt(plain)
    spliced = one[: HEADER_SIZE + SEGMENT_SIZE] + two[HEADER_SIZE + SEGMENT_SIZE :]
    with pytest.raises(IntegrityError):
        decrypt(spliced)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_flip_in_a_small_object_is_caught(data: st.DataObject) -> None:
    stored = encrypt(data.draw(st.binary(max_size=3000)))
    offset = data.draw(st.integers(min_value=0, max_value=len(stored) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    bad = bytearray(stored)
    bad[offset] ^= 1 << bit
    with pytest.raises((IntegrityError, WrongKeyError)):
        decrypt(bytes(bad))


# --- keys and rotation -------------------------------------------------------------------------


def test_wrong_key_names_the_key_id_needed() -> None:
    stored = encrypt(b"dump", RING_A)
    with pytest.raises(WrongKeyError) as caught:
        RING_B.decrypting_reader(io.BytesIO(stored))
    message = str(caught.value)
    assert caught.value.key_id == RING_A.primary_id
    assert f"key id {RING_A.primary_id}, which is not configured" in message
    assert f"(configured: {RING_B.primary_id})" in message
    assert "BACKUP_ENCRYPTION_OLD_KEYS" in message


def test_old_key_in_the_keyring_decrypts() -> None:
    plain = os.urandom(2 * MIB)
    old = encrypt(plain, RING_A)
    assert decrypt(old, RING_BA) == plain
    new = encrypt(plain, RING_BA)
    assert read_key_id(new[:HEADER_SIZE]) == RING_B.primary_id
    with pytest.raises(WrongKeyError):
        decrypt(new, RING_A)


def test_keyring_ids() -> None:
    assert RING_BA.primary_id == RING_B.primary_id
    assert RING_BA.key_ids == (RING_B.primary_id, RING_A.primary_id)
    assert Keyring.from_strings(KEY_A, [KEY_A, " " + KEY_A + "\n"]).key_ids == (RING_A.primary_id,)
    assert len(RING_A.primary_id) == 16
    assert int(RING_A.primary_id, 16) >= 0
    assert KEY_A not in repr(RING_BA) and KEY_B not in repr(RING_BA)


def test_key_id_is_stable_and_non_secret() -> None:
    raw = bytes(range(32))
    text = base64.urlsafe_b64encode(raw).decode()
    assert Keyring.from_strings(text).primary_id == crypto.key_id_of(raw)
    assert crypto.key_id_of(raw) == crypto.key_id_of(bytes(range(32)))
    assert crypto.key_id_of(raw) != crypto.key_id_of(bytes(range(1, 33)))
    assert crypto.key_id_of(raw) not in raw.hex()


def test_read_key_id() -> None:
    stored = encrypt(b"")
    assert read_key_id(stored[:HEADER_SIZE]) == RING_A.primary_id
    assert read_key_id(stored) == RING_A.primary_id
    with pytest.raises(IntegrityError, match="not a strongroom object"):
        read_key_id(b"PGDMP\x01\x0e\x00")


@pytest.mark.parametrize(
    "text",
    [
        Fernet.generate_key().decode(),
        crypto.generate_key(),
        crypto.generate_key().rstrip("="),
        "  " + crypto.generate_key() + "\n",
    ],
)
def test_valid_keys(text: str) -> None:
    assert len(parse_key(text)) == 32


def test_generate_key_is_fernet_format() -> None:
    key = crypto.generate_key()
    Fernet(key.encode())  # Fernet accepts it as its own key format
    assert len(base64.urlsafe_b64decode(key)) == 32


@pytest.mark.parametrize("text", [None, "", "   ", "\n"])
def test_missing_key(text: str | None) -> None:
    with pytest.raises(KeyConfigError) as caught:
        Keyring.from_strings(text)
    message = str(caught.value)
    assert message.startswith("BACKUP_ENCRYPTION_KEY is not set: generate one with ")
    assert "`strongroom keygen`" in message
    assert "\n" not in message


SECRETISH = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1sZWFr"  # 33 bytes of text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not base64 at all!!", "BACKUP_ENCRYPTION_KEY is not url-safe base64; a key must be 32"),
        ("abc+def/" * 5 + "abcd", "is not url-safe base64"),
        ("A" * 43 + "=" * 3, "is not url-safe base64"),
        ("A" * 41, "is not url-safe base64"),
        ("A=A" + "A" * 40, "is not url-safe base64"),
        (
            base64.urlsafe_b64encode(b"k" * 16).decode(),
            "BACKUP_ENCRYPTION_KEY decodes to 16 bytes; a key must be 32 random bytes, "
            "url-safe base64, e.g. from `strongroom keygen`",
        ),
        (SECRETISH, "decodes to 33 bytes"),
        (base64.urlsafe_b64encode(b"k" * 64).decode(), "decodes to 64 bytes"),
        (os.urandom(32).hex(), "decodes to 48 bytes"),
    ],
)
def test_malformed_key_messages_never_echo_the_key(text: str, expected: str) -> None:
    with pytest.raises(KeyConfigError) as caught:
        parse_key(text)
    message = str(caught.value)
    assert expected in message
    assert text not in message and text.strip("=") not in message
    assert text[:12] not in message
    assert caught.value.__cause__ is None
    assert "\n" not in message


def test_old_key_errors_say_which_entry() -> None:
    with pytest.raises(KeyConfigError) as caught:
        Keyring.from_strings(KEY_A, [KEY_B, SECRETISH])
    message = str(caught.value)
    assert message.startswith("BACKUP_ENCRYPTION_OLD_KEYS entry 2 decodes to 33 bytes")
    assert SECRETISH not in message and KEY_A not in message and KEY_B not in message


# --- manifest MACs -----------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    key_id, mac = RING_BA.sign(b'{"a":1}')
    assert key_id == RING_B.primary_id and len(mac) == 64
    RING_BA.verify(b'{"a":1}', key_id, mac)
    RING_B.verify(b'{"a":1}', key_id, mac.upper())
    with pytest.raises(IntegrityError, match="manifest failed authentication"):
        RING_BA.verify(b'{"a":2}', key_id, mac)
    with pytest.raises(IntegrityError):
        RING_BA.verify(b'{"a":1}', key_id, "0" * 64)
    with pytest.raises(IntegrityError):
        RING_BA.verify(b'{"a":1}', RING_A.primary_id, mac)  # other configured key
    with pytest.raises(WrongKeyError) as caught:
        RING_A.verify(b'{"a":1}', key_id, mac)
    assert caught.value.key_id == key_id
    assert f"manifest was signed with key id {key_id}" in str(caught.value)


def test_old_key_verifies_old_signatures() -> None:
    key_id, mac = RING_A.sign(b"payload")
    RING_BA.verify(b"payload", key_id, mac)


def test_manifest_subkey_is_rfc5869_hkdf_sha256() -> None:
    """Manifests signed before the standard-library HKDF still verify: the same subkey."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = parse_key(KEY_A)
    info = b"strongroom manifest v1"
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw)
    assert hkdf_sha256(raw, info) == expected


def test_mac_key_is_not_the_raw_key() -> None:
    import hashlib
    import hmac

    _, mac = RING_A.sign(b"payload")
    raw = parse_key(KEY_A)
    assert mac != hmac.new(raw, b"payload", hashlib.sha256).hexdigest()


# --- errors from the neighbours ----------------------------------------------------------------


class FailingSink(Sink):
    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    def write(self, data: bytes, /) -> int:
        if len(self.data) + len(data) > self.fail_after:
            raise StorageError("disk full", location="local")
        return super().write(data)


def test_downstream_error_surfaces_as_itself_and_downstream_is_closed() -> None:
    sink = FailingSink(fail_after=2 * MIB)
    writer = RING_A.encrypting_writer(sink)
    with pytest.raises(StorageError, match="disk full"):
        for _ in range(16):
            writer.write(os.urandom(MIB))
    with pytest.raises(StorageError):
        writer.close()
    assert sink.closes == 1


def test_error_at_final_flush_still_closes_downstream() -> None:
    sink = FailingSink(fail_after=HEADER_SIZE + 100)
    writer = RING_A.encrypting_writer(sink)
    writer.write(b"x" * 1000)
    with pytest.raises(StorageError):
        writer.close()
    assert sink.closes == 1


class FailingSource(io.BytesIO):
    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= self.fail_at:
            raise StorageError("connection reset", location="r2")
        return super().read(size)


def test_source_error_surfaces_as_itself(three_segments: tuple[bytes, bytes]) -> None:
    _, stored = three_segments
    reader = RING_A.decrypting_reader(FailingSource(stored, fail_at=2 * MIB))
    with pytest.raises(StorageError, match="connection reset"):
        while reader.read(MIB):
            pass


def test_abandoned_writer_never_finishes_the_object() -> None:
    """A writer dropped without close (an error path) must not seal a partial object."""
    sink = Sink()
    writer = RING_A.encrypting_writer(sink)
    writer.write(os.urandom(100_000))
    before = sink.data
    del writer
    gc.collect()
    assert sink.data == before
    assert sink.closes == 0
