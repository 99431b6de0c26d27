"""S3-compatible location (kind ``s3``): Cloudflare R2, Backblaze B2, AWS, SeaweedFS, MinIO, ...

Uploads stream part by part like s3transfer's ``UploadNonSeekableInputManager``: at most one part
is buffered, each part is uploaded synchronously (every location already runs in its own
thread), objects smaller than a part are a single ``put_object``. The multipart upload is created
on the first full part and aborted on any failure, as s3transfer's ``CreateMultipartUploadTask``
registers it, so no orphaned parts are left; parts left by a location that vanished mid-upload
are aborted by ``cleanup_incomplete`` the next time it is reachable.

Provider errors are translated into :mod:`strongroom.errors` here. Access keys and secrets never
appear in messages, logs or ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from strongroom.core import deadline
from strongroom.core.storage.base import (
    CheckResult,
    Location,
    ObjectInfo,
    ObjectWriter,
    register_backend,
)
from strongroom.core.storage.settings import (
    LocationType,
    Setting,
    Values,
    days,
    register_location,
)
from strongroom.core.streams import Reader
from strongroom.errors import (
    ConfigError,
    LocationUnavailable,
    ObjectNotFound,
    StorageError,
    StrongroomError,
)
from strongroom.numbers import seconds, whole

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
#: Each S3 location holds one part in memory: 8 MiB keeps three locations' backup small, and
#: with the growth below 10,000 parts still hold about 0.5 TiB.
DEFAULT_PART_SIZE = 8 * MiB
MAX_PARTS = 10_000
#: Parts kept at the configured size before the size starts doubling every 1,000 parts.
_STEADY_PARTS = 5_000
_PROBE = ".strongroom-probe-"

_OPTIONS = {
    "bucket",
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "prefix",
    "part_size",
    "max_attempts",
    "connect_timeout",
    "read_timeout",
    "operation_timeout",
    "addressing_style",
    "part_retries",
    "env_prefix",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "InvalidSecurity",
    "AuthorizationHeaderMalformed",
    "Unauthorized",
    "Forbidden",
    "401",
    "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
#: Worth another go after botocore's own retries gave up (or never tried).
_RETRY_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "IncompleteBody",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
    "Throttling",
    "ThrottlingException",
    "OperationAborted",
}


@functools.cache
def _bc() -> ModuleType:
    """``botocore.exceptions``, imported when first needed: a process whose locations are all
    local never loads botocore (only a client, built on first use, can raise these)."""
    import botocore.exceptions

    return botocore.exceptions


def _errors(*more: type[BaseException]) -> tuple[type[BaseException], ...]:
    """What an S3 call can raise: botocore's errors and OSError (and ``more``)."""
    return (_bc().BotoCoreError, _bc().ClientError, OSError, *more)


def r2_endpoint(account_id: str) -> str:
    """Cloudflare R2's S3 endpoint for an account."""
    return f"https://{account_id}.r2.cloudflarestorage.com"


def b2_endpoint(region: str) -> str:
    """Backblaze B2's S3 endpoint for a region such as ``us-west-004``."""
    return f"https://s3.{region}.backblazeb2.com"


def part_size_for(part_number: int, base: int) -> int:
    """Size of part ``part_number`` (1-based) when the total size is unknown in advance.

    ``base`` for the first 5,000 parts, then doubling every 1,000 parts (capped at 5 GiB), so
    10,000 parts hold 67,000 x ``base`` (about 0.5 TiB at 8 MiB) while small and medium dumps
    keep memory at one ``base`` part.
    """
    if part_number > MAX_PARTS:
        raise ValueError(f"S3 allows at most {MAX_PARTS} parts")
    if part_number <= _STEADY_PARTS:
        return base
    doublings = (part_number - _STEADY_PARTS - 1) // 1000 + 1
    return min(base << doublings, MAX_PART_SIZE)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _worth_retrying(exc: BaseException) -> bool:
    """Transient, and not "the endpoint is gone or hangs" (botocore retried that already).

    Another round helps with error codes botocore does not know as transient (IncompleteBody,
    BadDigest, InternalError), with 5xx/429 once its retry quota ran dry, and with a connection
    reset mid-part; it does not with refused connections or timeouts, where each round would
    only stall every location fed by the same dump.
    """
    if isinstance(exc, _bc().ClientError):
        status = _status(exc)
        return _code(exc) in _RETRY_CODES or status >= 500 or status == 429
    if isinstance(exc, _bc().ConnectionError | _bc().ReadTimeoutError | _bc().NoCredentialsError):
        return False
    return isinstance(exc, _bc().BotoCoreError | OSError)


