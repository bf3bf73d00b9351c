"""Tuning and source safety on a real PostgreSQL: timeouts from the config, UTC sessions, batch
sizes, the connect timeout, and pg_temp_bytes_delta through a real stack."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import psycopg
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import config
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.common.sources import SourceError, open_source
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.localpg import PASSWORD, LocalPostgres

pytestmark = pytest.mark.integration

TABLE = "tuning_rows"
ROWS = 20_000
SPILL = "tuning_spill"  # a role whose work_mem makes a sort of TABLE spill to temporary files
SPILL_PW = "spill-Pw-3c9e"
ID_PAD = (
    ev.SchemaField(name="id", type="int64", nullable=False, source_type="bigint"),
    ev.SchemaField(name="pad", type="string", nullable=True, source_type="text"),
)


@pytest.fixture(scope="module")
def rows_table(pg: LocalPostgres) -> Iterator[LocalPostgres]:
    pg.psql_admin(
        f"DROP TABLE IF EXISTS {TABLE}; DROP ROLE IF EXISTS {SPILL};"
        f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, pad text);"
        f"INSERT INTO {TABLE} SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, {ROWS}) g;"
        f"CREATE ROLE {SPILL} LOGIN PASSWORD '{SPILL_PW}';"
        f"ALTER ROLE {SPILL} SET work_mem = '64kB';"
        f"GRANT SELECT ON {TABLE} TO {SPILL};"
    )
    pg.psql_admin(f"VACUUM ANALYZE {TABLE}")
    yield pg
    pg.psql_admin(f"DROP TABLE {TABLE}; DROP OWNED BY {SPILL}; DROP ROLE {SPILL};")


def _spec(tmp_path: Path, lines: str = "", what: str = f"table: {TABLE}") -> ev.ExportSpec:
    text = f"""
sources:
  pg: {{engine: postgres, url_env: TUNING_PG_URL}}
