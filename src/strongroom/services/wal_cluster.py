"""Which cluster a WAL file belongs to, and the answer for a file already pushed ahead.

This is the fast path of ``wal-push``: PostgreSQL starts one process per segment, and most
calls under load are for files an earlier call pushed ahead. Answering those needs the file's
stamp (or, failing that, its SHA-256), the cluster's identity and the spool, not the key, the
codecs or any location, so this module imports none of them (no Tink, no zstd, no boto3): the
call returns in the time Python takes to start.
"""

from __future__ import annotations

import os
from pathlib import Path

from strongroom.core import wal
from strongroom.core.wal_spool import Spool, file_stamp
from strongroom.errors import ConfigError, ForeignWal, StorageError

TYPE_CHECKING = False  # not typing's: importing typing is a tenth of the fast path
if TYPE_CHECKING:
    from strongroom.config import Config, WalSettings


def data_dir_of(config: Config | WalSettings, wal_path: Path | None = None) -> Path:
    """The cluster's data directory: ``STRONGROOM_PGDATA``, else the parent of ``pg_wal``."""
    from strongroom.config import Config  # loaded already by every caller that has one

    settings = config.wal if isinstance(config, Config) else config
    return cluster_data_dir(settings.pgdata, wal_path)


def cluster_data_dir(pgdata: str | None, wal_path: Path | None = None) -> Path:
    """:func:`data_dir_of` from the setting itself (the executable's fast path has no
    :class:`~strongroom.config.WalSettings`: that module costs a third of the call)."""
    if pgdata:
        return Path(pgdata)
    if wal_path is not None:
        parent = wal_path.absolute().parent
        if parent.name == "pg_wal":
            return parent.parent
    raise ConfigError(
        "cannot tell which cluster this WAL belongs to: the file is not in a pg_wal directory; "
        "set STRONGROOM_PGDATA to the cluster's data directory"
    )


def cluster_scope(data_dir: Path) -> str:
    """The archive's scope: the cluster's system identifier, from its ``pg_control``."""
    try:
        return str(wal.control_system_identifier(data_dir))
    except OSError as exc:
        raise ConfigError(
            f"{exc}: run as the server's OS user, or set STRONGROOM_PGDATA to a data "
            "directory this user may read"
        ) from None


def check_header(scope: str, name: str, data: bytes) -> int | None:
    """A segment must be this cluster's and the one its name says; its segment size."""
    parsed = wal.parse_name(name)
    if not parsed.has_page_header:
        return None
    header = wal.read_page_header(data)
    if str(header.system_identifier) != scope:
        raise ForeignWal(
            f"{name} belongs to the cluster with system identifier "
            f"{header.system_identifier}, but this archive is cluster {scope}: refused "
            "(is archive_command or STRONGROOM_PGDATA pointing at the wrong cluster?)"
        )
    if parsed.kind == "segment":
        wal.check_segment(parsed, header)
    return header.segment_size


def read_wal_file(file: Path) -> tuple[bytes, str]:
    """The whole file and its stamp (:func:`~strongroom.core.wal_spool.file_stamp`) as it was
    read; the stamp is ``""`` when the file changed while it was read."""
    try:
        with file.open("rb") as raw:
            before = file_stamp(os.fstat(raw.fileno()))
            data = raw.read()
            after = file_stamp(os.fstat(raw.fileno()))
    except OSError as exc:
        raise _unreadable(file, exc) from None
    return data, before if before == after else ""


def _unreadable(file: Path, exc: OSError) -> ConfigError | StorageError:
    if isinstance(exc, FileNotFoundError):
        return ConfigError(f"{file} does not exist (archive_command passes %p)")
    return StorageError(f"cannot read {file}: {exc.strerror or exc}")


#: What :func:`hash_wal_file` keeps of the file: more than any page header.
HEAD_BYTES = 8192


def hash_wal_file(file: Path) -> tuple[bytes, str]:
    """The file's first bytes and its SHA-256, read through one small buffer: a whole 16 MB
    segment read into memory first cost the fast path 4,096 fresh pages (a fifth of its CPU,
    in the kernel); the errors are :func:`read_wal_file`'s."""
    import hashlib  # here: a call answered by the file's stamp hashes nothing (OpenSSL, 3 ms)

    try:
        with file.open("rb", buffering=0) as raw:
            head = raw.read(HEAD_BYTES) or b""
            digest = hashlib.sha256(head)
            buffer = bytearray(1 << 18)
            view = memoryview(buffer)
            while count := raw.readinto(buffer):
                digest.update(view[:count])
    except OSError as exc:
        raise _unreadable(file, exc) from None
    return head, digest.hexdigest()


def unchanged_head(file: Path, stamp: str) -> bytes | None:
    """The file's first bytes when it is still the version ``stamp`` names, else ``None``
    (then it is hashed whole); the errors are :func:`read_wal_file`'s."""
    try:
        with file.open("rb", buffering=0) as raw:
            if file_stamp(os.fstat(raw.fileno())) != stamp:
                return None
            return raw.read(HEAD_BYTES) or b""
    except OSError as exc:
        raise _unreadable(file, exc) from None


def pushed_ahead(wal_settings: WalSettings, path: str) -> bool:
    """Whether ``path`` was pushed ahead with exactly this content (the record is then used up:
    a later re-push after a crash is checked against the archive itself)."""
    return answered_from_spool(wal_settings.spool_dir, wal_settings.pgdata, path)


def answered_from_spool(spool_dir: str | None, pgdata: str | None, path: str) -> bool:
    """:func:`pushed_ahead` from the two settings it reads."""
    if not spool_dir:
        return False
    file = Path(path)
    try:
        wal.parse_name(file.name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    spool = Spool(spool_dir)
    recorded, stamp = spool.pushed(file.name)
    if not recorded:
        return False
    # the version of the file that was pushed, unchanged since (PostgreSQL never writes a file
    # it has marked .ready): no need to read 16 MB again, as pgBackRest's asynchronous
    # archive-push trusts its spool's .ok file (which this stamp checks besides)
    head, sha = (unchanged_head(file, stamp) if stamp else None), recorded
    if head is None:
        head, sha = hash_wal_file(file)
    check_header(cluster_scope(cluster_data_dir(pgdata, file)), file.name, head)
    if sha != recorded:
        return False
    spool.forget_pushed(file.name)
    return True
