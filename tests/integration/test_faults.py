"""SIGKILL at every crash point (and a killed nats-server), restart, and check the outcome.

Each scenario runs a fresh stack (planner, committer, tracker, 2 workers) in its own namespace
against a 200k-row PostgreSQL table exported in 8 Parquet chunks, secured as deployed: its
own nats-server over TLS with one NATS user per service, and token-authenticated gRPC APIs.
Exactly one instance carries SLUICEWAY_CRASH_AT; the harness waits until that process has died
by SIGKILL (which proves the point fired), restarts it without the variable and waits for the
run to end. The checks look at the outcome only: the manifest and the part files, the stream,
and the read model against one rebuilt from the stream by a second, fresh tracker.

Worker points are armed `@1` on worker-1 while worker-2 runs too: both workers hold a pending
pull (`fetch(1)`) when the planner publishes 8 tasks, so worker-1 takes one of the first ones;
if it ever did not, the point would not fire and the test fails (it never passes vacuously).

`worker.mid_read` runs twice more on a `chunk_by: pages` export (6 heap page ranges, in the
plan's one snapshot) of tables with no integer key: a uuid primary key, and no key at all with
every row twice. Batches and row groups of 2,000 rows put the kill truly mid-range, with a
torn part on disk. While the killed range waits for redelivery, every row of the table is
updated (so it moves to another page); the range is read again after that, and the export
must still be the table as planned, every row exactly once, checksum for checksum.

The points where the source is read (the planner's and the workers') run once more on the
same table in a throwaway MariaDB server (the `mysql` engine); the committer's, the tracker's
and the nats-server's never touch the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import crash, fingerprint, layout
from sluiceway.common.bus import Bus, Names, connect
from sluiceway.common.domain.events import (
    CHUNK_BY_PAGES,
    ChunkStarted,
    ChunkStatus,
    ManifestCommitted,
    RunStatus,
)
from sluiceway.common.domain.run import fold
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2_grpc
from tests.support.checksums import checksum, difference, part_rows, pg_rows
from tests.support.eventually import eventually
from tests.support.faults import (
    NATS_KILL,
    RESULTS,
    SCENARIOS,
    ChunkCompletions,
    FaultResult,
    chunked_pg_config,
    fresh_tracker,
    log_history,
    logs_tail,
    pages_pg_config,
    read_model,
    terminal_run,
    wait_sigkilled,
)
from tests.support.localmaria import LocalMariaDB
from tests.support.localpg import LocalPostgres
from tests.support.securenats import SecureNats

pytestmark = pytest.mark.integration

EXPORT = "faults"
TABLE = "fault_src"
ROWS = 200_000
CHUNK_SIZE = 25_000  # ids 1..200000 -> 8 chunks
CHUNKS = 8
URL_ENV = "FAULT_PG_URL"
MY_URL_ENV = "FAULT_MY_URL"
PAGES_UUID = "fault_pages_uuid"
PAGES_UUID_ROWS = 120_000  # ~2,300 heap blocks
PAGES_NOKEY = "fault_pages_nokey"
PAGES_NOKEY_ROWS = 60_000  # ~350 heap blocks
PAGE_RANGES = 6
PAGE_BATCH_ROWS = 2_000  # 5-10 batches (and row groups) per range

DEATH_TIMEOUT_S = 30.0  # submit -> the armed process is dead (normally < 5 s)
RECOVER_TIMEOUT_S = 90.0  # death -> terminal run state
NATS_DOWN_S = 1.0  # how long the nats-server stays dead
# The tracker dies on its 2nd non-empty batch, so that the restart resumes from a committed
# offset with a rolled-back batch to re-apply (the 1st batch holds RunRequested alone: the
# planner takes longer than the tracker's 200 ms batch window). Every other point fires @1.
NTH = {"tracker.before_commit": 2}
# retention on for the archive's point: the run ages out 2 s after it ended, and the tracker
# dies between storing its archive segment and purging the stream
RETENTION = {"SLUICEWAY_RUNS_MAX_AGE": "2s", "SLUICEWAY_ARCHIVE_INTERVAL_S": "0.5"}
INSTANCE_ENV = {"tracker.after_archive": RETENTION}
# worker points where the crashed attempt never completed: its task is redelivered (after
# ack_wait) and a later attempt must win the chunk
REDELIVERED = ("worker.mid_read", "worker.after_rename", "worker.after_file_written")

CREATE = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
  id bigint PRIMARY KEY,
  account integer NOT NULL,
  label text,
  amount numeric(14,3),
  ratio double precision,
  created_at timestamptz NOT NULL,
  closed_at timestamptz
);
INSERT INTO {TABLE}
SELECT g,
       (g * 7919) % 50000,
       CASE WHEN g % 11 = 0 THEN NULL ELSE 'label ' || g || ' ünïcødé' END,
       CASE WHEN g % 13 = 0 THEN NULL ELSE ((g * 37) % 10000000) / 1000.0 - 4000 END,
       g / 7.0,
       timestamptz '2026-01-01 00:00:00+00' + (g * interval '3 seconds'),
       CASE WHEN g % 4 = 0 THEN NULL
            ELSE timestamptz '2026-06-01 00:00:00+00' + (g * interval '1 minute') END
FROM generate_series(1::bigint, {ROWS}::bigint) AS g;
"""
CREATE_MY = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
  id bigint PRIMARY KEY,
  account int NOT NULL,
  label text,
  amount decimal(14,3),
  ratio double,
  created_at timestamp(6) NOT NULL DEFAULT '2026-01-01 00:00:00',
  closed_at timestamp(6) NULL
) CHARACTER SET utf8mb4;
INSERT INTO {TABLE}
SELECT seq,
       (seq * 7919) % 50000,
       IF(seq % 11 = 0, NULL, CONCAT('label ', seq, ' ünïcødé')),
       IF(seq % 13 = 0, NULL, ((seq * 37) % 10000000) / 1000 - 4000),
       seq / 7e0,
       TIMESTAMP'2026-01-01 00:00:00' + INTERVAL (seq * 3) SECOND,
       IF(seq % 4 = 0, NULL, TIMESTAMP'2026-06-01 00:00:00' + INTERVAL seq MINUTE)
