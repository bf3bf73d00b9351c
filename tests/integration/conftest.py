"""Real parts for integration tests: a nats-server and a PostgreSQL cluster on free ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sluiceway.common import bus as busmod
from sluiceway.common.localnats import LocalNats
from tests.support.localpg import LocalPostgres


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNats]:
    server = LocalNats(store_dir=tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    cluster = LocalPostgres().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def namespace() -> str:
    """Unique stream and subject prefix per test."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def bus(nats_server: LocalNats, namespace: str) -> AsyncIterator[busmod.Bus]:
    nc = await busmod.connect(nats_server.url, name="test", connect_timeout_s=10)
    b = busmod.Bus(nc, busmod.Names(namespace))
    await b.ensure_streams()
    yield b
    await nc.drain()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d
