"""Retention through a real stack: with a 2-second window, ended runs are archived and purged
from the run stream, and everything built on them still answers the same.

The stack runs with SLUICEWAY_RUNS_MAX_AGE=2s and its archive in the test's directory. After
an incremental run has ended and aged out, the stream no longer holds a single event of it,
yet: the live tracker answers GetRun, ListRuns, ListChunks, ListParts and GetRunEvents as
before; a new tracker on an empty file (the archive, then the stream) and a `tracker rebuild`
give the same answers (one without the archive tells its readiness probe it cannot); and the
export's next run continues from the cursor that run committed (the export state outlives the
events it was copied from).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.client import bearer_interceptors
from sluiceway.common import codec, layout
from sluiceway.common.bus import Bus
from sluiceway.common.config import load_text
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.tracker.archive import Archive
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import ReadModel, fresh_tracker, read_model, terminal_run
from tests.support.localpg import LocalPostgres

pytestmark = pytest.mark.integration

CREATE = """
DROP TABLE IF EXISTS retained;
CREATE TABLE retained (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, v text);
INSERT INTO retained
SELECT g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute', 'v' || g
FROM generate_series(1, 3000) AS g;
"""
CONFIG = """
sources:
  shop: {{engine: postgres, url_env: RETAINED_PG_URL}}
exports:
  - name: retained
    source: shop
    table: public.retained
    mode: incremental
    cursor_column: updated_at
    chunk_column: id
    chunk_count: 3
    destination: {dest}
