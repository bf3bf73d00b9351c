"""Cancel, fenced attempts and automatic resume, over real processes and a real PostgreSQL.

The source is a view whose rows come slowly (pg_sleep every few hundred rows, in the select
list only, so the snapshot COUNT(*) stays fast): a chunk takes seconds, long enough to cancel
it mid-read or to let its task's ack_wait expire while it runs. Rows are 2 KB wide, so that a
chunk arrives in several 16 MB batches (the reader can only stop between batches).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import codec, fingerprint, layout
from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.run import fold
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import terminal_run
from tests.support.localpg import LocalPostgres

pytestmark = pytest.mark.integration

ROWS = 24_000
SLOW_VIEW = f"""
DROP VIEW IF EXISTS slow_items;
DROP TABLE IF EXISTS items;
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO items SELECT g, repeat(md5(g::text), 64) FROM generate_series(1, {ROWS}) AS g;
CREATE OR REPLACE FUNCTION slow_tick(id bigint) RETURNS integer LANGUAGE sql VOLATILE AS
  $$ SELECT CASE WHEN id % 200 = 0 THEN (SELECT 1 FROM pg_sleep(0.05)) ELSE 0 END $$;
CREATE VIEW slow_items AS SELECT id, name, slow_tick(id) AS tick FROM items;
"""
CONFIG = """
sources:
  shop: {{engine: postgres, url_env: ITEMS_PG_URL}}
exports:
  - name: items
    source: shop
    table: public.slow_items
    mode: chunked
    chunk_column: id
    chunk_size: {chunk_size}
    batch_size: 200
    row_group_rows: 1000
    destination: {dest}
"""


@pytest.fixture(scope="module")
def items(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(SLOW_VIEW)
    pg.psql_admin("VACUUM ANALYZE items")
    return pg


def _start(tmp_path: Path, nats: LocalNats, namespace: str, pg: LocalPostgres, **env: str) -> Stack:
    return start_stack(
        tmp_path / "state",
        workers=2,
        nats_url=nats.url,
        env={**os.environ, "SLUICEWAY_NAMESPACE": namespace, "ITEMS_PG_URL": pg.url, **env},
    )


async def _submit(control: control_pb2_grpc.ControlStub, dest: Path, chunk_size: int) -> str:
    doc = control_pb2.ConfigDocument(
        text=CONFIG.format(chunk_size=chunk_size, dest=dest), export_name="items"
    )
    resp = await control.SubmitRun(control_pb2.SubmitRunRequest(config=doc, requested_by="t"))
    return str(resp.run_id)


async def _wait_for(
    bus: Bus, run_id: str, kind: str, timeout_s: float = 60.0, *, count: int = 1
) -> list[ev.RunEvent]:
    """The run's events of `kind`, once there are at least `count` of them (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = [e for _, e in await bus.history(run_id)]
        found = [e for e in events if e.kind == kind]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} {kind} for run {run_id} within {timeout_s}s")


async def _terminal(tracker: tracker_pb2_grpc.TrackerStub, run_id: str) -> tracker_pb2.RunSummary:
    return await eventually(
        lambda: terminal_run(tracker, run_id), timeout_s=90, what=f"run {run_id} ended"
    )


# ---- cancel ----------------------------------------------------------------------------------