def _unreachable_reason(exc: BaseException) -> str:
    if isinstance(exc, _bc().ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, _bc().ReadTimeoutError):
        return "no answer in time (read timeout)"
    cause = str(getattr(exc, "kwargs", {}).get("error", "")) or str(exc)
    lowered = cause.lower()
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename" in lowered:
        return "host name does not resolve"
    if isinstance(exc, _bc().EndpointConnectionError):
        return "connection failed"
    return type(exc).__name__


def _content_md5(body: bytes | bytearray) -> str:
    """The body's MD5 for ``Content-MD5``: the server refuses (BadDigest) a body that arrived
    other than it was sent, so a completed upload is a checked one."""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")


class _S3Writer(ObjectWriter):
    """Buffers one part at a time; the multipart upload exists from the first full part on."""

    def __init__(self, location: S3Location, key: str) -> None:
        self._loc = location
        self._key = key
        self._full = location.full_key(key)
        #: The part being filled: grown for the first part, then refilled in place, so a
        #: writer holds one part's bytes whatever the object's size (no per-part allocation).
        self._buf = bytearray()
        self._fill = 0
        self._parts: list[CompletedPartTypeDef] = []
        self._upload_id: str | None = None
        self._size = 0
        self._state = "open"

    def __repr__(self) -> str:
        return f"<S3 upload {self._loc.name}:{self._key} {self._state}>"

    def _next_size(self) -> int:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"{self._loc.name}: {self._key} needs more than {MAX_PARTS} parts: raise "
                f"part_size (now {self._loc.part_size} bytes)",
                self._loc.name,
            )
        return part_size_for(number, self._loc.part_size)

    def write(self, data: bytes, /) -> int:
        if self._state != "open":
            raise StorageError(f"{self._loc.name}: write to a {self._state} upload", self._loc.name)
        view = memoryview(data)
        try:
            while view:
                size = self._next_size()
                piece = view[: size - self._fill]
                view = view[len(piece) :]
                end = self._fill + len(piece)
                if end <= len(self._buf):
                    self._buf[self._fill : end] = piece  # refilling the part buffer in place
                else:
                    del self._buf[self._fill :]
                    self._buf += piece
                self._fill = end
                if self._fill >= size:
                    self._send_part()
        except BaseException:
            self._discard()
            raise
        self._size += len(data)
        return len(data)

    def _send_part(self) -> None:
        self._next_size()  # refuses part 10,001
        body = self._body()
        number = len(self._parts) + 1
        s3 = self._loc.client()
        if self._upload_id is None:
            created = self._loc.call(
                "start upload",
                lambda: s3.create_multipart_upload(Bucket=self._loc.bucket, Key=self._full),
                self._key,
            )
            self._upload_id = created["UploadId"]
        upload_id = self._upload_id
        reply = self._loc.call(
            f"upload part {number}",
            lambda: s3.upload_part(
                Bucket=self._loc.bucket,
                Key=self._full,
                UploadId=upload_id,
                PartNumber=number,
                # sent as is (and re-sent on retry), no copy; refilled only once this returns
                Body=cast("bytes", body),
                ContentMD5=_content_md5(body),
            ),
            self._key,
        )
        self._parts.append({"PartNumber": number, "ETag": reply["ETag"]})
        self._fill = 0  # the part is stored: its buffer takes the next one

    def _body(self) -> bytearray:
        """The filled bytes, as the buffer itself (botocore sends a bytearray as is)."""
        if self._fill < len(self._buf):
            del self._buf[self._fill :]  # the last, short part: truncated in place, not copied
        return self._buf

    def commit(self) -> None:
        if self._state == "committed":
            return
        if self._state != "open":
            raise StorageError(
                f"{self._loc.name}: commit of a {self._state} upload", self._loc.name
            )
        try:
            if self._upload_id is None:
                self._put_whole()
            else:
                if self._fill:
                    self._send_part()
                self._complete()
        except BaseException:
            self._discard()
            raise
        self._state = "committed"
        self._buf, self._fill = bytearray(), 0

    def _put_whole(self) -> None:
        s3 = self._loc.client()
        body = self._body()
        self._loc.call(
            "upload",
            lambda: s3.put_object(
                Bucket=self._loc.bucket,
                Key=self._full,
                Body=cast("bytes", body),
                ContentMD5=_content_md5(body),
            ),
            self._key,
        )

    def _complete(self) -> None:
        s3 = self._loc.client()
        upload_id = self._upload_id
        assert upload_id is not None

        def complete() -> None:
            try:
                s3.complete_multipart_upload(
                    Bucket=self._loc.bucket,
                    Key=self._full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            except _bc().ClientError as exc:
                # A retried complete whose first attempt succeeded answers NoSuchUpload.
                if _code(exc) != "NoSuchUpload" or not self._landed():
                    raise

        self._loc.call("complete upload", complete, self._key)
        self._upload_id = None

    def _landed(self) -> bool:
        try:
            return self._loc.stat(self._key).size == self._size
        except StorageError:
            return False

    def abort(self) -> None:
        """Remove every uploaded part; a failure is logged, ``cleanup_incomplete`` retries it."""
        if self._state in ("committed", "aborted"):
            return
        self._discard()

    def _discard(self) -> None:
        self._state = "aborted"
        self._buf, self._fill = bytearray(), 0
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            self._loc.abort_upload(self._full, upload_id)


class _S3Reader:
    """Streams ``get_object``; a broken connection resumes with a ranged GET (same ETag)."""

    def __init__(self, location: S3Location, key: str, retries: int = 3) -> None:
        self._loc = location
        self._key = key
        self._retries = retries
        self._pos = 0
        reply = location.call("read", lambda: location.get(key), key)
        self._etag: str = reply.get("ETag", "")
        self._body = reply["Body"]

    def read(self, size: int = -1, /) -> bytes:
        for attempt in range(self._retries + 1):
            try:
                data: bytes = self._body.read(None if size is None or size < 0 else size)
            except (_bc().BotoCoreError, OSError) as exc:
                if attempt == self._retries:
                    self._loc.fail(exc, "read", self._key)
                log.warning("%s: reading %s broke (%s); resuming", self._loc.name, self._key, exc)
                self._resume()
                continue
            self._pos += len(data)
            return data
        raise AssertionError("unreachable")

    def _resume(self) -> None:
        self._body.close()
        reply = self._loc.call(
            "read", lambda: self._loc.get(self._key, self._pos, self._etag), self._key
        )
        self._body = reply["Body"]

    def close(self) -> None:
        self._body.close()


@register_backend
class S3Location(Location):
    """A bucket (and key prefix) on any S3-compatible endpoint."""

    kind = "s3"

    def __init__(
        self,
        name: str,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "auto",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        operation_timeout: float = 120.0,
        addressing_style: str = "path",
        part_retries: int = 3,
        env_prefix: str | None = None,
        required: bool = False,
    ) -> None:
        super().__init__(name, required=required, prefix=prefix)
        if part_size < MIN_PART_SIZE or part_size > MAX_PART_SIZE:
            raise ConfigError(
                f"s3 location '{name}': part_size must be between 5 MiB and 5 GiB, "
                f"got {part_size} bytes"
            )
        if addressing_style not in ("path", "virtual", "auto"):
            raise ConfigError(
                f"s3 location '{name}': addressing_style must be path, virtual or auto"
            )
        self.bucket = bucket
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.region = region
        self.part_size = part_size
        self.max_attempts = max(1, max_attempts)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        if not math.isfinite(operation_timeout) or operation_timeout <= 0:
            raise ConfigError(
                f"s3 location '{name}': operation_timeout must be a number of seconds above 0"
            )
        self.operation_timeout = operation_timeout
        self.addressing_style = addressing_style
        self.part_retries = max(0, part_retries)
        self.env_prefix = env_prefix or name.upper()
        self.__key = access_key_id
        self.__secret = secret_access_key
        self._clients: dict[int, S3Client] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> S3Location:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"s3 location '{name}': unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_OPTIONS))})"
            )
        env = str(options.get("env_prefix") or name.upper())
        if not options.get("bucket"):
            raise ConfigError(f"s3 location '{name}' has no bucket: set {env}_BUCKET_NAME")
        kwargs: dict[str, Any] = {}
        try:
            for key in ("part_size", "max_attempts", "part_retries"):
                if options.get(key) is not None:
                    kwargs[key] = int(options[key])
            for key in ("connect_timeout", "read_timeout", "operation_timeout"):
                if options.get(key) is not None:
                    kwargs[key] = float(options[key])
        except (TypeError, ValueError):
            raise ConfigError(f"s3 location '{name}': {key} must be a number") from None
        for key in ("endpoint_url", "access_key_id", "secret_access_key", "env_prefix"):
            if options.get(key):
                kwargs[key] = str(options[key])
        return cls(
            name,
            bucket=str(options["bucket"]),
            region=str(options.get("region") or "auto"),
            prefix=str(options.get("prefix") or ""),
            addressing_style=str(options.get("addressing_style") or "path"),
            **kwargs,
        )

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{where} at {self.endpoint_url or f'AWS S3 ({self.region})'}"

    # -- plumbing --------------------------------------------------------------------------

    def client(self, max_attempts: int | None = None) -> S3Client:
        """The boto3 client (thread-safe once built); built lazily, once per retry budget."""
        attempts = max_attempts or self.max_attempts
        with self._lock:
            if attempts not in self._clients:
                self._clients[attempts] = self._new_client(attempts)
            return self._clients[attempts]

    def _new_client(self, attempts: int) -> S3Client:
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # total_max_attempts counts the first try too; botocore's "max_attempts" would not
            retries={"mode": "standard", "total_max_attempts": attempts},
            s3=cast("Any", {"addressing_style": self.addressing_style}),
            tcp_keepalive=True,
            # boto3 >= 1.36 sends CRC checksum headers B2, R2 and SeaweedFS reject.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        with _SESSION_LOCK:  # building clients from one session is not thread-safe
            client = _shared_session(boto3).client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.__key,
                aws_secret_access_key=self.__secret,
                config=config,
            )
        return cast("S3Client", client)

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    @property
    def _where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def _scrub(self, text: str) -> str:
        for secret in (self.__key, self.__secret):
            if secret:
                text = text.replace(secret, "***")
        return text

    def translate(self, exc: BaseException, what: str, key: str | None = None) -> StrongroomError:
        """The ``strongroom.errors`` equivalent of a boto3/botocore failure, secret-free."""
        name = self.name
        if isinstance(exc, StrongroomError):
            return exc
        if isinstance(exc, _bc().ConnectionError | _bc().ReadTimeoutError):
            reason = _unreachable_reason(exc)
            return LocationUnavailable(f"{name}: cannot reach {self._where}: {reason}", name)
        if isinstance(exc, _bc().NoCredentialsError):
            return self._refused("no credentials configured")
        if isinstance(exc, _bc().ClientError):
            code = _code(exc)
            if code in _CREDENTIAL_CODES:
                return self._refused(code)
            if code == "NoSuchBucket":
                err = LocationUnavailable(
                    f"{name}: bucket '{self.bucket}' does not exist at {self._where}: create it "
                    f"or set {self.env_prefix}_BUCKET_NAME",
                    name,
                )
                err.transient = False
                return err
            if key is not None and code in _NOT_FOUND_CODES:
                return ObjectNotFound(f"{name}: {key} not found in {self.describe()}", name)
            message = exc.response.get("Error", {}).get("Message", "")
            detail = self._scrub(f"{code} {message}".strip())
            return StorageError(f"{name}: {what} failed at {self._where}: {detail}", name)
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        return StorageError(f"{name}: {what} failed at {self._where}: {detail}", name)

    def _refused(self, why: str) -> LocationUnavailable:
        env = self.env_prefix
        err = LocationUnavailable(
            f"{self.name}: {self._where} refused the credentials ({why}): check "
            f"{env}_ACCESS_KEY_ID and {env}_SECRET_ACCESS_KEY, and that the key may read and "
            f"write bucket '{self.bucket}'",
            self.name,
        )
        err.transient = False
        return err

    def fail(self, exc: BaseException, what: str, key: str | None = None) -> NoReturn:
        """Raise the translation of ``exc``; credential errors drop the provider's response."""
        err = self.translate(exc, what, key)
        if isinstance(err, LocationUnavailable) and not err.transient:
            raise err from None
        raise err from exc

    def call(self, what: str, op: Callable[[], T], key: str | None = None) -> T:
        """Run ``op`` with a bounded exponential backoff for what botocore does not retry.

        Every attempt, botocore's and ours, fits in one ``operation_timeout``: connect and read
        timeouts times attempts would otherwise add up to many minutes on a silent endpoint.
        """
        until = time.monotonic() + self.operation_timeout
        delay = 0.5
        for attempt in range(self.part_retries + 1):
            try:
                return self.within(what, op, until)
            except _errors() as exc:
                late = time.monotonic() + delay > until
                if attempt == self.part_retries or late or not _worth_retrying(exc):
                    self.fail(exc, what, key)
                log.warning(
                    "%s: %s failed (%s); retry %d of %d in %.1f s",
                    self.name,
                    what,
                    self.translate(exc, what, key),
                    attempt + 1,
                    self.part_retries,
                    delay,
                )
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 20.0)
        raise AssertionError("unreachable")

    def within(self, what: str, op: Callable[[], T], until: float | None = None) -> T:
        """``op()``, or ``LocationUnavailable`` "no answer in N s" once the deadline passed."""
        if until is None:
            until = time.monotonic() + self.operation_timeout
        try:
            return deadline.within(max(0.0, until - time.monotonic()), op, f"s3-{self.name}")
        except deadline.NoAnswer:
            raise LocationUnavailable(
                f"{self.name}: no answer from {self._where} in {self.operation_timeout:g} s "
                f"({what}): raise {self.env_prefix}_OPERATION_TIMEOUT if it is only slow",
                self.name,
            ) from None

    def get(self, key: str, start: int = 0, etag: str = "") -> Any:
        """Raw ``get_object`` (from byte ``start``, only while the ETag still matches)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full_key(key)}
        if start:
            kwargs["Range"] = f"bytes={start}-"
        if etag:
            kwargs["IfMatch"] = etag
        return self.client().get_object(**kwargs)

    def abort_upload(self, full_key: str, upload_id: str) -> bool:
        """Abort one multipart upload; never raises (a leftover is cleaned up later).

        Uses a small retry budget: this usually runs because the location just failed, and
        waiting out eight backoffs here would only delay the report of that failure.
        """
        s3 = self.client(max_attempts=min(3, self.max_attempts))
        try:
            self.within(
                "abort upload",
                lambda: s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id
                ),
            )
        except LocationUnavailable as exc:
            log.warning("%s: abort of %s failed: %s", self.name, full_key, exc)
            return False
        except _bc().ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return False
            log.warning("%s: abort of %s failed: %s", self.name, full_key, self.translate(exc, ""))
            return False
        except (_bc().BotoCoreError, OSError) as exc:
            log.warning("%s: abort of %s failed: %s", self.name, full_key, self.translate(exc, ""))
            return False
        return True

    def _pages(self, what: str, listing: Iterable[Any]) -> Iterator[Any]:
        """A paginator's pages, each fetched under its own ``operation_timeout``."""
        pages = iter(listing)
        while True:
            page = self.within(what, lambda: next(pages, None))
            if page is None:
                return
            yield page

    # -- primitives ------------------------------------------------------------------------

    def open_writer(self, key: str) -> ObjectWriter:
        return _S3Writer(self, key)

    def open_reader(self, key: str) -> Reader:
        return _S3Reader(self, key)

    def stat(self, key: str) -> ObjectInfo:
        s3 = self.client()
        head = self.call(
            "stat", lambda: s3.head_object(Bucket=self.bucket, Key=self.full_key(key)), key
        )
        return ObjectInfo(key, int(head["ContentLength"]), _aware(head.get("LastModified")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        pages = self.client().get_paginator("list_objects_v2")
        try:
            listing = pages.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix))
            for page in self._pages("list", listing):
                for item in page.get("Contents", []):
                    key = self._relative(item["Key"])
                    if key.rsplit("/", 1)[-1].startswith(_PROBE):
                        continue
                    yield ObjectInfo(key, int(item["Size"]), _aware(item.get("LastModified")))
        except _errors() as exc:
            self.fail(exc, "list")

    def delete(self, key: str) -> None:
        s3 = self.client()
        with contextlib.suppress(ObjectNotFound):  # absent is fine
            self.call(
                "delete", lambda: s3.delete_object(Bucket=self.bucket, Key=self.full_key(key)), key
            )

    def check(self) -> CheckResult:
        """Reachable with these credentials (a list), writable (put + delete a probe)."""
        s3 = self.client(max_attempts=min(2, self.max_attempts))
        until = time.monotonic() + self.operation_timeout
        try:
            self.within(
                "list",
                lambda: s3.list_objects_v2(Bucket=self.bucket, Prefix=self.full_key(""), MaxKeys=1),
                until,
            )
        except _errors(StrongroomError) as exc:
            return CheckResult(False, False, str(self.translate(exc, "list")))
        probe = self.full_key(f"{_PROBE}{secrets.token_hex(8)}")
        try:
            self.within(
                "write probe",
                lambda: s3.put_object(
                    Bucket=self.bucket, Key=probe, Body=b"strongroom write probe"
                ),
                until,
            )
            self.within(
                "write probe", lambda: s3.delete_object(Bucket=self.bucket, Key=probe), until
            )
        except _errors(StrongroomError) as exc:
            return CheckResult(True, False, str(self.translate(exc, "write probe")))
        return CheckResult(True, True, f"{self.name}: {self.describe()} reachable and writable")

    def cleanup_incomplete(self, prefix: str = "", initiated_before: datetime | None = None) -> int:
        """Abort multipart uploads under ``prefix`` (started before ``initiated_before``)."""
        cutoff = _aware(initiated_before)
        stale: list[tuple[str, str]] = []
        pages = self.client().get_paginator("list_multipart_uploads")
        try:
            listing = pages.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix))
            for page in self._pages("list incomplete uploads", listing):
                for upload in page.get("Uploads", []):
                    started = _aware(upload.get("Initiated"))
                    if cutoff is not None and started is not None and started >= cutoff:
                        continue
                    stale.append((upload["Key"], upload["UploadId"]))
        except _errors() as exc:
            self.fail(exc, "list incomplete uploads")
        return sum(self.abort_upload(key, upload_id) for key, upload_id in stale)


