"""Chunk strategies against real sources: chunk_by_days over dates and timestamps (NULLs
included), the `table:` primary-key shortcut, and a query_file export through planner + worker."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluiceway.common import codec, layout
from sluiceway.common.bus import Bus
from sluiceway.common.config import load_file
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.events import ChunkRange, ExportSpec, SourceSpec
from sluiceway.common.sources import Source, SourceError
from sluiceway.common.sources.postgres import PostgresSource
from sluiceway.common.sources.sql import key_predicate
from sluiceway.common.sources.sqlite import SqliteSource
from sluiceway.planner.domain.chunks import PlanError
from sluiceway.planner.domain.plan import build_plan, tasks_for
from sluiceway.v1 import control_pb2 as cpb
from sluiceway.v1 import events_pb2 as evpb
from tests.integration.test_planner import Running, planner  # noqa: F401 (fixture)
from tests.integration.test_worker import worker  # noqa: F401 (fixture)
from tests.support.eventually import eventually
from tests.support.localpg import LocalPostgres

pytestmark = pytest.mark.integration

ROWS = 2_000


# ---- the key predicate: typed literals, re-rendered, never the text as it came ---------------


def test_postgres_day_keys_are_typed_literals() -> None:
    rng = ChunkRange(start_key="2026-01-01T00:00:00+00:00", end_key="2026-01-08T00:00:00+00:00")
    where, params = key_predicate("at", rng, lambda n: f"${n}", temporal=True)
    assert where == (
        " WHERE \"at\" >= '2026-01-01T00:00:00+00:00'::timestamptz"
        " AND \"at\" < '2026-01-08T00:00:00+00:00'::timestamptz"
    )
    assert params == []
    where, _ = key_predicate("d", ChunkRange(start_key="2026-01-01"), lambda n: "%s", temporal=True)
    assert where == " WHERE \"d\" >= '2026-01-01'::date"
    where, _ = key_predicate("t", ChunkRange(end_key="2026-01-01 00:00:00"), str, temporal=True)
    assert where == " WHERE \"t\" < '2026-01-01T00:00:00'::timestamp"


def test_sqlite_day_keys_are_bound_and_compared_as_instants() -> None:
    rng = ChunkRange(start_key="2026-01-01", end_key="2026-01-02")
    where, params = key_predicate("d", rng, lambda n: "?", temporal=True, dialect="sqlite")
    assert where.count("julianday(?)") == 2 and params == ["2026-01-01", "2026-01-02"]


@pytest.mark.parametrize(
    "key", ["2026-01-01'; DROP TABLE t; --", "2026-01-01T00:00:00+00:00' OR '1'='1", "now", "1"]
)
def test_a_key_that_is_not_a_date_never_reaches_the_sql(key: str) -> None:
    with pytest.raises(SourceError, match="not an ISO date or timestamp"):
        key_predicate("at", ChunkRange(start_key=key), lambda n: "?", temporal=True)


# ---- helpers -----------------------------------------------------------------------------------


def _union_of_chunks(source: Source, spec: ExportSpec, chunks: tuple[ChunkRange, ...]) -> pa.Table:
    """Every chunk read as the worker reads it (count and rows from one snapshot)."""
    tables = []
    for rng in chunks:
        count, batches = source.count_and_read(spec, rng, ())
        table = pa.Table.from_batches(list(batches))
        assert table.num_rows == count, rng
        tables.append(table)
    return pa.concat_tables(tables)


def _checksum(table: pa.Table) -> str:
    """Order-independent: an md5 over every row's values, rows sorted."""
    rows = sorted(repr(tuple(r.values())) for r in table.to_pylist())
    return hashlib.md5("\n".join(rows).encode()).hexdigest()


def _plan(source: Source, spec: ExportSpec) -> ev.PlanResolved:
    plan, _ = build_plan(spec, source.introspect(spec))
    return plan