FROM seq_1_to_{ROWS};
ANALYZE TABLE {TABLE};
"""
CREATE_PAGES = f"""
DROP TABLE IF EXISTS {PAGES_UUID};
DROP TABLE IF EXISTS {PAGES_NOKEY};
CREATE TABLE {PAGES_UUID} (id uuid PRIMARY KEY, gen int NOT NULL, body text NOT NULL);
INSERT INTO {PAGES_UUID}
SELECT md5(g::text)::uuid, 0, repeat(chr(65 + g % 26), 20 + g % 200)
FROM generate_series(1, {PAGES_UUID_ROWS}) AS g;
-- no key at all, and every row twice: only the heap tells the copies apart
CREATE TABLE {PAGES_NOKEY} (n int, gen int NOT NULL, label text);
INSERT INTO {PAGES_NOKEY}
SELECT g % {PAGES_NOKEY_ROWS // 2}, 0,
       CASE WHEN g % {PAGES_NOKEY_ROWS // 2} % 7 = 0 THEN NULL
            ELSE 'label ' || (g % {PAGES_NOKEY_ROWS // 2}) END
FROM generate_series(1, {PAGES_NOKEY_ROWS}) AS g;
"""


@dataclass(frozen=True)
class Workload:
    """What a scenario exports (as export EXPORT), and what the export must then hold."""

    variant: str  # shown after the crash point in the table; "" for the key-range export
    table: str
    rows: int
    chunks: int
    config: Callable[[Path], str]  # destination -> config text
    # chunk_by pages: every column, rendered alike by PostgreSQL and by DuckDB over the parts
    pg_columns: str = ""
    part_columns: str = ""
    engine: str = "postgres"

    @property
    def by_pages(self) -> bool:
        return bool(self.pg_columns)


def _pages(table: str) -> Callable[[Path], str]:
    return lambda dest: pages_pg_config(EXPORT, table, PAGE_RANGES, dest, URL_ENV, PAGE_BATCH_ROWS)


KEY_RANGES = Workload(
    "",
    TABLE,
    ROWS,
    CHUNKS,
    lambda dest: chunked_pg_config(EXPORT, TABLE, CHUNK_SIZE, dest, URL_ENV),
)
PAGE_RANGE_WORKLOADS = {
    "uuid": Workload(
        "pages, uuid key",
        PAGES_UUID,
        PAGES_UUID_ROWS,
        PAGE_RANGES,
        _pages(PAGES_UUID),
        pg_columns="id::text, gen, body",
        part_columns="id::varchar, gen, body",
    ),
    "nokey": Workload(
        "pages, no key",
        PAGES_NOKEY,
        PAGES_NOKEY_ROWS,
        PAGE_RANGES,
        _pages(PAGES_NOKEY),
        pg_columns="n, gen, label",
        part_columns="n, gen, label",
    ),
}
MARIADB = Workload(
    "mariadb",
    TABLE,
    ROWS,
    CHUNKS,
    lambda dest: chunked_pg_config(EXPORT, TABLE, CHUNK_SIZE, dest, MY_URL_ENV, "mysql"),
    engine="mysql",
)
SOURCE_POINTS = [p for p in SCENARIOS if p.startswith(("planner.", "worker."))]
# every crash point on the key-range export (ids unchanged), then the page-range cases, then
# the points that read the source on a MariaDB export
CASES = (
    [pytest.param(point, KEY_RANGES, id=point) for point in SCENARIOS]
    + [
        pytest.param("worker.mid_read", workload, id=f"worker.mid_read-pages-{name}")
        for name, workload in PAGE_RANGE_WORKLOADS.items()
    ]
    + [pytest.param(point, MARIADB, id=f"{point}-mariadb") for point in SOURCE_POINTS]
)


@pytest.fixture(scope="module")
def fault_source(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(CREATE)
    pg.psql_admin(CREATE_PAGES)
    for table in (TABLE, PAGES_UUID, PAGES_NOKEY):
        pg.psql_admin(f"VACUUM ANALYZE {table}")
    return pg


@pytest.fixture(scope="module")
def fault_maria(maria: LocalMariaDB) -> LocalMariaDB:
    maria.sql_admin(CREATE_MY)
    return maria


class Teardown:
    """Everything a scenario started, stopped in reverse order even when the test fails."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def stack(self, stack: Stack) -> Stack:
        self._stack.callback(stack.stop)
        return stack

    def nats(self, server: LocalNats) -> LocalNats:
        # `stop` only knows the current process; a restart replaces it, so look it up late
        self._stack.callback(lambda: server.stop())
        return server

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def teardown() -> Iterator[Teardown]:
    td = Teardown()
    try:
        yield td
    finally:
        td.close()


def _env(namespace: str, source: LocalPostgres, maria: LocalMariaDB | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != crash.ENV}
    if maria is not None:
        env[MY_URL_ENV] = maria.url
    env.update(
        {
            "SLUICEWAY_NAMESPACE": namespace,
            URL_ENV: source.url,
            "SLUICEWAY_WORKER_ACK_WAIT_S": "4",
            "SLUICEWAY_WORKER_HEARTBEAT_S": "1",
            "SLUICEWAY_CONSUMER_ACK_WAIT_S": "3",
        }
    )
    return env


async def _purged_below(bus: Bus, seq: int) -> bool:
    info = await bus.js.stream_info(bus.names.runs_stream)
    return bool(info.state.first_seq > seq)


async def _tasks_settled(bus: Bus) -> bool:
    """No chunk task is waiting or in flight: the run's history is final (a redelivered task
    of a chunk that already won may still append after the run has ended)."""
    info = await bus.js.consumer_info(bus.names.tasks_stream, "worker-chunks")
    return not info.num_pending and not info.num_ack_pending


def _rewrite(url: str, table: str) -> tuple[int, float]:
    """Update every row of `table` (gen + 1) in one transaction: each row's new version goes to
    another page. Returns (rows updated, wall time after the commit)."""
    with psycopg.connect(url, autocommit=True) as con:
        rows = con.execute(f"UPDATE {table} SET gen = gen + 1").rowcount
    return rows, time.time()


@pytest.mark.parametrize(("point", "workload"), CASES)
async def test_a_run_recovers_from_a_sigkill_at(
    point: str,
    workload: Workload,
    request: pytest.FixtureRequest,
    fault_source: LocalPostgres,
    namespace: str,
    tmp_path: Path,
    teardown: Teardown,
    aclosing: list[Callable[[], Awaitable[object]]],
) -> None:
    started = time.monotonic()
    instance = SCENARIOS[point]
    result = RESULTS[request.node.nodeid] = FaultResult(point, instance, workload.variant)
    maria = request.getfixturevalue("fault_maria") if workload.engine == "mysql" else None
    env = _env(namespace, fault_source, maria)
    dest = tmp_path / "dest"
    state_dir = tmp_path / "state"
    archive_dir = state_dir / "archive"  # the local stack's default SLUICEWAY_ARCHIVE

    # ---- start the stack with exactly one armed instance, on its own nats-server as a
    # deployment runs it: TLS, one user per service (the gRPC APIs authenticate as always)
    secure = SecureNats(tmp_path / "nats", Names(namespace), log_file=tmp_path / "nats.log")
    nats = teardown.nats(secure.server)
    await asyncio.to_thread(secure.start)
    nats_url = secure.url
    env.update(secure.env())
    killing_nats = point == NATS_KILL
    armed = {crash.ENV: f"{point}@{NTH.get(point, 1)}", **INSTANCE_ENV.get(point, {})}
    instance_env = {} if killing_nats else {instance: armed}
    stack = teardown.stack(
        await asyncio.to_thread(
            start_stack,
            state_dir,
            workers=2,
            nats_url=nats_url,
            nats_users_dir=secure.users_dir,
            env=env,
            instance_env=instance_env,
        )
    )

    trigger = ChunkCompletions()
    aclosing.append(trigger.close)
    if killing_nats:
        await trigger.start(nats_url, Names(namespace), secure.options())

    # ---- submit; a page-range export must then hold the table as it is now, when it is planned
    expected: list[tuple[object, ...]] = []
    if workload.by_pages:
        select = f"SELECT {workload.pg_columns} FROM {workload.table}"
        expected = await asyncio.to_thread(pg_rows, fault_source.url, select)
        assert len(expected) == workload.rows
    control_ch = stack.channel(stack.state.control_addr)
    tracker_ch = stack.channel(stack.state.tracker_addr)
    aclosing += [control_ch.close, tracker_ch.close]
    submitted = await control_pb2_grpc.ControlStub(control_ch).SubmitRun(
        control_pb2.SubmitRunRequest(
            config=control_pb2.ConfigDocument(
                text=workload.config(dest),
                base_dir=str(tmp_path),
                file_name="faults.yaml",
            ),
            requested_by="test_faults",
        ),
        timeout=30,
    )
    run_id = submitted.run_id

    # ---- the fault, then the restart
    rewritten_at = 0.0
    if killing_nats:
        try:
            await asyncio.wait_for(trigger.seen.wait(), DEATH_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(
                f"no ChunkCompleted in {DEATH_TIMEOUT_S:.0f}s\n{logs_tail(state_dir)}"
            ) from None
        finally:
            await trigger.close()
        killed_at_wall = time.time()
        await asyncio.to_thread(nats.kill)
        assert nats.proc is not None and nats.proc.returncode == -9
        died = time.monotonic()
        await asyncio.sleep(NATS_DOWN_S)
        await asyncio.to_thread(nats.start)  # same port, same store
    else:
        popen = stack.procs[instance]
        log = next(p.log for p in stack.state.processes if p.name == instance)
        died = await asyncio.to_thread(
            wait_sigkilled, popen, DEATH_TIMEOUT_S + (30.0 if point in INSTANCE_ENV else 0), log
        )
        if workload.by_pages:
            # before the killed range can be read again, every row moves to another page: only
            # the plan's snapshot still sees each row once, where it was planned. The other
            # workers are paused meanwhile (SIGSTOP), so that however long the UPDATE takes,
            # no redelivery of the range is read before it commits
            others = [
                proc
                for name, proc in stack.procs.items()
                if name.startswith("worker-") and name != instance and proc.poll() is None
            ]
            for proc in others:
                os.kill(proc.pid, signal.SIGSTOP)
            try:
                rewritten, rewritten_at = await asyncio.to_thread(
                    _rewrite, fault_source.url, workload.table
                )
            finally:
                for proc in others:
                    os.kill(proc.pid, signal.SIGCONT)
            assert rewritten == workload.rows
        await asyncio.to_thread(stack.restart, instance, drop_env=(crash.ENV,))
        if instance == "tracker-1":  # a new port
            tracker_ch = stack.channel(stack.state.tracker_addr)
            aclosing.append(tracker_ch.close)

    # ---- the run ends, and succeeds
    tracker = tracker_pb2_grpc.TrackerStub(tracker_ch)
    try:
        run = await eventually(
            lambda: terminal_run(tracker, run_id),
            timeout_s=RECOVER_TIMEOUT_S,
            interval_s=0.1,
            what=f"run {run_id} reaches a terminal state",
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{logs_tail(state_dir)}") from None
    result.recover_s = time.monotonic() - died
    result.status = events_pb2.RunStatus.Name(run.status).removeprefix("RUN_STATUS_")
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, (
        f"{run.error_message}\n{logs_tail(state_dir)}"
    )

    # ---- manifest, _SUCCESS and the part files
    count_sql = f"SELECT count(*) FROM {workload.table}"
    admin = maria.sql_admin if maria is not None else fault_source.psql_admin
    source_count = int(admin(count_sql))
    result.source_rows = source_count
    run_dir = dest / EXPORT / "runs" / run_id
    manifest_bytes = (run_dir / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    result.rows = manifest["row_count"]
    if workload.by_pages:  # the parts the manifest lists hold the planned table, each row once
        listed_files = [run_dir / p["path"] for p in manifest["parts"]]
        exported = await asyncio.to_thread(part_rows, listed_files, workload.part_columns)
        assert checksum(exported) == checksum(expected), difference(expected, exported)
    assert (run_dir / "_SUCCESS").read_text().strip() == fingerprint.of_bytes(manifest_bytes)
    assert manifest["run_id"] == run_id
    assert manifest["row_count"] == source_count == workload.rows, (
        f"the manifest lists {manifest['row_count']} rows, the source has {source_count}"
    )
    assert manifest["row_count"] == sum(p["rows"] for p in manifest["parts"])
    assert manifest["part_count"] == len(manifest["parts"])
    paths = [p["path"] for p in manifest["parts"]]
    assert len(set(paths)) == len(paths), "a part is listed twice"
    assert sorted({p["chunk_index"] for p in manifest["parts"]}) == list(range(workload.chunks))
    for part in manifest["parts"]:
        assert fingerprint.of_file(run_dir / part["path"]) == (
            part["content_fingerprint"],
            part["size_bytes"],
        ), part["path"]
    latest = json.loads((dest / EXPORT / "manifest.json").read_text())
    assert latest["run_id"] == run_id

    # ---- the stream: one ManifestCommitted, and only winning attempts in the manifest
    nc = await connect(nats_url, name="test-faults", connect_timeout_s=10, options=secure.options())
    try:
        bus = Bus(nc, Names(namespace))
        await eventually(lambda: _tasks_settled(bus), timeout_s=30, what="every task settled")
        if point == "tracker.after_archive":  # the restarted tracker archived and purged
            last = (await log_history(bus, archive_dir, run_id))[-1][0]
            await eventually(lambda: _purged_below(bus, last), timeout_s=30, what="the run purged")
            assert await bus.history(run_id) == []
        # the whole log: what retention archived, then the run stream
        history = await log_history(bus, archive_dir, run_id)
    finally:
        await nc.drain()
    committed = [seq for seq, e in history if isinstance(e.body, ManifestCommitted)]
    assert len(committed) == 1, f"{len(committed)} ManifestCommitted for the run"
    state = fold((e for _, e in history), run_id)
    assert state.status is RunStatus.SUCCEEDED
    assert len(state.chunks) == workload.chunks
    if workload.by_pages:
        assert state.plan is not None and state.plan.chunk_by == CHUNK_BY_PAGES
        assert state.plan.snapshot_id, "chunk_by pages runs in the plan's one snapshot"
    assert all(c.status is ChunkStatus.COMPLETED for c in state.chunks.values())
    for part in manifest["parts"]:
        chunk = state.chunks[part["chunk_index"]]
        assert part["attempt"] == chunk.winning_attempt, (
            f"{part['path']}: attempt {part['attempt']}, "
            f"chunk {chunk.index} was won by attempt {chunk.winning_attempt}"
        )
    if point in REDELIVERED:  # the killed attempt lost: a later one won, and only it is listed
        # armed @1, the instance died in the first chunk it started
        killed = next(
            e.body
            for _, e in history
            if isinstance(e.body, ChunkStarted) and e.producer.instance == instance
        )
        chunk = state.chunks[killed.chunk_index]
        assert chunk.winning_attempt > killed.attempt, (killed, chunk.winning_attempt)
        dead = (killed.chunk_index, killed.attempt)
        assert dead not in {(p["chunk_index"], p["attempt"]) for p in manifest["parts"]}
        assert not layout.attempt_files(run_dir, *dead), "the killed attempt's files stayed"
        set_aside = layout.attempt_files(dest / EXPORT / "_quarantine" / run_id, *dead)
        # mid_read on the key-range export dies before its first row group (25,000-row batches,
        # 262,144-row groups): nothing of it is on disk; otherwise its files were set aside
        if point != "worker.mid_read" or workload.by_pages:
            assert set_aside, f"no file of the killed attempt {dead} was set aside"
        if workload.by_pages:
            won = next(
                e
                for _, e in history
                if isinstance(e.body, ChunkStarted)
                and (e.body.chunk_index, e.body.attempt) == (chunk.index, chunk.winning_attempt)
            )
            assert won.occurred_at.timestamp() > rewritten_at, (
                "the killed range was read again before every row had moved"
            )
    winners = {
        (f.file_name, f.rows, f.bytes, f.content_fingerprint) for f in state.committed_files()
    }
    listed = {
        (p["path"], p["rows"], p["size_bytes"], p["content_fingerprint"]) for p in manifest["parts"]
    }
    assert listed == winners
    assert state.manifest is not None and state.manifest.fingerprint == fingerprint.of_bytes(
        manifest_bytes
    )
    if killing_nats:  # the kill fell inside the run: chunks completed after it
        after_kill = [
            e
            for _, e in history
            if e.kind == "chunk_completed" and e.occurred_at.timestamp() > killed_at_wall
        ]
        assert after_kill, "every chunk had completed before the nats-server was killed"

    # ---- the live read model equals one rebuilt from the stream by a fresh tracker
    last_seq = max(seq for seq, _ in history)
    token = stack.token()
    live = await read_model(stack.state.tracker_addr, run_id, last_seq, 30, token)
    # the fresh tracker authenticates like the live one (the stack's principals file)
    with fresh_tracker(tmp_path / "rebuild", stack.envs["tracker-1"], nats_url) as addr:
        rebuilt = await read_model(addr, run_id, last_seq, 60, token)
    assert live.run == rebuilt.run
    assert live.chunks == rebuilt.chunks
    assert live.parts == rebuilt.parts
    assert live.events == rebuilt.events
    assert [e.seq for e in live.events] == [seq for seq, _ in history]
    assert live.run.total_rows == source_count
    assert live.run.files_committed == manifest["part_count"]
    assert live.run.manifest_fingerprint == fingerprint.of_bytes(manifest_bytes)

    result.total_s = time.monotonic() - started
