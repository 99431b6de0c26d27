"""The one storage interface every location implements (local disk included).

Modelled on Barman's ``CloudInterface``: small public primitives, provider errors translated
into :mod:`strongroom.errors` at this edge. Backends register themselves by ``kind`` so adding one
never means editing an ``elif`` chain.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from strongroom.core.streams import Reader


@dataclass(frozen=True)
class ObjectInfo:
    """What ``stat``/``list`` know about a stored object."""

    key: str
    size: int
    modified: datetime | None = None


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``Location.check``: reachable with the credentials, and writable."""

    reachable: bool
    writable: bool
    detail: str


class ObjectWriter(abc.ABC):
    """An in-progress atomic upload: nothing is visible under ``key`` until ``commit``.

    ``abort`` removes every trace (partial file, multipart parts) and is safe to call twice or
    after a failed ``commit``.
    """

    @abc.abstractmethod
    def write(self, data: bytes, /) -> int: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...


class Location(abc.ABC):
    """A named place that stores backup objects, addressed by ``/``-separated keys."""

    kind: ClassVar[str]

    def __init__(self, name: str, *, required: bool = False, prefix: str = "") -> None:
        self.name = name
        self.required = required
        self.prefix = prefix.strip("/")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @classmethod
    @abc.abstractmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> Location:
        """Build from the location's settings (see ``strongroom.config``)."""

    @abc.abstractmethod
    def open_writer(self, key: str) -> ObjectWriter:
        """Start an atomic upload of ``key``."""

    @abc.abstractmethod
    def open_reader(self, key: str) -> Reader:
        """Stream ``key``; raises ``ObjectNotFound`` if absent."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size of ``key``; raises ``ObjectNotFound`` if absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every committed object whose key starts with ``prefix``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent is not an error."""

    @abc.abstractmethod
    def check(self) -> CheckResult:
        """Probe reachability and writability without exposing secrets."""

    def cleanup_incomplete(self, prefix: str = "", initiated_before: datetime | None = None) -> int:
        """Remove leftovers of uploads that died (partials, multipart parts); return the count.

        Only keys under ``prefix`` and, when given, uploads started before ``initiated_before``
        (timezone-aware) are touched, so a caller holding the lock for one database never
        removes another process's live upload. Both arguments are optional: the old
        no-argument call still means "everything".
        """
        return 0

    def put_bytes(self, key: str, data: bytes) -> None:
        """Atomically store a small object (manifests)."""
        writer = self.open_writer(key)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole (manifests)."""
        reader = self.open_reader(key)
        try:
            return reader.read()
        finally:
            reader.close()

    def describe(self) -> str:
        """Where this location points, for humans; never includes credentials."""
        return self.name


_BACKENDS: dict[str, type[Location]] = {}


def register_backend(cls: type[Location]) -> type[Location]:
    """Class decorator: make ``cls`` available under ``cls.kind``."""
    _BACKENDS[cls.kind] = cls
    return cls


def backend_for(kind: str) -> type[Location]:
    """The registered class for ``kind``; a ``ConfigError`` names the known kinds otherwise."""
    from strongroom.errors import ConfigError

    try:
        return _BACKENDS[kind]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS)) or "none"
        raise ConfigError(f"unknown storage kind {kind!r} (known: {known})") from None


LocationFactory = Callable[[str, Mapping[str, Any]], Location]
