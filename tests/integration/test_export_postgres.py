"""One export end to end over the real parts: 1M PostgreSQL rows, 2 worker processes.

The stack runs as separate processes (planner, committer, tracker, 2 workers) against a real
nats-server; the checks look at the outcome: part files, manifest, read model, the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import duckdb
import grpc
import psutil
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import fingerprint, telemetry
from sluiceway.common.bus import Bus, Names, connect
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.localpg import PASSWORD, LocalPostgres
from tests.support.securenats import SecureNats

pytestmark = pytest.mark.integration

ROWS = 1_000_000
MARKER = "row-marker-7f3a9c"  # a value that must never appear on the bus

CREATE = f"""
DROP TABLE IF EXISTS orders;
CREATE TABLE orders (
  id bigint PRIMARY KEY,
  customer_id integer NOT NULL,
  name text NOT NULL,
  amount numeric(12,2) NOT NULL,
  payload jsonb,
  created_at timestamptz NOT NULL,
  note text
);
INSERT INTO orders
SELECT g,
       (g * 7919) % 100000,
       CASE WHEN g = 500000 THEN '{MARKER}'
            ELSE 'Ĉliento ' || g || ' 東京 ☕' END,
       ((g * 37) % 1000000) / 100.0 - 2500,
       CASE WHEN g % 10 = 0 THEN NULL
            ELSE jsonb_build_object('sku', 'S' || (g % 977), 'qty', g % 13) END,
       timestamptz '2026-01-01 00:00:00+00' + (g * interval '7 seconds'),
       CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || (g % 101) END
FROM generate_series(1::bigint, {ROWS}::bigint) AS g;
"""

# One text line per row, rendered identically by PostgreSQL and DuckDB, hashed in id order.
PG_CHECKSUM = """
SELECT md5(string_agg(concat_ws('|', id, customer_id, name, amount::text,
                                coalesce(payload::text, '<null>'),
                                (extract(epoch FROM created_at) * 1000000)::bigint,
                                coalesce(note, '<null>')), E'\\n' ORDER BY id))
FROM orders
"""
DUCK_CHECKSUM = """
SELECT md5(string_agg(concat_ws('|', id, customer_id, name, amount::varchar,
                                coalesce(payload, '<null>'),
                                epoch_us(created_at),
                                coalesce(note, '<null>')), chr(10) ORDER BY id))
FROM read_parquet(?)
"""


@pytest.fixture(scope="module")
def orders_table(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(CREATE)
    pg.psql_admin("VACUUM ANALYZE orders")
    return pg


@pytest.fixture
def stack_env(
    namespace: str, orders_table: LocalPostgres, secure_nats: SecureNats
) -> dict[str, str]:
    return {
        **os.environ,
        "SLUICEWAY_NAMESPACE": namespace,
        "ORDERS_PG_URL": orders_table.url,
        **secure_nats.env(),
    }


@pytest.fixture
def stack(tmp_path: Path, secure_nats: SecureNats, stack_env: dict[str, str]) -> Iterator[Stack]:
    """The stack as deployed: NATS over TLS as one user per service, authenticated APIs."""
    started = start_stack(
        tmp_path / "state",
        workers=2,
        nats_url=secure_nats.url,
        nats_users_dir=secure_nats.users_dir,
        env=stack_env,
    )
    yield started
    started.stop()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "exports.yaml"
    path.write_text(
        """
sources:
  shop: {engine: postgres, url_env: ORDERS_PG_URL}
exports:
  - name: orders
    source: shop
    table: public.orders
    mode: chunked
    chunk_column: id
    chunk_size: 125000
    destination: out