"""
WINDOW = "2s"
TIMEOUT_S = 90


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, pg: LocalPostgres
) -> Iterator[Stack]:
    pg.psql_admin(CREATE)
    env = {
        **os.environ,
        "SLUICEWAY_NAMESPACE": namespace,
        "RETAINED_PG_URL": pg.url,
        "SLUICEWAY_RUNS_MAX_AGE": WINDOW,
        "SLUICEWAY_ARCHIVE_INTERVAL_S": "0.5",
        "SLUICEWAY_ARCHIVE": str(tmp_path / "archive"),
    }
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


async def _submit(stack: Stack, dest: Path, url: str) -> tracker_pb2.RunSummary:
    spec = load_text(CONFIG.format(dest=dest), env={"RETAINED_PG_URL": url})["retained"]
    message = events_pb2.ExportSpec()
    codec.to_message(spec, message)
    control = stack.channel(stack.state.control_addr)
    tracker = stack.channel(stack.state.tracker_addr)
    try:
        reply = await control_pb2_grpc.ControlStub(control).SubmitRun(
            control_pb2.SubmitRunRequest(spec=message), timeout=30
        )
        stub = tracker_pb2_grpc.TrackerStub(tracker)
        return await eventually(
            lambda: terminal_run(stub, reply.run_id), timeout_s=TIMEOUT_S, what="run ended"
        )
    finally:
        await control.close()
        await tracker.close()


async def _list_runs(addr: str, token: str) -> list[tracker_pb2.RunSummary]:
    channel = grpc.aio.insecure_channel(addr, interceptors=bearer_interceptors(token))
    try:
        reply = await tracker_pb2_grpc.TrackerStub(channel).ListRuns(
            tracker_pb2.ListRunsRequest(page_size=100), timeout=10
        )
        return sorted(reply.runs, key=lambda r: r.run_id)
    finally:
        await channel.close()


async def _answers(
    addr: str, run_ids: list[str], min_seq: int, token: str
) -> tuple[list[ReadModel], list[tracker_pb2.RunSummary]]:
    models = [await read_model(addr, r, min_seq, TIMEOUT_S, token) for r in run_ids]
    return models, await _list_runs(addr, token)


async def _purged(bus: Bus, last_seq: int) -> bool:
    info = await bus.js.stream_info(bus.names.runs_stream)
    return info.state.first_seq > last_seq


TRACKER = "sluiceway.v1.Tracker"


async def _health(addr: str, service: str) -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


def _ids(dest: Path, run_id: str) -> list[int]:
    run_dir = layout.run_dir(str(dest), "retained", run_id)
    rows = duckdb.sql(f"SELECT id FROM read_parquet('{run_dir}/part-*.parquet') ORDER BY id")
    return [r[0] for r in rows.fetchall()]


async def test_ended_runs_leave_the_stream_and_every_answer_stays_the_same(
    stack: Stack, pg: LocalPostgres, bus: Bus, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    token = stack.token()
    first = await _submit(stack, dest, pg.url)
    assert first.status == events_pb2.RUN_STATUS_SUCCEEDED, first.error_message
    history = await bus.history(first.run_id)
    first_last_seq = history[-1][0]
    before = await _answers(stack.state.tracker_addr, [first.run_id], first_last_seq, token)
    assert len(before[0][0].events) == len(history)

    # aged out: archived, then purged. Not one event of the run is left on the stream
    await eventually(
        lambda: _purged(bus, first_last_seq),
        timeout_s=30,
        interval_s=0.2,
        what="the ended run purged from the run stream",
    )
    assert await bus.history(first.run_id) == []
    assert await bus.last_on_subject(bus.names.run_subject(first.run_id, "completed")) is None
    archived = Archive(str(tmp_path / "archive"), bus.names.namespace)
    assert archived.last_seq() >= first_last_seq
    after = await _answers(stack.state.tracker_addr, [first.run_id], first_last_seq, token)
    assert after == before

    # the export state outlived the run's events: the next run starts at its cursor
    pg.psql_admin(
        "INSERT INTO retained SELECT g, timestamptz '2026-03-01 00:00:00+00' + g * interval '1 s',"
        " 'new' FROM generate_series(3001, 3500) AS g"
    )
    second = await _submit(stack, dest, pg.url)
    assert second.status == events_pb2.RUN_STATUS_SUCCEEDED, second.error_message
    assert _ids(dest, second.run_id) == list(range(3001, 3501))
    commit = await bus.last_commit("retained")
    assert commit is not None and commit.run_id == second.run_id
    assert isinstance(commit.body, ev.ManifestCommitted)
    # id 3000's updated_at: where the purged run's commit left the cursor
    assert datetime.fromisoformat(commit.body.cursor_low) == datetime(2026, 1, 3, 2, tzinfo=UTC)
    second_last = (await bus.history(second.run_id))[-1][0]

    runs = [first.run_id, second.run_id]
    live = await _answers(stack.state.tracker_addr, runs, second_last, token)
    assert live[0][0] == before[0][0]

    # a new replica on an empty file: the archive, then the stream
    env = stack.envs["tracker-1"]
    # without the archive it cannot: it says so to a readiness probe (the process stays up)
    blind = {k: v for k, v in env.items() if k != "SLUICEWAY_ARCHIVE"}
    with fresh_tracker(tmp_path / "blind", blind, stack.state.nats_url) as addr:

        async def not_ready() -> bool:
            return await _health(addr, TRACKER) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_ready, timeout_s=30, what="the replica with no archive is not ready")
        assert await _health(addr, "") == health_pb2.HealthCheckResponse.SERVING

    with fresh_tracker(tmp_path / "replica", env, stack.state.nats_url) as addr:
        assert await _answers(addr, runs, second_last, token) == live

    # `tracker rebuild` into a file of its own, then served by a tracker on that file
    rebuilt = tmp_path / "rebuilt" / "tracker-rebuilt.duckdb"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sluiceway.tracker", "rebuild", "--db", str(rebuilt)],
        env={**env, "SLUICEWAY_NATS_URL": stack.state.nats_url},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    with fresh_tracker(rebuilt.parent, env, stack.state.nats_url, instance="tracker-rebuilt") as a:
        assert await _answers(a, runs, second_last, token) == live
