"""The data offsets put into a real pg_dump archive written to a pipe, as a restore's scratch
copy gets them: every table found where its data block starts, and pg_restore (parallel, and
one table at a time) restores the same rows from the patched file."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from strongroom.core.postgres.archive_offsets import OffsetIndexer, parse_toc
from strongroom.sandbox.demo_data import DemoDatabase, table_digests, url_as
from strongroom.sandbox.pgcluster import PgCluster

pytestmark = pytest.mark.integration


def _dump_through_a_pipe(pg_cluster: PgCluster, url: str, path: Path) -> OffsetIndexer:
    offsets = OffsetIndexer()
    argv = [pg_cluster.binary("pg_dump"), "-Fc", "-Z0", f"--dbname={url}"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc, path.open("wb") as out:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 16):
            out.write(chunk)
            offsets.feed(chunk)
    assert proc.returncode == 0
    return offsets


def test_offsets_of_a_pipe_written_dump_restore_the_same_rows(
    demo_db: DemoDatabase, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    archive = tmp_path / "archive.dump"
    offsets = _dump_through_a_pipe(pg_cluster, demo_db.admin_url, archive)
    before = archive.read_bytes()
    toc = parse_toc(before)
    data = [e for e in toc.entries if e.desc == "TABLE DATA"]
    assert data and all(e.state == 1 for e in data)  # pg_dump could not seek back: none set

    assert not offsets.stopped
    assert offsets.patch(archive) == len(data)
    after = archive.read_bytes()
    for entry in parse_toc(after).entries:
        if entry.desc != "TABLE DATA":
            continue
        assert entry.state == 2
        at = int.from_bytes(after[entry.offset_field + 1 : entry.offset_field + 9], "little")
        assert after[at : at + 6] == b"\x01\x00" + entry.dump_id.to_bytes(4, "little")
    assert after[toc.data_start :] == before[toc.data_start :]

    name = f"offsets_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    try:
        target = url_as(demo_db.admin_url, dbname=name)
        restore = [pg_cluster.binary("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error"]
        subprocess.run([*restore, "-j", "2", f"--dbname={target}", str(archive)], check=True)
        assert table_digests(target) == table_digests(demo_db.admin_url)
        one = subprocess.run(
            [*restore, "--data-only", "--table=sale_items", "--file=-", str(archive)],
            check=True,
            capture_output=True,
        )
        rows = one.stdout.split(b"COPY public.sale_items", 1)[1].split(b"\n\\.\n", 1)[0]
        expected = table_digests(demo_db.admin_url)["public.sale_items"][0]
        assert rows.count(b"\n") == expected  # the header line's newline stands for the last row
    finally:
        pg_cluster.drop_database(name)