def _aware(moment: datetime | None) -> datetime | None:
    """Timestamps from providers (and callers) as timezone-aware UTC; naive means UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# -- the S3-compatible locations: Cloudflare R2 and Backblaze B2 -------------------------------


#: The longest a single request may be allowed to take.
DAY = 24 * 3600
#: S3's own limits on a multipart part, in bytes.
PART_SIZE = whole(MIN_PART_SIZE, MAX_PART_SIZE, "a size in bytes")


def _cloud_settings(env: str, region: str, endpoint_from: str) -> tuple[Setting, ...]:
    """R2 and B2 share one shape: the default region and the endpoint's source differ."""
    return (
        Setting(f"{env}_BUCKET_NAME", "bucket", required=True),
        Setting(f"{env}_ACCESS_KEY_ID", "access_key_id", required=True),
        Setting(f"{env}_SECRET_ACCESS_KEY", "secret_access_key", required=True, secret=True),
        Setting(
            f"{env}_ENDPOINT_URL",
            "endpoint_url",
            required=True,
            hint=f"{env}_ENDPOINT_URL or {endpoint_from}",
        ),
        Setting(f"{env}_REGION", "region", default=region),
        *(() if endpoint_from == f"{env}_REGION" else (Setting(endpoint_from),)),
        Setting(f"{env}_PREFIX", "prefix", default=""),
        Setting(f"{env}_MAX_ATTEMPTS", "max_attempts", whole(1, 100)),
        Setting(f"{env}_PART_RETRIES", "part_retries", whole(0, 100)),
        Setting(f"{env}_CONNECT_TIMEOUT", "connect_timeout", seconds(high=DAY)),
        Setting(f"{env}_READ_TIMEOUT", "read_timeout", seconds(high=DAY)),
        Setting(f"{env}_OPERATION_TIMEOUT", "operation_timeout", seconds(high=DAY)),
        Setting(f"{env}_PART_SIZE", "part_size", PART_SIZE),
    )


