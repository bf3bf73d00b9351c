"""Bad messages on the run stream never kill a service, never block an export, and are never
redelivered forever: each is terminated by the durable consumers and recorded by the tracker
as an anomaly.

Real processes (planner, committer, tracker, one worker) on a real nats-server; the bad
messages go onto the subjects the planner consumes (`requested`, `cancel_requested`) and one
that only the committer and the tracker consume (`chunk_completed`); then a real SQLite export
runs to the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from sluiceway.cli.stack import Stack, is_alive, start_stack
from sluiceway.common import codec
from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.common.localnats import LocalNats
from sluiceway.tracker.adapters.projection import TrackerStore
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc

pytestmark = pytest.mark.integration

ROWS = 3000
ACK_WAIT_S = 2.0  # short, so that a message left unacknowledged would come back within the test
CONSUMERS = ("planner-requests", "committer-runs")
SUBJECT_KINDS = ("requested", "cancel_requested", "chunk_completed")
TERMINAL = (
    events_pb2.RUN_STATUS_SUCCEEDED,
    events_pb2.RUN_STATUS_FAILED,
    events_pb2.RUN_STATUS_CANCELED,
    events_pb2.RUN_STATUS_SKIPPED,
)


def _valid(run_id: str) -> events_pb2.RunEvent:
    """A well-formed RunRequested of `run_id`, as protobuf (the bad ones are edits of it)."""
    spec = ev.ExportSpec(name="items", source=ev.SourceSpec(engine="sqlite", path="/nowhere.db"))
    body = ev.RunRequested(spec=spec, requested_by="fuzz")
    event = ev.RunEvent(
        event_id=event_id(run_id, body),
        run_id=run_id,
        export_name="items",
        occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
        body=body,
    )
    return codec.event_to_pb(event)


def _random_bytes(run_id: str) -> bytes:
    rng = random.Random(run_id)
    return b"\x00" + rng.randbytes(511)  # field number 0 is illegal: never a RunEvent


def _no_body(run_id: str) -> bytes:
    # an event kind from a newer producer: envelope only, its body in a field we do not know
    msg = events_pb2.RunEvent(event_id=f"{run_id}/from_the_future", run_id=run_id)
    return msg.SerializeToString() + b"\xba\x3e\x03abc"  # field 999, 3 bytes


def _garbage_run_id(run_id: str) -> bytes:
    msg = _valid(run_id)
    msg.run_id = "no such * run >.x"
    return msg.SerializeToString()


def _other_run(run_id: str) -> bytes:
    return _valid("someone-else").SerializeToString()  # valid, but stored under `run_id`


def _truncated(run_id: str) -> bytes:
    data = _valid(run_id).SerializeToString()
    return data[: len(data) // 2]


def _unknown_enum(run_id: str) -> bytes:
    msg = events_pb2.RunEvent(event_id=f"{run_id}/completed", run_id=run_id)
    msg.run_completed.status = 99  # a RunStatus a newer producer added
    return msg.SerializeToString()


def _time_out_of_range(run_id: str) -> bytes:
    msg = _valid(run_id)
    msg.occurred_at.seconds = 2**40  # year ~36812: valid int64, not a datetime
    return msg.SerializeToString()


def _huge(run_id: str) -> bytes:
    # a large message the stream accepts (its limit is 1 MiB)
    msg = events_pb2.RunEvent(event_id=f"{run_id}/huge", run_id=run_id)
    filler = random.Random(run_id).randbytes(60 * 1024)
    return msg.SerializeToString() + b"\xba\x3e" + _varint(len(filler)) + filler


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


BAD: dict[str, Callable[[str], bytes]] = {
    "random": _random_bytes,
    "nobody": _no_body,
    "garbage-id": _garbage_run_id,
    "other-run": _other_run,
    "truncated": _truncated,
    "enum": _unknown_enum,
    "time": _time_out_of_range,
    "huge": _huge,
}


@dataclass(frozen=True)
class Published:
    seq: int
    run_token: str  # the run id named by the subject
    kind: str  # the kind named by the subject
    label: str


@pytest.fixture
def source(tmp_path: Path) -> Path:
    db = tmp_path / "items.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    con.executemany(
        "INSERT INTO items VALUES (?, ?, ?)", [(i, f"item {i}", i / 4) for i in range(1, ROWS + 1)]
    )
    con.commit()
    con.close()
    return db


@pytest.fixture
def stack(tmp_path: Path, nats_server: LocalNats, namespace: str) -> Iterator[Stack]:
    started = start_stack(
        tmp_path / "state",
        workers=1,
        nats_url=nats_server.url,
        env={
            **os.environ,
            "SLUICEWAY_NAMESPACE": namespace,
            "SLUICEWAY_CONSUMER_ACK_WAIT_S": str(ACK_WAIT_S),
        },
    )
    try:
        yield started
    finally:
        started.stop()


async def _publish_bad(bus: Bus) -> list[Published]:
    out: list[Published] = []
    for label, make in BAD.items():
        for kind in SUBJECT_KINDS:
            token = f"bad-{label}-{kind}".replace("_", "-")
            data = make(token)
            with pytest.raises(codec.Poison):  # the premise: this version can never read it
                codec.decode(data, subject=bus.names.run_subject(token, kind))
            ack = await bus.js.publish(bus.names.run_subject(token, kind), data)
            out.append(Published(ack.seq, token, kind, label))
    return out


async def _run_export(stack: Stack, source: Path, dest: Path) -> tracker_pb2.RunSummary:
    text = (
        "exports:\n"
        "  - name: items\n"
        f"    source: {{engine: sqlite, path: {source}}}\n"
        "    table: items\n"
        "    mode: chunked\n"
        "    chunk_column: id\n"
        "    chunk_size: 1000\n"
        f"    destination: {dest}\n"
    )
    async with (
        stack.channel(stack.state.control_addr) as cch,
        stack.channel(stack.state.tracker_addr) as tch,
    ):
        control = control_pb2_grpc.ControlStub(cch)
        tracker = tracker_pb2_grpc.TrackerStub(tch)
        doc = control_pb2.ConfigDocument(text=text, file_name="items.yaml")
        submitted = await control.SubmitRun(
            control_pb2.SubmitRunRequest(config=doc, requested_by="bad-messages"), timeout=10
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                run = await tracker.GetRun(
                    tracker_pb2.GetRunRequest(
                        run_id=submitted.run_id, min_seq=submitted.stream_seq
                    ),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
            else:
                if run.status in TERMINAL:
                    return run
            await asyncio.sleep(0.2)
    raise AssertionError(f"run {submitted.run_id} did not end within 90 s")


async def _consumer_state(bus: Bus) -> dict[str, tuple[int, int, int, int]]:
    """(num_ack_pending, num_pending, num_redelivered, ack floor stream seq) per consumer."""
    out = {}
    for name in CONSUMERS:
        info = await bus.js.consumer_info(bus.names.runs_stream, name)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        out[name] = (
            info.num_ack_pending or 0,
            info.num_pending or 0,
            info.num_redelivered or 0,
            floor or 0,
        )
    return out


async def test_bad_messages_are_terminated_recorded_and_never_stop_an_export(
    stack: Stack, bus: Bus, source: Path, tmp_path: Path
) -> None:
    bad = await _publish_bad(bus)
    dest = tmp_path / "dest"

    run = await _run_export(stack, source, dest)

    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    assert run.total_rows == ROWS and run.anomalies == 0
    manifest = json.loads((dest / "items" / "runs" / run.run_id / "manifest.json").read_text())
    assert manifest["row_count"] == ROWS
    # every service is still alive
    assert stack.dead() == []
    assert all(is_alive(p) for p in stack.state.processes), stack.state.processes

    # the durable consumers hold no bad message, and none comes back after ack_wait
    last_bad = max(p.seq for p in bad)
    first = await _consumer_state(bus)
    await asyncio.sleep(ACK_WAIT_S * 1.5)
    second = await _consumer_state(bus)
    for name in CONSUMERS:
        ack_pending, pending, redelivered, floor = second[name]
        assert ack_pending == 0 and pending == 0, (name, second[name])
        assert floor >= last_bad, (name, second[name], last_bad)
        assert redelivered == first[name][2], (name, first[name], second[name])

    # the tracker recorded each bad message as an anomaly, and made no run of any
    stack.stop()
    store = TrackerStore(Path(stack.state.state_dir) / "tracker.duckdb")
    try:
        anomalies = {a["seq"]: a for a in store.anomalies()}
        for p in bad:
            assert p.seq in anomalies, (p, sorted(anomalies))
            recorded = anomalies[p.seq]
            assert (recorded["run_id"], recorded["kind"]) == (p.run_token, p.kind), recorded
            assert recorded["reason"], recorded
            assert store.get_run(p.run_token) is None, p
        assert store.get_run("someone-else") is None
        exported = store.get_run(run.run_id)
        assert exported is not None and exported["status"] == "SUCCEEDED"
        assert len(anomalies) == len(bad)
    finally:
        store.close()