class TestCancel:
    @pytest.fixture
    def stack(
        self, tmp_path: Path, nats_server: LocalNats, namespace: str, items: LocalPostgres
    ) -> Iterator[Stack]:
        started = _start(tmp_path, nats_server, namespace, items)
        yield started
        started.stop()

    async def test_cancel_stops_running_chunks_and_never_starts_pending_ones(
        self,
        stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
        bus: Bus,
        dest: Path,
    ) -> None:
        control, tracker = stubs
        # 8 chunks of 3,000 slow rows (about 0.75 s of sleeping each) on 2 workers
        run_id = await _submit(control, dest, chunk_size=3_000)
        await _wait_for(bus, run_id, "chunk_started")
        canceled_at = time.monotonic()
        await control.CancelRun(control_pb2.CancelRunRequest(run_id=run_id, reason="wrong day"))

        run = await _terminal(tracker, run_id)
        assert run.status == events_pb2.RUN_STATUS_CANCELED
        assert "wrong day" in run.error_message
        await _wait_for(bus, run_id, "warning", timeout_s=10)  # may follow RunCompleted
        history = [e for _, e in await bus.history(run_id)]
        state = fold(history, run_id)
        stopped = [
            e for e in history if isinstance(e.body, ev.Warning) and e.body.context == "stopped"
        ]
        started = {e.body.chunk_index for e in history if isinstance(e.body, ev.ChunkStarted)}
        # the chunks running at the cancel stopped at a batch boundary and said so
        assert stopped, "no running chunk reported that it stopped"
        # within the poll interval (1 s) plus the batch being read (here under 2 s)
        requested = next(e for e in history if isinstance(e.body, ev.CancelRequested))
        latency = (stopped[0].occurred_at - requested.occurred_at).total_seconds()
        assert latency < 5.0, latency
        assert len(started) < len(state.chunks), "every chunk started: pending ones must not"
        # no manifest, no _SUCCESS, no latest pointer; the chunks are canceled in the read model
        run_dir = layout.run_dir(str(dest), "items", run_id)
        assert not (run_dir / "manifest.json").exists() and not (run_dir / "_SUCCESS").exists()
        assert not layout.latest_pointer_path(str(dest), "items").exists()
        assert not any(isinstance(e.body, ev.ManifestCommitted) for e in history)
        chunks = await tracker.ListChunks(tracker_pb2.ListChunksRequest(run_id=run_id))
        assert {c.status for c in chunks.chunks} == {events_pb2.CHUNK_STATUS_CANCELED}
        # the workers let go quickly (a batch is 0.05 s): nothing is left in the work queue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = await bus.js.stream_info(bus.names.tasks_stream)
            if info.state.messages == 0:
                break
            await asyncio.sleep(0.1)
        assert info.state.messages == 0
        assert time.monotonic() - canceled_at < 15


# ---- fenced attempts -------------------------------------------------------------------------


class TestFencedAttempts:
    @pytest.fixture
    def stack(
        self, tmp_path: Path, nats_server: LocalNats, namespace: str, items: LocalPostgres
    ) -> Iterator[Stack]:
        # ack_wait 2 s and no heartbeat within it: a 6 s chunk is redelivered to the other
        # worker while its first attempt still runs
        started = _start(
            tmp_path,
            nats_server,
            namespace,
            items,
            SLUICEWAY_WORKER_ACK_WAIT_S="2",
            SLUICEWAY_WORKER_HEARTBEAT_S="60",
        )
        yield started
        started.stop()

    async def test_a_redelivery_while_the_first_attempt_runs_yields_one_attempts_files(
        self,
        stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
        bus: Bus,
        dest: Path,
    ) -> None:
        control, tracker = stubs
        run_id = await _submit(control, dest, chunk_size=ROWS)  # one chunk
        run = await _terminal(tracker, run_id)
        assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message

        history = [e for _, e in await bus.history(run_id)]
        attempts = {e.body.attempt for e in history if isinstance(e.body, ev.ChunkStarted)}
        assert len(attempts) >= 2, "the task was never redelivered while it ran"
        completions = [e.body for e in history if isinstance(e.body, ev.ChunkCompleted)]
        assert len(completions) == 1  # the stream keeps one ChunkCompleted per chunk
        winner = completions[0].attempt

        run_dir = layout.run_dir(str(dest), "items", run_id)
        manifest = json.loads((run_dir / "manifest.json").read_bytes())
        assert manifest["row_count"] == ROWS
        assert {p["attempt"] for p in manifest["parts"]} == {winner}
        # the other attempts' files are set aside, never deleted, and a Warning says so
        quarantine = layout.quarantine_dir(str(dest), "items", run_id)
        aside = sorted(p.name for p in quarantine.iterdir()) if quarantine.exists() else []
        assert aside, "the losing attempt left no file in _quarantine"
        assert all(f"-a{winner}." not in name for name in aside)
        on_disk = sorted(p.name for p in run_dir.iterdir())
        assert all(f"-a{winner}." in n for n in on_disk if n.lstrip(".").startswith("part-"))
        warnings = [e.body for e in history if isinstance(e.body, ev.Warning)]
        assert any(f"_quarantine/{run_id}/" in w.message for w in warnings), warnings
        # and the read model shows no anomaly for the fenced attempt beyond what the log holds
        raw = [m async for m in bus.iter_messages(bus.names.run_history(run_id))]
        assert all(codec.decode(m.data).run_id == run_id for m in raw)


