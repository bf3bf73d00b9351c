"""consistent_snapshot on a real PostgreSQL, through a real stack (one worker, ten chunks).

The worker's read of chunk 1 is held at a gate (an advisory lock the test holds, taken by the
view's rows of chunk 1 in the reading COPY only), so the order is certain: chunk 0 has been
read, chunk 1 has imported its snapshot, and the rows of chunk 9 are changed by another session
before any later chunk is read. With the option the export equals the table as of the plan;
without it, chunk 9 shows the change. Killing the planner, which holds the snapshot, fails the
chunks not yet read with a named error; the holding session ends with the run.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import codec, layout
from sluiceway.common.bus import Bus
from sluiceway.common.config import load_text
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import terminal_run, wait_sigkilled
from tests.support.localpg import LocalPostgres

pytestmark = pytest.mark.integration

GATE_KEY = 470_318  # the advisory lock the gate waits for
GATED_ID = 60  # a row of chunk 1: [60, 110)
CREATE = f"""
DROP VIEW IF EXISTS snap_view;
DROP TABLE IF EXISTS snap_rows;
CREATE TABLE snap_rows (id bigint PRIMARY KEY, v text NOT NULL);
CREATE OR REPLACE FUNCTION snap_gate(k bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  -- only the worker's row read (a binary COPY) waits; the planner and the counts never do
  IF k = {GATED_ID} AND current_query() ILIKE 'COPY%' THEN
    PERFORM pg_advisory_lock_shared({GATE_KEY});
    PERFORM pg_advisory_unlock_shared({GATE_KEY});
  END IF;
  RETURN true;
END $$;
CREATE VIEW snap_view AS SELECT id, v FROM snap_rows WHERE snap_gate(id);
"""
FILL = """
TRUNCATE snap_rows;
INSERT INTO snap_rows SELECT g * 10, 'v' || g FROM generate_series(1, 50) AS g;
"""
# after chunk 0 was read: an update, a delete and an insert, all in chunk 9 ([460, 510))
CHANGE = """
UPDATE snap_rows SET v = 'changed' WHERE id = 470;
DELETE FROM snap_rows WHERE id = 480;
INSERT INTO snap_rows VALUES (485, 'inserted');
"""
CONFIG = """
sources:
  shop: {{engine: postgres, url_env: SNAP_PG_URL}}
exports:
  - name: snap
    source: shop
    table: public.snap_view
    mode: chunked
    chunk_column: id
    chunk_size: 50
    lock_timeout_s: 120
    consistent_snapshot: {consistent}
    destination: {dest}
"""
CHUNKS = 10


@pytest.fixture(scope="module")
def tables(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(CREATE)
    return pg


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, tables: LocalPostgres
) -> Iterator[Stack]:
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, "SNAP_PG_URL": tables.url}
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


@pytest.fixture
def gate(tables: LocalPostgres) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A session holding the gate's advisory lock: chunk 1's row read waits until it is
    released (closing the session releases it too)."""
    con = psycopg.connect(tables.url, autocommit=True)
    con.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))
    yield con
    con.close()


def _rows(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as con:
        return [(int(i), str(v)) for i, v in con.execute("SELECT id, v FROM snap_rows ORDER BY id")]


def _exported(dest: Path, run_id: str) -> list[tuple[int, str]]:
    run_dir = layout.run_dir(str(dest), "snap", run_id)
    rel = duckdb.sql(f"SELECT id, v FROM read_parquet('{run_dir}/part-*.parquet') ORDER BY id")
    return [(int(i), str(v)) for i, v in rel.fetchall()]


def _holders(url: str, run_id: str) -> list[str]:
    """States of the sessions holding this run's snapshot (their application_name names it)."""
    with psycopg.connect(url) as con:
        rows = con.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = %s",
            (f"sluiceway-snapshot {run_id}",),
        ).fetchall()
    return [str(r[0]) for r in rows]


def _gate_waiters(url: str) -> int:
    with psycopg.connect(url) as con:
        row = con.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return int(row[0]) if row else 0


async def _submit(
    control: control_pb2_grpc.ControlStub, dest: Path, url: str, *, consistent: bool
) -> str:
    text = CONFIG.format(dest=dest, consistent="true" if consistent else "false")
    spec = load_text(text, env={"SNAP_PG_URL": url})["snap"]
    assert spec.consistent_snapshot is consistent
    message = events_pb2.ExportSpec()
    codec.to_message(spec, message)
    reply = await control.SubmitRun(control_pb2.SubmitRunRequest(spec=message))
    return reply.run_id