"""
    )
    return path


@pytest.fixture
async def channels(stack: Stack) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    control = stack.channel(stack.state.control_addr)
    tracker = stack.channel(stack.state.tracker_addr)
    yield control, tracker
    await control.close()
    await tracker.close()


async def _watch(stub: tracker_pb2_grpc.TrackerStub, run_id: str) -> list[tracker_pb2.StoredEvent]:
    got: list[tracker_pb2.StoredEvent] = []
    async for item in stub.WatchRun(tracker_pb2.WatchRunRequest(run_id=run_id)):
        got.append(item)
    return got


async def _all_events(
    stub: tracker_pb2_grpc.TrackerStub, run_id: str
) -> list[tracker_pb2.StoredEvent]:
    out: list[tracker_pb2.StoredEvent] = []
    after = 0
    for _ in range(1000):
        page = await stub.GetRunEvents(
            tracker_pb2.GetRunEventsRequest(run_id=run_id, after_seq=after, page_size=50)
        )
        out.extend(page.events)
        if not page.next_after_seq:
            return out
        after = page.next_after_seq
    raise AssertionError("GetRunEvents never ended")


async def _terminal(
    stub: tracker_pb2_grpc.TrackerStub, run_id: str
) -> tracker_pb2.RunSummary | None:
    try:
        run = await stub.GetRun(tracker_pb2.GetRunRequest(run_id=run_id))
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
            return None
        raise
    done = (
        events_pb2.RUN_STATUS_SUCCEEDED,
        events_pb2.RUN_STATUS_FAILED,
        events_pb2.RUN_STATUS_CANCELED,
        events_pb2.RUN_STATUS_SKIPPED,
    )
    return run if run.status in done else None


def _restart_tracker(stack: Stack, env: dict[str, str]) -> None:
    """Stop the tracker, delete its DuckDB file, start it again on the same address."""
    info = next(p for p in stack.state.processes if p.service == "tracker")
    popen = stack.procs[info.name]
    popen.send_signal(signal.SIGTERM)
    popen.wait(timeout=30)
    state_dir = Path(stack.state.state_dir)
    for f in state_dir.glob("tracker.duckdb*"):
        f.unlink()
    ready = state_dir / "run" / f"{info.name}.json"
    ready.unlink()
    with open(info.log, "ab") as log:
        new = subprocess.Popen(
            [sys.executable, "-m", "sluiceway.tracker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **stack.envs[info.name],  # its principals file among them
                **env,
                "SLUICEWAY_NATS_URL": stack.state.nats_url,
                "SLUICEWAY_TRACKER_DB": str(state_dir / "tracker.duckdb"),
                "SLUICEWAY_TRACKER_ADDR": stack.state.tracker_addr,
                "SLUICEWAY_READY_FILE": str(ready),
                "SLUICEWAY_INSTANCE": info.name,
            },
            start_new_session=True,
        )
    stack.procs[info.name] = new
    # stop() signals only processes whose pid *and* start time match what it recorded
    info.pid, info.create_time = new.pid, psutil.Process(new.pid).create_time()


async def test_a_chunked_postgres_export_runs_end_to_end(
    stack: Stack,
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel],
    config_file: Path,
    orders_table: LocalPostgres,
    secure_nats: SecureNats,
    namespace: str,
    stack_env: dict[str, str],
) -> None:
    control = control_pb2_grpc.ControlStub(channels[0])
    tracker = tracker_pb2_grpc.TrackerStub(channels[1])
    submitted = await control.SubmitRun(
        control_pb2.SubmitRunRequest(
            config=control_pb2.ConfigDocument(
                text=config_file.read_text(),
                base_dir=str(config_file.parent),
                file_name=config_file.name,
            ),
            requested_by="test",
        )
    )
    run_id = submitted.run_id
    watcher = asyncio.create_task(_watch(tracker, run_id))

    run = await eventually(
        lambda: _terminal(tracker, run_id), timeout_s=300, interval_s=0.5, what="the run ends"
    )
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message

    # ---- the files and the manifest
    source_count = int(orders_table.psql_admin("SELECT count(*) FROM orders"))
    assert source_count == ROWS
    run_dir = config_file.parent / "out" / "orders" / "runs" / run_id
    manifest_bytes = (run_dir / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    assert (run_dir / "_SUCCESS").read_text().strip() == fingerprint.of_bytes(manifest_bytes)
    assert manifest["row_count"] == source_count
    assert manifest["row_count"] == sum(p["rows"] for p in manifest["parts"])
    assert manifest["part_count"] == len(manifest["parts"]) > 1
    paths = [run_dir / p["path"] for p in manifest["parts"]]
    assert len(set(paths)) == len(paths)
    for part, path in zip(manifest["parts"], paths, strict=True):
        assert fingerprint.of_file(path) == (part["content_fingerprint"], part["size_bytes"])
    latest = json.loads((config_file.parent / "out" / "orders" / "manifest.json").read_text())
    assert latest["run_id"] == run_id

    duck = duckdb.connect()
    exported = duck.execute(DUCK_CHECKSUM, [[str(p) for p in paths]]).fetchone()
    assert exported is not None
    assert exported[0] == orders_table.psql_admin(PG_CHECKSUM)

    # ---- the read model
    assert run.run_id == run_id and run.export_name == "orders"
    assert run.total_rows == source_count
    assert run.files_committed == manifest["part_count"] == run.manifest_parts
    assert run.files_produced >= run.files_committed
    assert run.bytes_written == sum(p["size_bytes"] for p in manifest["parts"])
    assert run.duration_ms > 0 and run.peak_rss_mb > 0
    assert run.validated and run.quality_passed and run.reconciled
    assert run.source_count == source_count
    assert (run.format, run.mode, run.compression) == ("parquet", "chunked", "zstd")
    assert run.batch_size > 0
    assert run.schema_fingerprint == manifest["schema_fingerprint"]
    assert run.schema_fingerprint.startswith("xxh3:")
    assert run.manifest_verification == "verified"
    assert run.chunks_total == run.chunks_completed == 8
    assert not run.error_message and not run.skip_reason

    events = await _all_events(tracker, run_id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "requested" and kinds[1] == "plan_resolved" and kinds[-1] == "completed"
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert kinds.count("manifest_committed") == 1
    assert kinds.count("chunk_completed") == 8
    assert [j.seq for j in run.journal] == [e.seq for e in events]

    live = await asyncio.wait_for(watcher, timeout=30)
    assert [e.seq for e in live] == [e.seq for e in events]
    assert [e.event for e in live] == [e.event for e in events]

    # ---- the stream carries no rows and no secret
    bus_nc = await connect(
        secure_nats.url, name="scan", connect_timeout_s=10, options=secure_nats.options()
    )
    try:
        bus = Bus(bus_nc, Names(namespace))
        stored = [m async for m in bus.iter_messages(bus.names.runs_all)]
        raw = [m.data for m in stored]
    finally:
        await bus_nc.drain()
    assert len(raw) == len(events)
    blob = b"\n".join(raw)
    assert PASSWORD.encode() not in blob
    assert orders_table.url.encode() not in blob
    assert MARKER.encode() not in blob
    assert "Ĉliento".encode() not in blob
    assert max(len(m) for m in raw) < 16 * 1024
    # the run is one trace: every event carries a traceparent with the run's trace id
    trace_ids = {(m.headers or {}).get("traceparent", "-").split("-")[1] for m in stored}
    assert trace_ids == {f"{telemetry.run_trace_ids(run_id)[0]:032x}"}

    # nor do the services' logs or the manifest
    logs = b"".join(p.read_bytes() for p in (Path(stack.state.state_dir) / "logs").glob("*.log"))
    assert logs and PASSWORD.encode() not in logs and MARKER.encode() not in logs
    for nats_password in secure_nats.passwords.values():  # nor the NATS users' passwords
        assert nats_password.encode() not in blob and nats_password.encode() not in logs
    assert PASSWORD.encode() not in manifest_bytes

    # ---- the read model rebuilds from the stream
    before_chunks = await tracker.ListChunks(tracker_pb2.ListChunksRequest(run_id=run_id))
    before_parts = await tracker.ListParts(tracker_pb2.ListPartsRequest(run_id=run_id))
    _restart_tracker(stack, stack_env)
    after = await eventually(lambda: _terminal(tracker, run_id), timeout_s=60, what="rebuilt")
    assert after == run
    assert await tracker.ListChunks(tracker_pb2.ListChunksRequest(run_id=run_id)) == before_chunks
    assert await tracker.ListParts(tracker_pb2.ListPartsRequest(run_id=run_id)) == before_parts
    shutil.rmtree(run_dir.parent.parent, ignore_errors=True)
