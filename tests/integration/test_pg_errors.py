"""Real PostgreSQL errors through the PostgresSource and the worker: retried or failed at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from sluiceway.common import layout
from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.common.sources import SourceError
from sluiceway.common.sources.postgres import PostgresSource
from tests.support.eventually import eventually
from tests.support.localpg import PASSWORD, LocalPostgres, wait_for

ROOT = Path(__file__).resolve().parents[2]
TABLE = "pgerr_orders"
ROWS = 2000
LIMITED, LIMITED_PW = "pgerr_limited", "lim-Pw-4d1e"  # CONNECTION LIMIT 1, may SELECT
NOSEL, NOSEL_PW = "pgerr_nosel", "nosel-Pw-8b2a"  # may log in, may not SELECT
SECRETS = (PASSWORD, LIMITED_PW, NOSEL_PW)

SCHEMA = (
    ev.SchemaField(name="id", type="int64", nullable=False, source_type="bigint"),
    ev.SchemaField(name="name", type="string", nullable=True, source_type="text"),
    ev.SchemaField(name="qty", type="int32", nullable=True, source_type="integer"),
)
GENERATED = (  # query-mode exports over generate_series: no table to set up
    ev.SchemaField(name="id", type="int64", nullable=True, source_type="bigint"),
    ev.SchemaField(name="v", type="int64", nullable=True, source_type="bigint"),
)


def _url(pg: LocalPostgres, role: str, password: str) -> str:
    return f"postgresql://{role}:{password}@127.0.0.1:{pg.port}/{pg.database}"


@pytest.fixture(scope="module")
def roles(pg: LocalPostgres) -> Iterator[dict[str, str]]:
    """The table, a role limited to one connection, a role without SELECT, a raising function."""
    pg.psql_admin(
        f"DROP TABLE IF EXISTS {TABLE}; DROP ROLE IF EXISTS {LIMITED}; DROP ROLE IF EXISTS {NOSEL};"
        f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text, qty int);"
        f"INSERT INTO {TABLE} SELECT g, 'n' || g, g % 7 FROM generate_series(1, {ROWS}) g;"
        f"CREATE ROLE {LIMITED} LOGIN PASSWORD '{LIMITED_PW}' CONNECTION LIMIT 1;"
        f"GRANT SELECT ON {TABLE} TO {LIMITED};"
        f"CREATE ROLE {NOSEL} LOGIN PASSWORD '{NOSEL_PW}';"
        "CREATE OR REPLACE FUNCTION pgerr_raise(code text) RETURNS bigint LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'raised %', code USING ERRCODE = code; END $$;"
    )
    yield {"limited": _url(pg, LIMITED, LIMITED_PW), "nosel": _url(pg, NOSEL, NOSEL_PW)}
    pg.psql_admin(
        f"DROP TABLE {TABLE}; DROP FUNCTION pgerr_raise(text); "
        f"DROP ROLE {LIMITED}; DROP ROLE {NOSEL};"
    )


def _spec(**kw: object) -> ev.ExportSpec:
    base: dict[str, object] = dict(
        name="pgerr",
        source=ev.SourceSpec(engine="postgres", url_env="PGERR_URL"),
        table=TABLE,
        chunk_column="id",
    )
    base.update(kw)
    return ev.ExportSpec(**base)  # type: ignore[arg-type]


def _range(start: int = 1, end: int = ROWS + 1) -> ev.ChunkRange:
    return ev.ChunkRange(start_key=str(start), end_key=str(end))


def _failure(read: object) -> SourceError:
    """The SourceError that reading (count_and_read, then every batch) raises."""
    with pytest.raises(SourceError) as err:
        _, batches = read()  # type: ignore[operator]
        for _ in batches:
            pass
    assert not any(secret in str(err.value) for secret in SECRETS), str(err.value)
    return err.value


def _backends(pg: LocalPostgres, where: str) -> list[int]:
    out = pg.psql_admin(
        f"SELECT pid FROM pg_stat_activity WHERE {where} AND pid <> pg_backend_pid()"
    )
    return [int(p) for p in out.split()]


# ---- connection lost ----------------------------------------------------------------------------


def test_a_session_terminated_mid_stream_is_retryable(pg: LocalPostgres, roles: object) -> None:
    spec = _spec(
        table="",
        query="SELECT g::bigint AS id, g::bigint AS v FROM generate_series(1, 2000000) g",
    )
    src = PostgresSource(pg.url + "?application_name=pgerr-mid", batch_size_hint_bytes=1 << 16)
    try:
        counted, batches = src.count_and_read(spec, None, GENERATED)
        assert counted == 2_000_000
        first = next(batches)  # the COPY is streaming
        assert first.num_rows > 0
        (pid,) = _backends(pg, "application_name = 'pgerr-mid'")
        pg.psql_admin(f"SELECT pg_terminate_backend({pid})")
        err = _failure(lambda: (0, batches))
        # A backend told to die while its socket is full drops the connection without a word
        # (its FATAL could block): the client sees EOF, which libpq words without a SQLSTATE.
        # Otherwise the FATAL arrives with its SQLSTATE. Either way: retryable.
        assert err.retryable
        assert any(
            c in str(err) for c in ("admin_shutdown [57P01]", "connection_failure [08006 from")
        ), str(err)
        # the next attempt starts on a fresh session and reads the whole range
        counted, batches = src.count_and_read(spec, _range(1, 11), GENERATED)
        assert counted == 10 == sum(b.num_rows for b in batches)
    finally:
        src.close()


def test_a_session_that_died_while_idle_is_replaced_without_failing(
    pg: LocalPostgres, roles: object
) -> None:
    src = PostgresSource(pg.url + "?application_name=pgerr-idle")
    try:
        counted, batches = src.count_and_read(_spec(), _range(1, 101), SCHEMA)
        assert counted == 100 == sum(b.num_rows for b in batches)
        (pid,) = _backends(pg, "application_name = 'pgerr-idle'")
        pg.psql_admin(f"SELECT pg_terminate_backend({pid})")
        wait_for(lambda: pid not in _backends(pg, "true"), timeout_s=10)
        counted, batches = src.count_and_read(_spec(), _range(101, 301), SCHEMA)
        assert counted == 200 == sum(b.num_rows for b in batches)
        (new_pid,) = _backends(pg, "application_name = 'pgerr-idle'")
        assert new_pid != pid
    finally:
        src.close()


# ---- transient ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schema_known", [True, False], ids=["adbc-read", "psycopg-introspection"])
def test_a_lock_held_by_another_session_times_out_retryably(
    pg: LocalPostgres, roles: object, schema_known: bool
) -> None:
    holder = psycopg.connect(pg.url)  # a transaction that keeps its lock until rollback
    src = PostgresSource(pg.url, lock_timeout_ms=200)
    try:
        holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        err = _failure(
            lambda: src.count_and_read(_spec(), _range(), SCHEMA if schema_known else ())
        )
        assert time.monotonic() - began < 5  # the source's lock_timeout, not the default 10 s
        assert err.retryable and "lock_not_available [55P03]" in str(err), str(err)
        holder.rollback()
        counted, batches = src.count_and_read(_spec(), _range(), SCHEMA)
        assert counted == ROWS == sum(b.num_rows for b in batches)
    finally:
        holder.close()
        src.close()


def test_too_many_connections_for_a_role_is_retryable_and_clears(
    pg: LocalPostgres, roles: dict[str, str]
) -> None:
    held = psycopg.connect(roles["limited"])  # the role's one connection
    src = PostgresSource(roles["limited"])
    try:
        err = _failure(lambda: src.count_and_read(_spec(), _range(), SCHEMA))
        # libpq's connection phase has no SQLSTATE: the server's FATAL text stands for it
        assert err.retryable
        assert "too_many_connections [53300 from the message]" in str(err), str(err)
        held.close()
        wait_for(lambda: not _backends(pg, f"usename = '{LIMITED}'"), timeout_s=10)
        counted, batches = src.count_and_read(_spec(), _range(), SCHEMA)
        assert counted == ROWS == sum(b.num_rows for b in batches)
    finally:
        held.close()
        src.close()


@pytest.mark.parametrize(
    ("expression", "sqlstate", "condition", "retryable"),
    [
        ("g / (g - 150000)", "22012", "division_by_zero", False),
        ("CASE WHEN g < 150000 THEN g ELSE ('x' || g)::bigint END", "22P02", None, False),
        # A natural 40001 cannot happen here: a READ ONLY REPEATABLE READ transaction on a
        # primary never fails to serialize (that takes writes, SERIALIZABLE, or a hot standby's
        # recovery conflict, which needs a replica). The server raises one instead, so that the
        # driver path of a mid-stream 40001 is real.
        ("CASE WHEN g < 150000 THEN g ELSE pgerr_raise('40001') END", "40001", None, True),
    ],
    ids=["division-by-zero", "invalid-text", "serialization-failure"],
)
def test_an_error_in_mid_stream_keeps_its_sqlstate(
    pg: LocalPostgres,
    roles: object,
    expression: str,
    sqlstate: str,
    condition: str | None,
    retryable: bool,
) -> None:
    spec = _spec(
        table="",
        query=f"SELECT g::bigint AS id, {expression} AS v FROM generate_series(1, 300000) g",
    )
    src = PostgresSource(pg.url, batch_size_hint_bytes=1 << 14)
    seen = 0
    try:
        batches = src.read(spec, None, GENERATED)
        with pytest.raises(SourceError) as err:
            for batch in batches:
                seen += batch.num_rows
        assert 0 < seen < 150000  # rows arrived before the error did
        assert err.value.retryable is retryable
        assert f"[{sqlstate}]" in str(err.value), str(err.value)
        if condition:
            assert f"{condition} [{sqlstate}]" in str(err.value)
    finally:
        src.close()


# ---- permanent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schema_known", [True, False], ids=["adbc-read", "psycopg-introspection"])
def test_bad_sql_is_permanent(pg: LocalPostgres, roles: object, schema_known: bool) -> None:
    src = PostgresSource(pg.url)
    try:
        spec = _spec(table="", query=f"SELEC id FROM {TABLE}")
        err = _failure(lambda: src.count_and_read(spec, _range(), SCHEMA if schema_known else ()))
        assert not err.retryable and "syntax_error [42601]" in str(err), str(err)
    finally:
        src.close()


def test_a_column_dropped_after_planning_is_permanent(pg: LocalPostgres, roles: object) -> None:
    pg.psql_admin(
        "DROP TABLE IF EXISTS pgerr_shrinking; "
        "CREATE TABLE pgerr_shrinking AS SELECT g::bigint AS id, 'x' || g AS gone "
        "FROM generate_series(1, 10) g"
    )
    src = PostgresSource(pg.url)
    try:
        spec = _spec(table="pgerr_shrinking")
        planned = src.schema_of(spec)
        assert [f.name for f in planned] == ["id", "gone"]
        pg.psql_admin("ALTER TABLE pgerr_shrinking DROP COLUMN gone")
        err = _failure(lambda: src.count_and_read(spec, _range(), planned))
        assert not err.retryable and "undefined_column [42703]" in str(err), str(err)
    finally:
        src.close()
        pg.psql_admin("DROP TABLE pgerr_shrinking")


def test_a_role_without_select_is_permanent(pg: LocalPostgres, roles: dict[str, str]) -> None:
    src = PostgresSource(roles["nosel"])
    try:
        err = _failure(lambda: src.count_and_read(_spec(), _range(), SCHEMA))
        assert not err.retryable and "insufficient_privilege [42501]" in str(err), str(err)
    finally:
        src.close()


def test_a_statement_timeout_is_permanent(pg: LocalPostgres, roles: object) -> None:
    """The same range would time out again: statement_timeout is not worth a retry."""
    src = PostgresSource(pg.url, statement_timeout_ms=200)
    try:
        spec = _spec(table="", query="SELECT 1::bigint AS id, 1::bigint AS v FROM pg_sleep(3)")
        began = time.monotonic()
        err = _failure(lambda: src.count_and_read(spec, None, GENERATED))
        assert time.monotonic() - began < 2.5
        assert not err.retryable and "query_canceled [57014]" in str(err), str(err)
    finally:
        src.close()


# ---- through the worker -------------------------------------------------------------------------


@pytest.fixture
async def worker(
    nats_server: LocalNats, namespace: str, tmp_path: Path, roles: dict[str, str]
) -> AsyncIterator[Path]:
    """The worker service as deployed (ChunkWorker, FileExporter, Bus), in its own process."""
    ready = tmp_path / "worker.ready"
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "SLUICEWAY_NATS_URL": nats_server.url,
        "SLUICEWAY_NAMESPACE": namespace,
        "SLUICEWAY_READY_FILE": str(ready),
        "SLUICEWAY_WORKER_HEARTBEAT_S": "0.5",
        "SLUICEWAY_INSTANCE": "pgerr",
        "PGERR_LIMITED_URL": roles["limited"],
        "PGERR_NOSEL_URL": roles["nosel"],
        "PYTHONPATH": str(ROOT),
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sluiceway.worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await eventually(
            lambda: ready.exists() or proc.poll() is not None, timeout_s=30, what="worker ready"
        )
        assert proc.poll() is None, log_path.read_text()
        assert json.loads(ready.read_text())["service"] == "worker"
        yield log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, log_path.read_text()


def _task(run_id: str, url_env: str, dest: Path) -> ev.ChunkTask:
    spec = _spec(
        source=ev.SourceSpec(engine="postgres", url_env=url_env),
        mode="chunked",
        format="parquet",
        compression="zstd",
        destination=str(dest),
        max_attempts=3,
    )
    return ev.ChunkTask(
        run_id=run_id, plan_id="p1", spec=spec, range=_range(), schema=SCHEMA, chunk_count=1
    )


async def _of_kind(bus: Bus, run_id: str, kind: type) -> list:  # type: ignore[type-arg]
    return [e.body for _, e in await bus.history(run_id) if isinstance(e.body, kind)]


async def _queue_empty(bus: Bus) -> bool:
    """The task left the work queue: acked or terminated, so it is never delivered again."""
    info = await bus.js.consumer_info(bus.names.tasks_stream, "worker-chunks")
    stream = await bus.js.stream_info(bus.names.tasks_stream)
    return info.num_ack_pending == 0 and info.num_pending == 0 and stream.state.messages == 0


async def test_the_worker_retries_a_transient_error_and_completes_on_attempt_2(
    pg: LocalPostgres, roles: dict[str, str], bus: Bus, worker: Path, dest: Path
) -> None:
    run_id = "run-pgerr-transient"
    held = psycopg.connect(roles["limited"])  # attempt 1 finds the role's one slot taken
    try:
        await bus.publish_task(_task(run_id, "PGERR_LIMITED_URL", dest), f"{run_id}/task/0")
        (retry,) = await eventually(
            lambda: _of_kind(bus, run_id, ev.RetryAttempted), timeout_s=15, what="a retry"
        )
    finally:
        held.close()  # the slot frees before the backoff ends
    await eventually(
        lambda: not _backends(pg, f"usename = '{LIMITED}'"), timeout_s=5, what="slot freed"
    )
    (done,) = await eventually(
        lambda: _of_kind(bus, run_id, ev.ChunkCompleted), timeout_s=20, what="completion"
    )
    await eventually(lambda: _queue_empty(bus), timeout_s=10, what="task acked")

    history = [e for _, e in await bus.history(run_id)]
    assert [(e.kind, e.attempt) for e in history] == [
        ("chunk_started", 1),
        ("chunk_failed", 1),
        ("retry_attempted", 1),
        ("chunk_started", 2),
        ("file_written", 2),
        ("chunk_completed", 2),
    ]
    failed = history[1].body
    assert isinstance(failed, ev.ChunkFailed)
    assert failed.retryable and failed.attempt == 1
    assert "too_many_connections [53300" in failed.error, failed.error
    assert retry.attempt == 2 and retry.backoff_ms > 0 and retry.reason == failed.error
    assert (done.attempt, done.rows, done.source_rows, done.files) == (2, ROWS, ROWS, 1)
    assert not any(s in repr(e) for e in history for s in SECRETS)
    (written,) = await _of_kind(bus, run_id, ev.FileWritten)
    assert written.file_name.endswith("-a2.parquet")
    part = layout.run_dir(str(dest), "pgerr", run_id) / written.file_name
    assert pq.read_table(part).column("id").to_pylist() == list(range(1, ROWS + 1))


async def test_the_worker_fails_a_permanent_error_once_and_terminates_the_task(
    roles: dict[str, str], bus: Bus, worker: Path, dest: Path
) -> None:
    run_id = "run-pgerr-permanent"
    await bus.publish_task(_task(run_id, "PGERR_NOSEL_URL", dest), f"{run_id}/task/0")
    (failed,) = await eventually(
        lambda: _of_kind(bus, run_id, ev.ChunkFailed), timeout_s=15, what="a failure"
    )
    await eventually(lambda: _queue_empty(bus), timeout_s=10, what="task terminated")
    assert not failed.retryable and failed.attempt == 1
    assert "insufficient_privilege [42501]" in failed.error, failed.error
    assert not any(s in failed.error for s in SECRETS)
    info = await bus.js.consumer_info(bus.names.tasks_stream, "worker-chunks")
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == 1
    assert [e.kind for _, e in await bus.history(run_id)] == ["chunk_started", "chunk_failed"]