def _assert_union_is_the_table(source: Source, spec: ExportSpec, days: int) -> ev.PlanResolved:
    plan = _plan(source, spec)
    keyed = [c for c in plan.chunks if not c.null_keys]
    assert len(keyed) >= 2 and any(c.null_keys for c in plan.chunks)
    union = _union_of_chunks(source, tasks_for("r", spec, plan)[0].spec, plan.chunks)
    whole = pa.Table.from_batches(list(source.read(spec, None, ())))
    assert union.num_rows == whole.num_rows == source.count(spec, None)
    assert len(set(union.column("id").to_pylist())) == union.num_rows  # nothing read twice
    assert _checksum(union) == _checksum(whole)
    return plan


# ---- SQLite --------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at TIMESTAMP, day DATE, v TEXT)")
    rows = []
    for i in range(1, ROWS + 1):
        hour, day = i % 24, 1 + i % 40
        month, dom = 1 + (day - 1) // 28, 1 + (day - 1) % 28
        # mixed writings of instants: naive (UTC), 'T' with an offset, Unix seconds, a NULL
        if i % 97 == 0:
            at = None
        elif i % 3 == 0:
            at = f"2026-{month:02d}-{dom:02d}T{hour:02d}:30:00+05:00"
        elif i % 3 == 1:
            at = f"2026-{month:02d}-{dom:02d} {hour:02d}:15:00.123456"
        else:
            at = 1767225600 + i * 1800  # 2026-01-01 + i half-hours
        rows.append((i, at, None if i % 89 == 0 else f"2026-{month:02d}-{dom:02d}", f"v{i}"))
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
    con.execute("CREATE TABLE pairs (a INTEGER, b INTEGER, PRIMARY KEY (a, b))")
    con.execute("CREATE TABLE coded (code TEXT PRIMARY KEY, n INTEGER)")
    con.commit()
    con.close()
    return path


