"""The tracker against a real nats-server: projection, the gRPC API, live watch and rebuild."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.common.localnats import LocalNats
from sluiceway.common.settings import Settings
from sluiceway.tracker.main import serve
from sluiceway.v1 import events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _event(run_id: str, body: ev.Body, at: datetime, export: str = "orders") -> ev.RunEvent:
    return ev.RunEvent(
        event_id=event_id(run_id, body),
        run_id=run_id,
        export_name=export,
        occurred_at=at,
        body=body,
        producer=ev.Producer(service="test", instance="t1"),
        resources=ev.ResourceUsage(rss_mb_before=40.0, rss_mb_after=64.5),
    )


def run_history(run_id: str, *, at: datetime = T0, export: str = "orders") -> list[ev.RunEvent]:
    """A whole successful run: 2 chunks, one file each, gates, manifest, outcome."""
    spec = ev.ExportSpec(
        name=export, mode="chunked", format="parquet", compression="zstd", batch_size=5000
    )
    bodies: list[ev.Body] = [
        ev.RunRequested(
            spec=spec,
            requested_by="test",
            plan_id="plan-1",
            options={"force": "true", "bypass": "quality"},
        ),
        ev.PlanResolved(
            plan_id="plan-1",
            chunks=(ev.ChunkRange(index=0, end_key="100"), ev.ChunkRange(index=1, start_key="100")),
            format="parquet",
            compression="zstd",
            batch_size=5000,
            batch_size_memory_mb=64,
            tuning_profile="balanced",
            schema_fingerprint="xxh3:0123456789abcdef",
            row_estimate=200,
        ),
    ]
    for c in (0, 1):
        bodies += [
            ev.ChunkStarted(chunk_index=c, attempt=1),
            ev.FileWritten(
                file_name=f"part-{c}-0.parquet",
                rows=100,
                bytes=1000 + c,
                part_index=0,
                chunk_index=c,
                attempt=1,
                content_fingerprint=f"xxh3:{c}",
            ),
            ev.ChunkCompleted(chunk_index=c, rows=100, files=1, attempt=1),
        ]
    bodies += [
        ev.ValidationResult(passed=True),
        ev.ReconciliationResult(source_count=200, exported_rows=200, matched=True),
        ev.ManifestCommitted(
            manifest_uri=f"file:///dest/{export}/runs/{run_id}/manifest.json",
            fingerprint="xxh3:feedfacefeedface",
            row_count=200,
            part_count=2,
        ),
        ev.RunCompleted(status=ev.RunStatus.SUCCEEDED, duration_ms=4321),
    ]
    return [_event(run_id, b, at + timedelta(seconds=i), export) for i, b in enumerate(bodies)]


async def append_all(bus: Bus, events: list[ev.RunEvent]) -> int:
    last = 0
    for e in events:
        last = (await bus.append(e)).seq
    return last


@dataclass
class Tracker:
    stub: tracker_pb2_grpc.TrackerStub
    channel: grpc.aio.Channel
    addr: str


def _settings(nats_url: str, namespace: str, tmp: Path) -> dict[str, str]:
    return {
        "SLUICEWAY_NATS_URL": nats_url,
        "SLUICEWAY_NAMESPACE": namespace,
        "SLUICEWAY_TRACKER_ADDR": "127.0.0.1:0",
        "SLUICEWAY_TRACKER_DB": str(tmp / "db" / "tracker.duckdb"),
        "SLUICEWAY_READY_FILE": str(tmp / "tracker.ready"),
        "SLUICEWAY_INSTANCE": "test-tracker",
        "SLUICEWAY_AUTH": "off",  # the projection is under test here; auth: test_auth.py
    }


async def _ready_addr(ready: Path) -> str:
    await eventually(ready.exists, timeout_s=30, what="tracker ready file")
    return str(json.loads(ready.read_text())["tracker_addr"])


@pytest.fixture
async def tracker(
    nats_server: LocalNats, namespace: str, tmp_path: Path, bus: Bus
) -> AsyncIterator[Tracker]:
    env = _settings(nats_server.url, namespace, tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(Settings.from_env(env), stop))
    addr = await _ready_addr(Path(env["SLUICEWAY_READY_FILE"]))
    channel = grpc.aio.insecure_channel(addr)
    yield Tracker(tracker_pb2_grpc.TrackerStub(channel), channel, addr)
    await channel.close()
    stop.set()
    await asyncio.wait_for(task, timeout=30)


async def _caught_up(stub: tracker_pb2_grpc.TrackerStub, run_id: str, seq: int) -> object:
    try:
        return await stub.GetRun(tracker_pb2.GetRunRequest(run_id=run_id, min_seq=seq))
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            return None
        raise


async def get_run(
    stub: tracker_pb2_grpc.TrackerStub, run_id: str, seq: int
) -> tracker_pb2.RunSummary:
    return await eventually(
        lambda: _caught_up(stub, run_id, seq), timeout_s=20, what=f"tracker at seq {seq}"
    )  # type: ignore[return-value]


async def test_get_run_returns_every_applicable_field(tracker: Tracker, bus: Bus) -> None:
    history = run_history("run-a")
    last = await append_all(bus, history)
    run = await get_run(tracker.stub, "run-a", last)
    assert run.run_id == "run-a" and run.export_name == "orders"
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED
    assert (run.total_rows, run.files_produced, run.bytes_written, run.files_committed) == (
        200,
        2,
        2001,
        2,
    )
    assert run.duration_ms == 4321
    assert run.peak_rss_mb == 64.5
    assert run.retries == 0
    assert run.validated and run.reconciled and run.quality_passed and not run.schema_changed
    assert run.error_message == "" and run.skip_reason == ""
    assert (run.tuning_profile, run.batch_size, run.batch_size_memory_mb) == ("balanced", 5000, 64)
    assert (run.format, run.compression, run.mode) == ("parquet", "zstd", "chunked")
    assert run.source_count == 200 and run.manifest_parts == 2
    assert run.schema_fingerprint == "xxh3:0123456789abcdef"
    assert run.manifest_verification == "verified"
    assert run.apply_context.plan_id == "plan-1" and run.apply_context.force
    assert list(run.apply_context.bypassed) == ["quality"]
    assert run.plan_id == "plan-1"
    assert run.manifest_uri.endswith("/runs/run-a/manifest.json")
    assert run.manifest_fingerprint == "xxh3:feedfacefeedface"
    assert run.requested_at.ToDatetime(tzinfo=UTC) == T0
    assert run.finished_at.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=len(history) - 1)
    assert (run.chunks_total, run.chunks_completed, run.chunks_failed) == (2, 2, 0)
    assert run.row_estimate == 200 and run.last_seq == last and run.anomalies == 0
    assert [j.kind for j in run.journal] == [e.kind for e in history]
    assert run.journal[-1].seq == last and run.journal[-1].message == "run succeeded"

    events = await tracker.stub.GetRunEvents(tracker_pb2.GetRunEventsRequest(run_id="run-a"))
    assert next(e.kind for e in events.events) == "requested"
    assert [e.kind for e in events.events][-1] == "completed"
    seqs = [e.seq for e in events.events]
    assert seqs == sorted(seqs) and len(seqs) == len(history)
    assert events.events[0].event.run_requested.spec.name == "orders"
    assert events.next_after_seq == 0
    page = await tracker.stub.GetRunEvents(
        tracker_pb2.GetRunEventsRequest(run_id="run-a", after_seq=seqs[2], page_size=3)
    )
    assert [e.seq for e in page.events] == seqs[3:6] and page.next_after_seq == seqs[5]

    chunks = await tracker.stub.ListChunks(tracker_pb2.ListChunksRequest(run_id="run-a"))
    assert [(c.chunk_index, c.status, c.rows, c.winning_attempt) for c in chunks.chunks] == [
        (0, events_pb2.CHUNK_STATUS_COMPLETED, 100, 1),
        (1, events_pb2.CHUNK_STATUS_COMPLETED, 100, 1),
    ]
    parts = await tracker.stub.ListParts(tracker_pb2.ListPartsRequest(run_id="run-a"))
    assert [(p.file_name, p.committed) for p in parts.parts] == [
        ("part-0-0.parquet", True),
        ("part-1-0.parquet", True),
    ]


async def test_watch_run_started_mid_run_receives_the_rest_live(tracker: Tracker, bus: Bus) -> None:
    history = run_history("run-w")
    mid = await append_all(bus, history[:4])
    await get_run(tracker.stub, "run-w", mid)
    call = tracker.stub.WatchRun(tracker_pb2.WatchRunRequest(run_id="run-w", from_seq=0))
    received: list[tracker_pb2.StoredEvent] = []

    async def collect() -> None:
        async for item in call:
            received.append(item)

    collector = asyncio.create_task(collect())
    await eventually(lambda: len(received) >= 4, timeout_s=10, what="catch-up")
    for e in history[4:]:
        await bus.append(e)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(collector, timeout=20)  # the stream ends after RunCompleted
    assert [r.kind for r in received] == [e.kind for e in history]
    assert received[-1].event.run_completed.status == events_pb2.RUN_STATUS_SUCCEEDED

    # resuming from the last seq of a finished run ends at once
    tail = [
        r
        async for r in tracker.stub.WatchRun(
            tracker_pb2.WatchRunRequest(run_id="run-w", from_seq=received[-1].seq)
        )
    ]
    assert tail == []


async def test_list_runs_filters_and_pages_newest_first(tracker: Tracker, bus: Bus) -> None:
    last = 0
    for i in range(5):
        export = "orders" if i % 2 == 0 else "users"
        history = run_history(f"run-{i}", at=T0 + timedelta(hours=i), export=export)
        if i == 4:
            history = history[:3]  # still planning/running
        last = await append_all(bus, history)
    await get_run(tracker.stub, "run-4", last)

    everything = await tracker.stub.ListRuns(tracker_pb2.ListRunsRequest())
    assert [r.run_id for r in everything.runs] == ["run-4", "run-3", "run-2", "run-1", "run-0"]
    assert all(len(r.journal) == 0 for r in everything.runs)
    assert everything.next_page_token == ""

    orders = await tracker.stub.ListRuns(tracker_pb2.ListRunsRequest(export_name="orders"))
    assert [r.run_id for r in orders.runs] == ["run-4", "run-2", "run-0"]
    done = await tracker.stub.ListRuns(
        tracker_pb2.ListRunsRequest(statuses=[events_pb2.RUN_STATUS_SUCCEEDED])
    )
    assert [r.run_id for r in done.runs] == ["run-3", "run-2", "run-1", "run-0"]
    window = tracker_pb2.ListRunsRequest()
    window.requested_after.FromDatetime(T0 + timedelta(minutes=30))
    window.requested_before.FromDatetime(T0 + timedelta(hours=2, minutes=30))
    assert [r.run_id for r in (await tracker.stub.ListRuns(window)).runs] == ["run-2", "run-1"]

    seen, token = [], ""
    while True:
        page = await tracker.stub.ListRuns(
            tracker_pb2.ListRunsRequest(page_size=2, page_token=token)
        )
        seen += [r.run_id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["run-4", "run-3", "run-2", "run-1", "run-0"]


async def _code(coro: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


async def test_errors_map_to_grpc_codes(tracker: Tracker, bus: Bus) -> None:
    last = await append_all(bus, run_history("run-e")[:2])
    await get_run(tracker.stub, "run-e", last)
    s = tracker.stub
    code, detail = await _code(s.GetRun(tracker_pb2.GetRunRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "run_id is required" in detail
    code, detail = await _code(s.GetRun(tracker_pb2.GetRunRequest(run_id="bad id!")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "run_id" in detail
    code, _ = await _code(s.GetRun(tracker_pb2.GetRunRequest(run_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, detail = await _code(
        s.GetRun(tracker_pb2.GetRunRequest(run_id="run-e", min_seq=last + 1000))
    )
    assert code == grpc.StatusCode.UNAVAILABLE and f"need {last + 1000}" in detail
    code, detail = await _code(s.ListRuns(tracker_pb2.ListRunsRequest(page_size=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in detail
    code, detail = await _code(s.ListRuns(tracker_pb2.ListRunsRequest(page_token="%%garbage")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in detail
    code, _ = await _code(s.ListChunks(tracker_pb2.ListChunksRequest(run_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, detail = await _code(
        s.GetRunEvents(tracker_pb2.GetRunEventsRequest(run_id="run-e", page_size=-5))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in detail

    health = health_pb2_grpc.HealthStub(tracker.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service="sluiceway.v1.Tracker"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_undecodable_message_becomes_an_anomaly_and_the_tracker_goes_on(
    tracker: Tracker, bus: Bus
) -> None:
    history = run_history("run-p")
    await append_all(bus, history[:3])
    poison = await bus.js.publish(
        bus.names.run_subject("run-p", "chunk_started"), b"\xff\xfe not a protobuf"
    )
    last = await append_all(bus, history[3:])
    run = await get_run(tracker.stub, "run-p", last)
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED
    assert poison.seq < last
    assert poison.seq not in [j.seq for j in run.journal]


async def test_a_deleted_database_is_rebuilt_identically_from_the_stream(
    nats_server: LocalNats, namespace: str, tmp_path: Path, bus: Bus
) -> None:
    """The real process (python -m sluiceway.tracker): SIGTERM, delete its DuckDB, restart."""
    env = {**os.environ, **_settings(nats_server.url, namespace, tmp_path)}
    ready = Path(env["SLUICEWAY_READY_FILE"])
    late = _event(  # the stream refuses a second ChunkCompleted; a late FileWritten is fenced
        "run-r1",
        ev.FileWritten(file_name="late.parquet", rows=1, part_index=0, chunk_index=0, attempt=2),
        T0 + timedelta(minutes=5),
    )
    await append_all(bus, run_history("run-r1"))
    await append_all(bus, run_history("run-r2", at=T0 + timedelta(hours=1))[:5])
    last = await append_all(bus, [late])

    async def snapshot() -> tuple[list[bytes], list[bytes]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sluiceway.tracker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            addr = await _ready_addr(ready)
            async with grpc.aio.insecure_channel(addr) as channel:
                stub = tracker_pb2_grpc.TrackerStub(channel)
                runs = [await get_run(stub, r, last) for r in ("run-r1", "run-r2")]
                listed = await stub.ListRuns(tracker_pb2.ListRunsRequest())
                events = await stub.GetRunEvents(tracker_pb2.GetRunEventsRequest(run_id="run-r1"))
                parts = await stub.ListParts(tracker_pb2.ListPartsRequest(run_id="run-r1"))
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=30)
            ready.unlink(missing_ok=True)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert runs[0].anomalies == 1  # the late file of a losing attempt
        return (
            [r.SerializeToString(deterministic=True) for r in runs],
            [m.SerializeToString(deterministic=True) for m in (listed, events, parts)],
        )

    first = await snapshot()
    db = Path(env["SLUICEWAY_TRACKER_DB"])
    assert db.exists()
    db.unlink()
    Path(str(db) + ".wal").unlink(missing_ok=True)
    second = await snapshot()
    assert first == second
