"""A data directory with one WAL segment pushed ahead, for the tests of ``wal-push``'s fast path."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from strongroom.core.wal_spool import file_stamp

#: Variables of the developer's shell that would change what the command does.
FOREIGN = ("PG", "BACKUP_", "STRONGROOM_", "R2_", "B2_", "CELERY_", "DJANGO_", "DATABASE_URL")
SEGMENT_SIZE = 1 << 20
SYSTEM_ID = 7_311_000_000_000_000_001
NAME = "000000010000000000000001"


def pushed_ahead_cluster(
    tmp_path: Path, *, control_id: int = SYSTEM_ID, stamped: bool = False
) -> tuple[Path, Path, Path]:
    """A data directory with one segment pushed ahead (its record in the spool: the SHA-256,
    and with ``stamped`` the file's stamp as a push ahead records it), and a config file
    naming three locations; ``(segment, record, config file)``."""
    data = tmp_path / "data"
    (data / "global").mkdir(parents=True)
    (data / "pg_wal").mkdir()
    (data / "global" / "pg_control").write_bytes(struct.pack("<Q", control_id) + bytes(8184))
    segment = data / "pg_wal" / NAME
    header = struct.pack(
        "<HHIQI4xQII", 0xD110, 2, 1, SEGMENT_SIZE, 0, SYSTEM_ID, SEGMENT_SIZE, 8192
    )
    segment.write_bytes(header + bytes(SEGMENT_SIZE - len(header)))
    record = tmp_path / "spool" / "pushed" / NAME
    record.parent.mkdir(parents=True)
    sha = hashlib.sha256(segment.read_bytes()).hexdigest()
    record.write_text(f"{sha}\n{file_stamp(os.stat(segment))}" if stamped else sha)
    config = tmp_path / "strongroom.env"
    config.write_text(
        f"BACKUP_WAL_SPOOL_DIR={tmp_path / 'spool'}\n"
        "STRONGROOM_LOCATIONS=local,r2,b2\n"
        f"BACKUP_LOCAL_PATH={tmp_path / 'local'}\n"
        "R2_BUCKET_NAME=r2-backups\nR2_ENDPOINT_URL=http://127.0.0.1:9\n"
        "B2_BUCKET_NAME=b2-backups\nB2_ENDPOINT_URL=http://127.0.0.1:9\n"
    )
    config.chmod(0o600)
    return segment, record, config
