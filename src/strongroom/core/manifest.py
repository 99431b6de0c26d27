"""The JSON manifest stored beside every copy, written last, authenticated with the key.

A copy without its manifest is incomplete and never restorable; with it, the catalog can be
rebuilt from storage alone. The document is readable by humans and authenticated by the key::

    {"format": "strongroom-manifest/1",
     "key_id": "<16 hex>",
     "mac": "<HMAC-SHA256 hex over canonical JSON of the manifest object>",
     "manifest": {...}}

Canonical JSON is ``sort_keys``, compact separators, UTF-8, no NaN. The MAC is checked against
the canonical form of the *parsed* object, so what is verified is exactly what is used.

Key layout under a location's prefix (``<payload>`` is ``dump`` for the logical kinds, full
and tenant, and ``tar`` for a physical base backup)::

    <database>/<kind>/<YYYY>/<MM>/<DD>/<backup_id>.<payload>[.zst|.gz].enc
    <database>/<kind>/<YYYY>/<MM>/<DD>/<backup_id>.manifest.json

WAL files are named by PostgreSQL, not by us, and live per cluster and timeline::

    <scope>/wal/<timeline>/<file name>.wal[.zst|.gz].enc
    <scope>/wal/<timeline>/<file name>.manifest.json
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from strongroom.core.crypto import Keyring
from strongroom.errors import IntegrityError

FORMAT = "strongroom-manifest/1"
MANIFEST_SUFFIX = ".manifest.json"
KINDS = ("full", "tenant", "base", "wal")
#: What the stored object holds, by kind: the marker between the object's name and its codec.
PAYLOADS = {"full": "dump", "tenant": "dump", "base": "tar", "wal": "wal"}
_OBJECT_NAME = re.compile(
    r"(?P<stem>.+?)\.(?:" + "|".join(sorted(set(PAYLOADS.values()))) + r")(?:\.[a-z0-9]+)?\.enc"
)
_WAL_NAME = re.compile(r"[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history")
_DATETIME_FIELDS = ("started_at", "finished_at")
_SAFE_SEGMENT = "-_.+=@~"
_BACKUP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class Manifest:
    """Everything needed to find, check and restore one backup, without the catalog."""

    id: str
    kind: str
    database: str
    server_version: str
    pg_dump_version: str
    started_at: datetime
    finished_at: datetime
    raw_size: int
    compressed_size: int
    stored_size: int
    sha256: str
    codec: str
    codec_level: int
    cipher: str
    key_id: str
    object_key: str
    table_rows: dict[str, int] = field(default_factory=dict)
    tenant_id: str | None = None
    tool_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: Adaptive zstd: per level (as a string), ``raw_bytes`` compressed at it and the
    #: ``compressed_bytes`` they became; empty for a fixed level. ``codec_level`` is then the
    #: ceiling. Only for the record: the decompressor needs no level.
    codec_levels: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO-8601 UTC, ``...Z``)."""
        data = asdict(self)
        for name in _DATETIME_FIELDS:
            data[name] = _format_time(getattr(self, name), name)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Rebuild from ``to_dict`` output; ``IntegrityError`` on any missing or mistyped field.

        Unknown fields (from a newer strongroom) are ignored.
        """
        if not isinstance(data, dict):
            raise IntegrityError("malformed manifest: the manifest is not a JSON object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.default is not MISSING or f.default_factory is not MISSING:
                    continue
                raise IntegrityError(f"malformed manifest: field {f.name!r} is missing")
            values[f.name] = _check_field(f.name, data[f.name])
        return cls(**values)

    def to_document(self, keyring: Keyring) -> bytes:
        """The stored bytes: pretty JSON for humans, with a MAC under the primary key."""
        body = self.to_dict()
        key_id, mac = keyring.sign(canonical_json(body))
        document = {"format": FORMAT, "key_id": key_id, "mac": mac, "manifest": body}
        text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
        return (text + "\n").encode("utf-8")

    @classmethod
    def from_document(cls, data: bytes, keyring: Keyring) -> Manifest:
        """Parse and authenticate a stored manifest (``WrongKeyError`` if its key is missing)."""
        document = _parse_document(data)
        key_id, mac = document.get("key_id"), document.get("mac")
        if not isinstance(key_id, str) or not isinstance(mac, str):
            raise IntegrityError("malformed manifest: key_id and mac must be strings")
        keyring.verify(canonical_json(document["manifest"]), key_id, mac)
        return cls.from_dict(document["manifest"])

    @classmethod
    def read_unverified(cls, data: bytes) -> Manifest:
        """Parse without authenticating: for listing only, never for restoring."""
        return cls.from_dict(_parse_document(data)["manifest"])


def read_unverified(data: bytes) -> Manifest:
    """Module-level alias of ``Manifest.read_unverified``."""
    return Manifest.read_unverified(data)


def canonical_json(value: Any) -> bytes:
    """The bytes a MAC covers: sorted keys, compact separators, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _parse_document(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"malformed manifest: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(document, dict):
        raise IntegrityError("malformed manifest: the document is not a JSON object")
    if document.get("format") != FORMAT:
        raise IntegrityError(
            f"not a strongroom manifest, or a newer format ({str(document.get('format'))[:40]!r},"
            f" this version reads {FORMAT!r})"
        )
    if not isinstance(document.get("manifest"), dict):
        raise IntegrityError("malformed manifest: 'manifest' is not a JSON object")
    return document


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_STR_FIELDS = frozenset(
    {"id", "kind", "database", "server_version", "pg_dump_version", "sha256", "codec", "cipher"}
    | {"key_id", "object_key", "tool_version"}
)
_INT_FIELDS = frozenset({"raw_size", "compressed_size", "stored_size", "codec_level"})


def _check_field(name: str, value: Any) -> Any:
    """Type-check one field as read from JSON; returns the Python value."""
    if name in _DATETIME_FIELDS:
        return _parse_time(value, name)
    ok = True
    if name in _STR_FIELDS:
        ok = isinstance(value, str)
    elif name in _INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name == "tenant_id":
        ok = value is None or isinstance(value, str)
    elif name == "table_rows":
        ok = isinstance(value, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        )
    elif name == "extra":
        ok = isinstance(value, dict)
    elif name == "codec_levels":
        ok = isinstance(value, dict) and all(
            isinstance(v, dict) and all(_is_int(n) for n in v.values()) for v in value.values()
        )
    if not ok:
        raise IntegrityError(f"malformed manifest: field {name!r} has the wrong type")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _format_time(value: datetime, name: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"manifest {name} must be a timezone-aware datetime")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise IntegrityError(f"malformed manifest: {name} is not an ISO-8601 UTC time")
    return parsed.astimezone(UTC)


def key_segment(name: str) -> str:
    """``name`` as one path segment: unchanged for ordinary names, %-escaped otherwise."""
    if not name:
        raise ValueError("a key segment cannot be empty")
    escaped = quote(name, safe=_SAFE_SEGMENT)
    return escaped.replace(".", "%2E", 1) if escaped.startswith(".") else escaped


def database_prefix(database: str) -> str:
    """The key prefix under which every backup of ``database`` lives (for listing)."""
    return key_segment(database) + "/"


def object_key_for(
    database: str, kind: str, backup_id: str, started_at: datetime, codec_extension: str
) -> str:
    """``<database>/<kind>/<YYYY>/<MM>/<DD>/<backup_id>.<payload>[.<ext>].enc`` (date in UTC)."""
    if kind not in KINDS or kind == "wal":
        raise ValueError(f"backup kind must be one of {KINDS}, not {kind!r}")
    backup_id = str(backup_id)
    if not _BACKUP_ID.fullmatch(backup_id):
        raise ValueError(f"backup id {backup_id!r} must be letters, digits, '-' and '_' only")
    if started_at.tzinfo is None:
        raise ValueError("started_at must be a timezone-aware datetime")
    day = started_at.astimezone(UTC)
    ext = _suffix(PAYLOADS[kind], codec_extension)
    return f"{database_prefix(database)}{kind}/{day:%Y/%m/%d}/{backup_id}.{ext}"


def wal_key_for(scope: str, file_name: str, codec_extension: str) -> str:
    """``<scope>/wal/<timeline>/<file name>.wal[.<ext>].enc`` for a WAL segment or history file.

    ``scope`` names the cluster (its system identifier), since WAL belongs to a cluster, not
    to one database. Only PostgreSQL's own file names are accepted.
    """
    if not _WAL_NAME.fullmatch(file_name):
        raise ValueError(f"{file_name!r} is not a WAL segment, history or backup label name")
    timeline = file_name[:8]
    ext = _suffix(PAYLOADS["wal"], codec_extension)
    return f"{key_segment(scope)}/wal/{timeline}/{file_name}.{ext}"


def _suffix(payload: str, codec_extension: str) -> str:
    return f"{payload}.{codec_extension}.enc" if codec_extension else f"{payload}.enc"


def manifest_key_for(object_key: str) -> str:
    """The manifest's key beside ``object_key``: ``.../<name>.manifest.json``."""
    directory, _, name = object_key.rpartition("/")
    match = _OBJECT_NAME.fullmatch(name)
    backup_id = match.group("stem") if match else name.split(".", 1)[0]
    if not backup_id:
        raise ValueError(f"{object_key!r} is not a backup object key")
    return f"{directory}/{backup_id}{MANIFEST_SUFFIX}" if directory else backup_id + MANIFEST_SUFFIX
