"""The original design's backup and restore, reproduced for comparison.

Backup: ``pg_dump -Fc -v --no-owner --no-acl`` (its default compression) into a temporary
directory, gzip level 9 of that file, the whole ``.gz`` read into memory and encrypted with
Fernet (AES-128-CBC + HMAC-SHA256), SHA-256 of the result, written to ``OUT``.
Restore: the whole encrypted file read and decrypted in memory, gunzipped to a temporary file,
then ``pg_restore -j N``.

Connection settings come from the libpq environment (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGPASSWORD``, ``PGDATABASE``) and the key from ``BACKUP_ENCRYPTION_KEY``, as in the original.

    python bench/seed_approach.py backup OUT
    python bench/seed_approach.py restore IN --dbname DB [-j 2]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet

_COPY_BUFFER = 1 << 20


def _bin(name: str) -> str:
    bindir = os.environ.get("BACKUP_PG_BINDIR")
    return str(Path(bindir) / name) if bindir else name


def backup(out: Path) -> dict[str, object]:
    fernet = Fernet(os.environ["BACKUP_ENCRYPTION_KEY"].encode())
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="seed-backup-") as tmp:
        dump = Path(tmp) / "backup.dump"
        began = time.perf_counter()
        subprocess.run(
            [_bin("pg_dump"), "-Fc", "-v", "--no-owner", "--no-acl", "-f", str(dump)],
            check=True,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=3600,
        )
        stages["pg_dump"] = time.perf_counter() - began
        gz = dump.with_suffix(".dump.gz")
        began = time.perf_counter()
        with dump.open("rb") as f_in, gzip.open(gz, "wb", compresslevel=9) as f_out:
            shutil.copyfileobj(f_in, f_out, _COPY_BUFFER)
        stages["gzip9"] = time.perf_counter() - began
        began = time.perf_counter()
        encrypted = fernet.encrypt(gz.read_bytes())
        stages["fernet"] = time.perf_counter() - began
        began = time.perf_counter()
        checksum = hashlib.sha256(encrypted).hexdigest()
        stages["sha256"] = time.perf_counter() - began
        began = time.perf_counter()
        out.write_bytes(encrypted)
        stages["write"] = time.perf_counter() - began
        sizes = {"dump": dump.stat().st_size, "gz": gz.stat().st_size, "stored": len(encrypted)}
    return {"sha256": checksum, "sizes": sizes, "stages": stages}


def restore(source: Path, dbname: str, jobs: int) -> dict[str, object]:
    fernet = Fernet(os.environ["BACKUP_ENCRYPTION_KEY"].encode())
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="seed-restore-") as tmp:
        began = time.perf_counter()
        compressed = fernet.decrypt(source.read_bytes())
        stages["fernet"] = time.perf_counter() - began
        dump = Path(tmp) / "backup.dump"
        began = time.perf_counter()
        dump.write_bytes(gzip.decompress(compressed))
        del compressed
        stages["gunzip"] = time.perf_counter() - began
        began = time.perf_counter()
        subprocess.run(
            [_bin("pg_restore"), "--no-owner", "--no-acl", f"--jobs={jobs}", "-d", dbname,
             str(dump)],
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=3600,
        )  # fmt: skip
        stages["pg_restore"] = time.perf_counter() - began
    return {"stages": stages}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup")
    b.add_argument("out", type=Path)
    r = sub.add_parser("restore")
    r.add_argument("source", type=Path)
    r.add_argument("--dbname", required=True)
    r.add_argument("-j", "--jobs", type=int, default=2)
    args = p.parse_args(argv)
    if args.command == "backup":
        result = backup(args.out)
    else:
        result = restore(args.source, args.dbname, args.jobs)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