exports:
  - name: tuning
    source: pg
    {what}
    destination: out
{lines}
"""
    return config.load_text(text, base_dir=tmp_path)["tuning"]


def _read_all(spec: ev.ExportSpec, url: str, schema: tuple[ev.SchemaField, ...] = ()) -> list[int]:
    source = open_source(spec, env={"TUNING_PG_URL": url})
    try:
        _, batches = source.count_and_read(spec, None, schema)
        return [b.num_rows for b in batches]
    finally:
        source.close()


# ---- timeouts from the config ------------------------------------------------------------------


def test_a_lock_held_by_another_session_fails_after_the_configured_lock_timeout(
    rows_table: LocalPostgres, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, "    tuning_profile: fast\n    lock_timeout_s: 1")  # fast alone: 30 s
    holder = psycopg.connect(rows_table.url)
    try:
        holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        with pytest.raises(SourceError) as caught:
            _read_all(spec, rows_table.url, ID_PAD)
        waited = time.monotonic() - began
        assert 0.9 < waited < 4, waited
        assert caught.value.retryable and "55P03" in str(caught.value), str(caught.value)
    finally:
        holder.close()


def test_the_configured_statement_timeout_cancels_a_long_read(
    rows_table: LocalPostgres, tmp_path: Path
) -> None:
    spec = _spec(
        tmp_path,
        "    statement_timeout_s: 1",
        what="query: SELECT 1::bigint AS id FROM pg_sleep(4)",
    )
    began = time.monotonic()
    with pytest.raises(SourceError) as caught:
        _read_all(spec, rows_table.url, (ID_PAD[0],))
    assert 0.9 < time.monotonic() - began < 3.5
    assert not caught.value.retryable and "57014" in str(caught.value), str(caught.value)


def test_the_reading_session_is_utc_whatever_the_connection_asks(
    rows_table: LocalPostgres, tmp_path: Path
) -> None:
    tokyo = rows_table.url + "?options=" + quote("-c TimeZone=Asia/Tokyo")
    with psycopg.connect(tokyo) as plain:  # the URL alone would give Tokyo
        assert plain.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
    spec = _spec(tmp_path, what="query: SELECT current_setting('TimeZone') AS tz")
    source = open_source(spec, env={"TUNING_PG_URL": tokyo})
    try:
        field = ev.SchemaField(name="tz", type="string", nullable=True, source_type="text")
        _, batches = source.count_and_read(spec, None, (field,))
        assert [v for b in batches for v in b.column(0).to_pylist()] == ["UTC"]
    finally:
        source.close()


# ---- batch sizes -------------------------------------------------------------------------------


def test_batch_sizes_follow_the_settings(rows_table: LocalPostgres, tmp_path: Path) -> None:
    url = rows_table.url
    # the default (balanced): 16 MiB batches, the whole ~4 MB table in one
    assert _read_all(_spec(tmp_path), url, ID_PAD) == [ROWS]
    # batch_size_memory_mb: 1 MiB batches of ~200-byte rows
    sized = _read_all(_spec(tmp_path, "    batch_size_memory_mb: 1"), url, ID_PAD)
    assert sum(sized) == ROWS and 3 <= len(sized) <= 8, sized
    # batch_size alone: batches of that many rows (the hint from the measured width, then a cap)
    spec = _spec(tmp_path, "    batch_size: 1000")
    source = open_source(spec, env={"TUNING_PG_URL": url})
    try:
        for _ in range(2):  # the second read sizes its hint from the first one's row width
            _, batches = source.count_and_read(spec, None, ID_PAD)
            counts = [b.num_rows for b in batches]
            assert counts == [1000] * (ROWS // 1000), counts
    finally:
        source.close()


# ---- connect timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize("schema_known", [True, False], ids=["adbc-read", "psycopg-introspection"])
def test_a_server_that_never_answers_fails_the_attempt_within_the_connect_timeout(
    tmp_path: Path, schema_known: bool
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever reads or answers them
    try:
        port = silent.getsockname()[1]
        spec = _spec(tmp_path, "    connect_timeout_s: 2")
        url = f"postgresql://u:pw@127.0.0.1:{port}/db"
        began = time.monotonic()
        with pytest.raises(SourceError) as caught:
            _read_all(spec, url, ID_PAD if schema_known else ())
        assert 1.5 < time.monotonic() - began < 8
        assert caught.value.retryable, str(caught.value)
        assert "pw" not in str(caught.value).split("db")[0]  # the URL's password is not shown
    finally:
        silent.close()


# ---- pg_temp_bytes_delta through the stack -------------------------------------------------------


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, rows_table: LocalPostgres
) -> Iterator[Stack]:
    spill = f"postgresql://{SPILL}:{SPILL_PW}@127.0.0.1:{rows_table.port}/{rows_table.database}"
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, "TUNING_PG_URL": spill}
    assert PASSWORD not in spill
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


@pytest.fixture
async def channels(stack: Stack) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    control = stack.channel(stack.state.control_addr)
    tracker = stack.channel(stack.state.tracker_addr)
    yield control, tracker
    await control.close()
    await tracker.close()


async def _run(
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel], tmp_path: Path, what: str
) -> tracker_pb2.RunSummary:
    text = f"""
sources:
  pg: {{engine: postgres, url_env: TUNING_PG_URL}}
exports:
  - name: tuning_spill
    source: pg
    {what}
    destination: out
"""
    control = control_pb2_grpc.ControlStub(channels[0])
    tracker = tracker_pb2_grpc.TrackerStub(channels[1])
    submitted = await control.SubmitRun(
        control_pb2.SubmitRunRequest(
            config=control_pb2.ConfigDocument(text=text, base_dir=str(tmp_path)),
            requested_by="test",
        )
    )

    async def terminal() -> tracker_pb2.RunSummary | None:
        try:
            run = await tracker.GetRun(tracker_pb2.GetRunRequest(run_id=submitted.run_id))
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

    run = await eventually(terminal, timeout_s=120, interval_s=0.3, what="the run ends")
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    return run


async def test_a_sort_that_spills_shows_a_positive_pg_temp_bytes_delta(
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel], tmp_path: Path
) -> None:
    # the plain table read sorts nothing: no temporary files
    plain = await _run(channels, tmp_path, f"table: {TABLE}")
    assert plain.total_rows == ROWS and plain.pg_temp_bytes_delta == 0
    assert plain.tuning_profile == "balanced" and plain.batch_size_memory_mb == 16
    # ~4 MB sorted under work_mem 64kB: an external sort, in the read and in the counts
    spilled = await _run(channels, tmp_path, f"query: SELECT id, pad FROM {TABLE} ORDER BY pad")
    assert spilled.total_rows == ROWS
    assert spilled.pg_temp_bytes_delta > 1 << 20, spilled.pg_temp_bytes_delta
    print(f"\npg_temp_bytes_delta of the spilling export: {spilled.pg_temp_bytes_delta}")