async def _at_the_gate(bus: Bus, url: str, run_id: str) -> None:
    """Chunk 0 is completed and chunk 1's row read waits at the gate (its snapshot taken)."""

    async def there() -> bool:
        if await bus.chunk_winner(run_id, 0) is None or await bus.last_start(run_id, 1) is None:
            return False
        return _gate_waiters(url) > 0

    await eventually(there, timeout_s=60, interval_s=0.1, what="chunk 1 waits at the gate")


async def _plan(bus: Bus, run_id: str) -> ev.PlanResolved:
    found = await bus.last_on_subject(bus.names.run_subject(run_id, "plan_resolved"))
    assert found is not None and isinstance(found[1].body, ev.PlanResolved)
    return found[1].body


@pytest.mark.parametrize("consistent", [True, False], ids=["consistent", "per-chunk"])
async def test_changes_made_after_planning_are_exported_only_without_consistent_snapshot(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    bus: Bus,
    tables: LocalPostgres,
    gate: psycopg.Connection[tuple[object, ...]],
    dest: Path,
    consistent: bool,
) -> None:
    url = tables.url
    tables.psql_admin(FILL)
    before = _rows(url)
    control, tracker = stubs
    run_id = await _submit(control, dest, url, consistent=consistent)
    await _at_the_gate(bus, url, run_id)
    plan = await _plan(bus, run_id)
    assert len(plan.chunks) == CHUNKS
    if consistent:
        assert plan.snapshot_id, "the plan names the exported snapshot"
        # the planner's session holds it, idle in its transaction
        assert _holders(url, run_id) == ["idle in transaction"]
    else:
        assert plan.snapshot_id == "" and _holders(url, run_id) == []

    tables.psql_admin(CHANGE)
    after = _rows(url)
    assert after != before
    # the change is committed while chunk 9 has not started (one worker, held at chunk 1)
    assert await bus.last_start(run_id, CHUNKS - 1) is None
    gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_KEY,))

    run = await eventually(lambda: terminal_run(tracker, run_id), timeout_s=90, what="run ends")
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    exported = _exported(dest, run_id)
    if consistent:
        assert exported == before  # the table as of the plan, value for value
        assert run.total_rows == len(before) and run.reconciled
    else:
        assert exported == after  # chunk 9 read the rows as changed
        assert exported != before
    # the holding session ends with the run
    await eventually(
        lambda: _holders(url, run_id) == [], timeout_s=15, what="the snapshot is released"
    )


async def test_a_killed_snapshot_holder_fails_the_chunks_not_yet_read_with_a_named_error(
    stack: Stack,
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    bus: Bus,
    tables: LocalPostgres,
    gate: psycopg.Connection[tuple[object, ...]],
    dest: Path,
) -> None:
    url = tables.url
    tables.psql_admin(FILL)
    control, tracker = stubs
    run_id = await _submit(control, dest, url, consistent=True)
    await _at_the_gate(bus, url, run_id)
    assert _holders(url, run_id) == ["idle in transaction"]

    planner = stack.procs["planner-1"]
    os.kill(planner.pid, signal.SIGKILL)
    wait_sigkilled(planner, 10)
    # the holder's backend ends with its client; only then is chunk 1 let go
    await eventually(lambda: _holders(url, run_id) == [], timeout_s=15, what="holder gone")
    stack.restart("planner-1")
    released = time.monotonic()
    gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_KEY,))

    run = await eventually(lambda: terminal_run(tracker, run_id), timeout_s=60, what="run ends")
    took = time.monotonic() - released
    assert run.status == events_pb2.RUN_STATUS_FAILED
    assert "snapshot lost" in run.error_message, run.error_message
    assert took < 30, took
    history = [e.body for _, e in await bus.history(run_id)]
    failed = [b for b in history if isinstance(b, ev.ChunkFailed)]
    assert failed and all(not f.retryable and "snapshot lost" in f.error for f in failed), failed
    # chunk 1 had imported the snapshot before the holder died: it was read in full
    completed = {b.chunk_index for b in history if isinstance(b, ev.ChunkCompleted)}
    assert completed == {0, 1}, completed
    # the next chunk failed; a later one may have been taken before the run's end reached the
    # worker, and it failed the same way: none after chunk 1 was read
    failed_chunks = {f.chunk_index for f in failed}
    assert 2 in failed_chunks and failed_chunks <= set(range(2, CHUNKS)), failed_chunks
    assert not layout.manifest_path(str(dest), "snap", run_id).exists()
    print(f"\nsnapshot lost -> run FAILED in {took:.1f} s")
