"""A push parser for the tar stream of a physical base backup, and an extractor built on it.

The base backup's bytes arrive in chunks (from pg_basebackup's stdout while backing up, from
the decrypting reader while restoring); Python's ``tarfile`` wants to pull from a file. This
parser is fed chunks instead, so no thread, pipe or temporary file sits between the stream and
the disk. It reads exactly what PostgreSQL writes (``src/port/tar.c``): ustar headers with an
octal or base-256 size, regular files, directories and symbolic links, two zero blocks at the
end. Anything else is refused rather than guessed at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from strongroom.errors import IntegrityError

BLOCK = 512
REGULAR, DIRECTORY, SYMLINK = "0", "5", "2"


@dataclass(frozen=True)
class Member:
    """One entry of the archive, as its header describes it."""

    name: str
    kind: str
    size: int
    mode: int
    link: str = ""


class MemberSink:
    """Receives the archive's entries in order: ``start``, ``data`` (files only), ``end``."""

    def start(self, member: Member) -> None:
        """A new entry begins."""

    def data(self, chunk: memoryview) -> None:
        """Part of the current regular file's content (a view: copy what you keep)."""

    def end(self) -> None:
        """The current entry is complete."""


class TarStream:
    """Feed it the archive chunk by chunk; it calls the sink per entry, bytes in order.

    File content goes to the sink as views of the fed chunk, never copied: a base backup is
    gigabytes of content and a few kilobytes of headers, and only the headers are buffered.
    """

    def __init__(self, sink: MemberSink) -> None:
        self.sink = sink
        self._head = bytearray()  # the part of the next header block seen so far
        self._left = 0  # content bytes of the current file still to come
        self._pad = 0  # padding bytes after it
        self._in_member = False
        self.finished = False

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos, size = 0, len(view)
        while pos < size and not self.finished:
            if self._left:
                take = min(self._left, size - pos)
                self.sink.data(view[pos : pos + take])
                self._left -= take
            elif self._pad:
                take = min(self._pad, size - pos)
                self._pad -= take
            else:
                take = min(BLOCK - len(self._head), size - pos)
                self._head += view[pos : pos + take]
                if len(self._head) == BLOCK:
                    self._header(bytes(self._head))
                    self._head.clear()
            pos += take
            self._end_if_complete()

    def close(self) -> None:
        """The stream ended: anything short of the end-of-archive blocks is a truncation."""
        if not self.finished:
            raise IntegrityError("the base backup's tar stream ends before its end-of-archive")

    def _header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self.finished = True
            return
        member = parse_header(header)
        self.sink.start(member)
        self._in_member = True
        if member.kind == REGULAR:
            self._left = member.size
            self._pad = -member.size % BLOCK

    def _end_if_complete(self) -> None:
        """An entry ends as soon as its content and padding are in, not at the next header."""
        if self._in_member and not self._left and not self._pad:
            self._in_member = False
            self.sink.end()


def parse_header(block: bytes) -> Member:
    """One ustar header block; ``IntegrityError`` for a damaged or unsupported one."""
    stored = int(_octal(block[148:156]) or 0)
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise IntegrityError("damaged tar header in the base backup (checksum mismatch)")
    kind = chr(block[156]) if block[156] else REGULAR
    if kind not in (REGULAR, DIRECTORY, SYMLINK):
        raise IntegrityError(f"unsupported tar entry type {kind!r} in the base backup")
    name = _text(block[0:100])
    prefix = _text(block[345:500]) if block[257:262] == b"ustar" else ""
    if prefix:
        name = f"{prefix}/{name}"
    return Member(
        name=name.rstrip("/"),
        kind=kind,
        size=_size(block[124:136]),
        mode=int(_octal(block[100:108]) or 0) & 0o7777,
        link=_text(block[157:257]),
    )


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _octal(field: bytes) -> int | None:
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else None


def _size(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, for files of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    return _octal(field) or 0


class Capture(MemberSink):
    """Keeps the content of a few small named entries (``backup_label``, ``backup_manifest``)."""

    def __init__(self, names: tuple[str, ...], limit: int = 64 << 20) -> None:
        self.names = names
        self.limit = limit
        self.found: dict[str, bytes] = {}
        self._current: bytearray | None = None
        self._name = ""

    def start(self, member: Member) -> None:
        keep = member.kind == REGULAR and member.name in self.names and member.size <= self.limit
        self._current = bytearray() if keep else None
        self._name = member.name

    def data(self, chunk: memoryview) -> None:
        if self._current is not None:
            self._current += chunk

    def end(self) -> None:
        if self._current is not None:
            self.found[self._name] = bytes(self._current)
        self._current = None


class Extract(MemberSink):
    """Writes the entries under ``root``; refuses a name that would land outside it.

    Directories are created 0700 and files keep their mode: PostgreSQL refuses a data
    directory that others can read.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._file: BinaryIO | None = None
        self.files = 0
        self.bytes = 0
        self.on_file: Callable[[Member], None] | None = None

    def start(self, member: Member) -> None:
        path = self._inside(member.name)
        if member.kind == DIRECTORY:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif member.kind == SYMLINK:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.symlink(member.link, path)
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, member.mode & 0o700 or 0o600)
            self._file = os.fdopen(fd, "wb")
            self.files += 1

    def data(self, chunk: memoryview) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self.bytes += len(chunk)

    def end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        """Close a half-written file (the caller removes the tree)."""
        self.end()

    def _inside(self, name: str) -> Path:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts:
            raise IntegrityError(f"refusing tar entry {name!r}: it would land outside the target")
        return self.root.joinpath(*parts)