def _r2_endpoint(values: Values, options: dict[str, Any]) -> None:
    if not options.get("endpoint_url") and values["R2_ACCOUNT_ID"]:
        options["endpoint_url"] = r2_endpoint(str(values["R2_ACCOUNT_ID"]))


def _b2_endpoint(values: Values, options: dict[str, Any]) -> None:
    if not options.get("endpoint_url") and values["B2_REGION"]:
        options["endpoint_url"] = b2_endpoint(str(values["B2_REGION"]))


R2 = register_location(
    LocationType(
        "r2",
        S3Location,
        settings=_cloud_settings("R2", "auto", "R2_ACCOUNT_ID"),
        retention=Setting("R2_RETENTION_DAYS", parse=days, default=365),
        tenant_retention=Setting("R2_TENANT_RETENTION_DAYS", parse=days, default=365),
        derive=_r2_endpoint,
    )
)
B2 = register_location(
    LocationType(
        "b2",
        S3Location,
        settings=_cloud_settings("B2", "us-east-005", "B2_REGION"),
        retention=Setting("B2_RETENTION_DAYS", parse=days, default=365),
        tenant_retention=Setting("B2_TENANT_RETENTION_DAYS", parse=days, default=365),
        derive=_b2_endpoint,
    )
)


#: One boto3 session per process: every client built from it shares botocore's loaded service
#: model, so a second location's client costs a fraction of the first (``wal-push`` builds two
#: per call). Credentials are always passed per client, never taken from the session.
_SESSION_LOCK = threading.Lock()
_SESSIONS: list[Any] = []


def _shared_session(boto3: Any) -> Any:
    """The process's boto3 session (called with ``_SESSION_LOCK`` held)."""
    if not _SESSIONS:
        _SESSIONS.append(boto3.session.Session())
    return _SESSIONS[0]
