"""The planner against a real nats-server, over a real gRPC channel on a port-0 server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluiceway.common import codec
from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.domain import ids
from sluiceway.common.domain.run import fold
from sluiceway.common.localnats import LocalNats
from sluiceway.common.settings import Settings
from sluiceway.planner.main import serve
from sluiceway.v1 import control_pb2 as cpb
from sluiceway.v1 import control_pb2_grpc
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


@dataclass
class Running:
    stub: control_pb2_grpc.ControlStub
    channel: grpc.aio.Channel
    addr: str


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    db = tmp_path / "shop.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO orders VALUES (?, ?)", [(i, f"o{i}") for i in range(1, 26)])
    con.commit()
    con.close()
    return db


@pytest.fixture
async def planner(nats_server: LocalNats, namespace: str, tmp_path: Path) -> AsyncIterator[Running]:
    ready = tmp_path / "planner.ready"
    settings = Settings.from_env(
        {
            "SLUICEWAY_NATS_URL": nats_server.url,
            "SLUICEWAY_NAMESPACE": namespace,
            "SLUICEWAY_CONTROL_ADDR": "127.0.0.1:0",
            "SLUICEWAY_READY_FILE": str(ready),
            "SLUICEWAY_INSTANCE": "planner-test",
            "SLUICEWAY_AUTH": "off",  # planning is under test here; auth: test_auth.py
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    await eventually(lambda: ready.exists() or task.done(), timeout_s=20, what="planner ready")
    if task.done():
        task.result()
    addr = json.loads(ready.read_text())["control_addr"]
    channel = grpc.aio.insecure_channel(addr)
    try:
        yield Running(control_pb2_grpc.ControlStub(channel), channel, addr)
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, timeout=20)


def _config(shop: Path, dest: Path, **export: object) -> cpb.ConfigDocument:
    fields = {"mode": "chunked", "chunk_column": "id", "chunk_size": 10, **export}
    lines = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    text = (
        "exports:\n"
        "  - name: orders\n"
        f"    source: {{engine: sqlite, path: {shop}}}\n"
        "    table: orders\n"
        f"    destination: {dest}\n" + lines
    )
    return cpb.ConfigDocument(text=text, file_name="exports.yaml")


async def _run_events(bus: Bus, run_id: str) -> list[ev.RunEvent]:
    return [e for _, e in await bus.history(run_id)]


async def test_health_reports_serving(planner: Running) -> None:
    health = health_pb2_grpc.HealthStub(planner.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="sluiceway.v1.Control"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_submit_run_appends_run_requested(
    planner: Running, bus: Bus, shop: Path, dest: Path
) -> None:
    reply = await planner.stub.SubmitRun(
        cpb.SubmitRunRequest(config=_config(shop, dest), requested_by="alice")
    )
    assert reply.export_name == "orders" and reply.stream_seq >= 1
    events = await _run_events(bus, reply.run_id)
    first = events[0]
    assert isinstance(first.body, ev.RunRequested)
    assert first.body.requested_by == "alice" and first.body.spec.table == "orders"
    assert first.producer.service == "planner"


async def test_bad_config_is_invalid_argument_naming_export_and_field(
    planner: Running, shop: Path, dest: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await planner.stub.SubmitRun(cpb.SubmitRunRequest(config=_config(shop, dest, mode="fulll")))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "export 'orders'" in err.value.details() and "field 'mode'" in err.value.details()

    spec = cpb.SubmitRunRequest()
    spec.spec.name = "orders"
    spec.spec.source.engine = "oracle"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await planner.stub.SubmitRun(spec)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'source.engine'" in err.value.details()


async def test_cancel_run_checks_the_id_and_the_run(planner: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await planner.stub.CancelRun(cpb.CancelRunRequest(run_id=""))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "run_id" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await planner.stub.CancelRun(cpb.CancelRunRequest(run_id="no-such-run"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def test_plan_run_returns_the_plan_without_appending(
    planner: Running, bus: Bus, shop: Path, dest: Path
) -> None:
    before = await bus.stream_last_seq()
    reply = await planner.stub.PlanRun(cpb.PlanRunRequest(config=_config(shop, dest)))
    assert [(c.start_key, c.end_key, c.end_inclusive) for c in reply.plan.chunks] == [
        ("1", "11", False),
        ("11", "21", False),
        ("21", "25", True),
    ]
    assert reply.plan.plan_id.startswith("plan-") and reply.spec.name == "orders"
    assert await bus.stream_last_seq() == before


async def test_a_chunked_run_is_planned_and_its_tasks_queued(
    planner: Running, bus: Bus, shop: Path, dest: Path
) -> None:
    reply = await planner.stub.SubmitRun(cpb.SubmitRunRequest(config=_config(shop, dest)))

    async def plan() -> ev.PlanResolved | None:
        for e in await _run_events(bus, reply.run_id):
            if isinstance(e.body, ev.PlanResolved):
                return e.body
        return None

    resolved = await eventually(plan, timeout_s=20, what="PlanResolved")
    assert len(resolved.chunks) == 3 and resolved.chunk_column == "id"
    assert (resolved.key_low, resolved.key_high) == ("1", "25")

    sub = await bus.js.pull_subscribe(bus.names.chunk_tasks, stream=bus.names.tasks_stream)
    tasks: list[ev.ChunkTask] = []

    async def fetched() -> bool:
        try:
            for m in await sub.fetch(10, timeout=0.5):
                tasks.append(codec.decode_task(m.data))
                await m.ack()
        except Exception:
            pass
        return len(tasks) >= 3

    await eventually(fetched, timeout_s=20, what="three chunk tasks")
    await sub.unsubscribe()
    assert sorted(t.range.index for t in tasks) == [0, 1, 2]
    assert {t.run_id for t in tasks} == {reply.run_id}
    assert {t.plan_id for t in tasks} == {resolved.plan_id}
    assert all(t.chunk_count == 3 and t.spec.name == "orders" for t in tasks)

    # cancel: CancelRequested, then RunCompleted(CANCELED) from the consumer
    cancel = await planner.stub.CancelRun(cpb.CancelRunRequest(run_id=reply.run_id, reason="x"))
    assert cancel.stream_seq > 0

    async def canceled() -> bool:
        events = await _run_events(bus, reply.run_id)
        return any(
            isinstance(e.body, ev.RunCompleted) and e.body.status is ev.RunStatus.CANCELED
            for e in events
        )

    await eventually(canceled, timeout_s=20, what="RunCompleted(CANCELED)")


async def test_a_missing_table_fails_the_run(
    planner: Running, bus: Bus, shop: Path, dest: Path
) -> None:
    config = _config(shop, dest)
    config.text = config.text.replace("table: orders", "table: nope")
    reply = await planner.stub.SubmitRun(cpb.SubmitRunRequest(config=config))

    async def failed() -> ev.RunCompleted | None:
        for e in await _run_events(bus, reply.run_id):
            if isinstance(e.body, ev.RunCompleted):
                return e.body
        return None

    done = await eventually(failed, timeout_s=30, what="RunCompleted(FAILED)")
    assert done.status is ev.RunStatus.FAILED and "planning failed" in done.error_message


async def test_schedules_and_priorities_refuse_bad_input_naming_the_field(
    planner: Running, shop: Path, dest: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await planner.stub.SubmitRun(cpb.SubmitRunRequest(config=_config(shop, dest), priority=9))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("priority:")

    request = cpb.ApplySchedulesRequest()
    spec = request.specs.add()
    spec.CopyFrom((await planner.stub.PlanRun(cpb.PlanRunRequest(config=_config(shop, dest)))).spec)
    spec.schedule.cron = "0 * * * *"
    spec.schedule.timezone = "Mars/Olympus_Mons"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await planner.stub.ApplySchedules(request)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "specs[0]" in err.value.details() and "field 'timezone'" in err.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await planner.stub.ListSchedules(cpb.ListSchedulesRequest(upcoming=51))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (await planner.stub.ListSchedules(cpb.ListSchedulesRequest())).schedules == []


async def test_a_scheduled_run_is_canceled_before_it_is_requested(
    planner: Running, bus: Bus, shop: Path, dest: Path
) -> None:
    spec = codec.from_message(
        (await planner.stub.PlanRun(cpb.PlanRunRequest(config=_config(shop, dest)))).spec,
        ev.ExportSpec,
    )
    when = datetime(2030, 1, 1, 2, 0, tzinfo=UTC)
    run_id = ids.scheduled_run_id("orders", when)
    await bus.append(
        ids.new_event(
            run_id,
            "orders",
            ev.RunScheduled(spec=spec, scheduled_at=when, cron="0 2 * * *"),
            producer=ev.Producer("scheduler", "t"),
            now=datetime.now(UTC),
        )
    )
    await planner.stub.CancelRun(cpb.CancelRunRequest(run_id=run_id, reason="holiday"))

    async def status() -> ev.RunStatus | None:
        state = fold(await _run_events(bus, run_id), run_id)
        return state.status if state.terminal else None

    assert await eventually(status, timeout_s=30, what="canceled") is ev.RunStatus.CANCELED
    kinds = [e.kind for e in await _run_events(bus, run_id)]
    assert kinds == ["scheduled", "cancel_requested", "completed"]