# ---- automatic resume --------------------------------------------------------------------------


class TestAutomaticResume:
    @pytest.fixture
    def stack(
        self, tmp_path: Path, nats_server: LocalNats, namespace: str, items: LocalPostgres
    ) -> Iterator[Stack]:
        started = _start(
            tmp_path,
            nats_server,
            namespace,
            items,
            SLUICEWAY_WORKER_ACK_WAIT_S="4",
            SLUICEWAY_WORKER_HEARTBEAT_S="1",
            SLUICEWAY_CONSUMER_ACK_WAIT_S="3",
        )
        yield started
        started.stop()

    async def test_when_every_service_dies_the_run_resumes_with_only_unfinished_chunks(
        self,
        stack: Stack,
        stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
        bus: Bus,
        dest: Path,
    ) -> None:
        control, _ = stubs
        run_id = await _submit(control, dest, chunk_size=3_000)  # 8 slow chunks
        await _wait_for(bus, run_id, "chunk_completed")
        # one chunk done and two more started after it: some done, some mid-read, some pending
        await _wait_for(bus, run_id, "chunk_started", count=3)

        services = [p for p in stack.state.processes if p.service != "nats-server"]
        for p in services:
            os.killpg(p.pid, signal.SIGKILL)
        for p in services:
            stack.procs[p.name].wait(timeout=10)
        before = [e for _, e in await bus.history(run_id)]
        done_before = {e.body.chunk_index for e in before if isinstance(e.body, ev.ChunkCompleted)}
        assert done_before and len(done_before) < 8, "kill the stack mid-run"
        assert not any(isinstance(e.body, ev.RunCompleted) for e in before)

        for p in services:
            stack.restart(p.name)
        async with stack.channel(stack.state.tracker_addr) as channel:
            run = await _terminal(tracker_pb2_grpc.TrackerStub(channel), run_id)
        assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message

        history = [e for _, e in await bus.history(run_id)]
        starts: dict[int, list[int]] = {}
        for e in history:
            if isinstance(e.body, ev.ChunkStarted):
                starts.setdefault(e.body.chunk_index, []).append(e.body.attempt)
        # finished chunks were not read again; the others were, and every chunk completed once
        assert all(starts[i] == [1] for i in done_before), starts
        completions = [e.body for e in history if isinstance(e.body, ev.ChunkCompleted)]
        assert sorted(c.chunk_index for c in completions) == list(range(8))
        # the finished parts were kept and verified (size and fingerprint) by the commit
        validation = next(e.body for e in history if isinstance(e.body, ev.ValidationResult))
        assert validation.passed
        run_dir = layout.run_dir(str(dest), "items", run_id)
        manifest = json.loads((run_dir / "manifest.json").read_bytes())
        assert manifest["row_count"] == ROWS and manifest["part_count"] == 8
        for part in manifest["parts"]:
            assert fingerprint.of_file(run_dir / part["path"]) == (
                part["content_fingerprint"],
                part["size_bytes"],
            )