def _sqlite_spec(db: Path, **kw: object) -> ExportSpec:
    base: dict[str, object] = dict(
        name="events",
        source=SourceSpec(engine="sqlite", path=str(db)),
        table="events",
        mode="chunked",
        destination="/unused",
    )
    return ExportSpec(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(("column", "days"), [("at", 3), ("day", 7), ("at", 1)])
def test_sqlite_chunk_by_days_reads_every_row_once(sqlite_db: Path, column: str, days: int) -> None:
    source = SqliteSource(str(sqlite_db))
    try:
        plan = _assert_union_is_the_table(
            source, _sqlite_spec(sqlite_db, chunk_column=column, chunk_by_days=days), days
        )
        # i=120 is 2026-01-01T00:30:00+05:00, i.e. 2025-12-31 19:30 UTC: ranges are UTC days
        expected = {"at": "2025-12-31T00:00:00+00:00", "day": "2026-01-01"}[column]
        assert plan.chunks[0].start_key == expected
    finally:
        source.close()


def test_sqlite_table_shortcut_picks_the_integer_primary_key(sqlite_db: Path) -> None:
    source = SqliteSource(str(sqlite_db))
    try:
        spec = _sqlite_spec(sqlite_db, chunk_count=4)
        plan = _plan(source, spec)
        assert plan.chunk_column == "id" and (plan.key_low, plan.key_high) == ("1", str(ROWS))
        union = _union_of_chunks(source, tasks_for("r", spec, plan)[0].spec, plan.chunks)
        assert sorted(union.column("id").to_pylist()) == list(range(1, ROWS + 1))
    finally:
        source.close()


@pytest.mark.parametrize(
    ("table", "found"),
    [("pairs", "composite primary key (a, b)"), ("coded", "primary key 'code' of type string")],
)
def test_sqlite_table_shortcut_without_a_usable_key_says_set_chunk_column(
    sqlite_db: Path, table: str, found: str
) -> None:
    source = SqliteSource(str(sqlite_db))
    try:
        with pytest.raises(PlanError) as err:
            _plan(source, _sqlite_spec(sqlite_db, table=table, chunk_size=10))
        assert "export 'events'" in str(err.value) and found in str(err.value)
        assert "set chunk_column" in str(err.value)
    finally:
        source.close()


# ---- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_events(pg: LocalPostgres) -> Iterator[str]:
    pg.psql_admin(
        "DROP TABLE IF EXISTS ch_events, ch_pairs, ch_nokey; "
        "CREATE TABLE ch_events (id bigint PRIMARY KEY, at timestamptz, day date, "
        "local timestamp, v text); "
        f"INSERT INTO ch_events SELECT g, "
        "CASE WHEN g % 97 = 0 THEN NULL "
        "ELSE timestamptz '2025-12-30 22:00:00-03' + g * interval '37 minutes 11.5 seconds' END, "
        "CASE WHEN g % 89 = 0 THEN NULL ELSE date '2026-01-01' + (g % 45) END, "
        "timestamp '2026-01-01' + g * interval '1 hour', 'v' || g "
        f"FROM generate_series(1, {ROWS}) g; "
        "CREATE TABLE ch_pairs (a int, b int, PRIMARY KEY (a, b)); "
        "CREATE TABLE ch_nokey (n int); "
        "ANALYZE ch_events;"
    )
    yield "ch_events"
    pg.psql_admin("DROP TABLE ch_events, ch_pairs, ch_nokey")


def _pg_spec(**kw: object) -> ExportSpec:
    base: dict[str, object] = dict(
        name="events",
        source=SourceSpec(engine="postgres", url_env="PG_URL"),
        table="ch_events",
        mode="chunked",
        destination="/unused",
    )
    return ExportSpec(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(("column", "days"), [("at", 2), ("day", 7), ("local", 10)])
def test_postgres_chunk_by_days_reads_every_row_once(
    pg: LocalPostgres, pg_events: str, column: str, days: int
) -> None:
    source = PostgresSource(pg.url)
    try:
        spec = _pg_spec(chunk_column=column, chunk_by_days=days)
        if column == "local":  # no NULLs in this one: the plan has no NULL-key chunk
            plan = _plan(source, spec)
            union = _union_of_chunks(source, spec, plan.chunks)
            assert union.num_rows == ROWS and not any(c.null_keys for c in plan.chunks)
            assert plan.chunks[0].start_key == "2026-01-01T00:00:00"
            return
        plan = _assert_union_is_the_table(source, spec, days)
        first = plan.chunks[0]
        # 2025-12-30 22:00 -03 is 2025-12-31 01:00 UTC: the ranges start at that UTC midnight
        expected = {"at": "2025-12-31T00:00:00+00:00", "day": "2026-01-01"}[column]
        assert first.start_key == expected
    finally:
        source.close()


def test_postgres_day_chunk_counts_match_sql(pg: LocalPostgres, pg_events: str) -> None:
    source = PostgresSource(pg.url)
    try:
        spec = _pg_spec(chunk_column="at", chunk_by_days=1)
        plan = _plan(source, spec)
        for rng in plan.chunks[:3]:
            expected = pg.psql_admin(
                "SELECT count(*) FROM ch_events WHERE at >= "
                f"'{rng.start_key}'::timestamptz AND at < '{rng.end_key}'::timestamptz"
            ).strip()
            assert source.count(spec, rng) == int(expected.split()[-1])
    finally:
        source.close()


def test_postgres_table_shortcut_picks_the_primary_key(pg: LocalPostgres, pg_events: str) -> None:
    source = PostgresSource(pg.url)
    try:
        spec = _pg_spec(chunk_size=500)
        plan = _plan(source, spec)
        assert plan.chunk_column == "id" and len(plan.chunks) == ROWS // 500
        union = _union_of_chunks(source, tasks_for("r", spec, plan)[0].spec, plan.chunks)
        assert sorted(union.column("id").to_pylist()) == list(range(1, ROWS + 1))
    finally:
        source.close()


@pytest.mark.parametrize(
    ("table", "found"),
    [("ch_pairs", "composite primary key (a, b)"), ("ch_nokey", "has no primary key")],
)
def test_postgres_table_shortcut_without_a_usable_key_says_set_chunk_column(
    pg: LocalPostgres, pg_events: str, table: str, found: str
) -> None:
    source = PostgresSource(pg.url)
    try:
        with pytest.raises(PlanError) as err:
            _plan(source, _pg_spec(table=table, chunk_size=10))
        assert "export 'events'" in str(err.value) and found in str(err.value)
        assert "set chunk_column" in str(err.value)
    finally:
        source.close()


def test_postgres_chunk_by_days_on_an_integer_column_is_a_planning_error(
    pg: LocalPostgres, pg_events: str
) -> None:
    source = PostgresSource(pg.url)
    try:
        with pytest.raises(PlanError, match="chunk_by_days needs a date or timestamp"):
            _plan(source, _pg_spec(chunk_column="id", chunk_by_days=1))
    finally:
        source.close()


# ---- query_file, end to end: Control.SubmitRun -> planner -> tasks -> worker process ----------


async def test_a_query_file_export_runs_through_planner_and_worker(
    planner: Running,  # noqa: F811
    worker: Path,  # noqa: F811
    bus: Bus,
    sqlite_db: Path,
    dest: Path,
    tmp_path: Path,
) -> None:
    conf = tmp_path / "conf"
    (conf / "sql").mkdir(parents=True)
    (conf / "sql" / "recent.sql").write_text(
        "-- events of January, every writing of the instant\n"
        "SELECT id, at, v FROM events WHERE id > 100\n",
        encoding="utf-8",
    )
    text = (
        "exports:\n"
        "  - name: recent\n"
        f"    source: {{engine: sqlite, path: {sqlite_db}}}\n"
        "    query_file: sql/recent.sql\n"
        "    mode: chunked\n"
        "    chunk_column: at\n"
        "    chunk_by_days: 5\n"
        f"    destination: {dest}\n"
    )
    # the planner never reads a file a client names: a submitted document is refused ...
    doc = cpb.ConfigDocument(text=text, base_dir=str(conf), file_name="exports.yaml")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await planner.stub.SubmitRun(cpb.SubmitRunRequest(config=doc))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "query_file" in (refused.value.details() or "")
    # ... and the client sends the export it resolved where the config is (as the CLI does)
    (conf / "exports.yaml").write_text(text, encoding="utf-8")
    spec = load_file(conf / "exports.yaml")["recent"]
    assert spec.query.startswith("-- events of January")
    message = evpb.ExportSpec()
    codec.to_message(spec, message)
    reply = await planner.stub.SubmitRun(cpb.SubmitRunRequest(spec=message))
    run_id = reply.run_id

    async def completed() -> tuple[ev.PlanResolved, list[ev.ChunkCompleted]] | None:
        history = [e.body for _, e in await bus.history(run_id)]
        plans = [b for b in history if isinstance(b, ev.PlanResolved)]
        failed = [b for b in history if isinstance(b, ev.RunCompleted | ev.ChunkFailed)]
        assert not failed, failed
        done = [b for b in history if isinstance(b, ev.ChunkCompleted)]
        return (plans[0], done) if plans and len(done) == len(plans[0].chunks) else None

    plan, done = await eventually(completed, timeout_s=90, what="every chunk completed")
    assert plan.query_fingerprint and plan.chunk_column == "at" and len(plan.chunks) > 2
    expected = (
        sqlite3.connect(sqlite_db)
        .execute("SELECT count(*), sum(id) FROM events WHERE id > 100")
        .fetchone()
    )
    assert sum(c.rows for c in done) == expected[0]
    run_dir = layout.run_dir(str(dest), "recent", run_id)
    ids = [
        i
        for part in sorted(run_dir.glob("part-*.parquet"))
        for i in pq.read_table(part).column("id").to_pylist()
    ]
    assert len(ids) == len(set(ids)) == expected[0] and sum(ids) == expected[1]
