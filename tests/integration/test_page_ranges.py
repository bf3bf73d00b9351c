"""chunk_by: pages on a real PostgreSQL: heap page ranges read by TID range scans, for tables
with no integer key (a uuid primary key, no primary key at all), through a real stack.

The stack test rewrites every row of the table, again and again, while the run plans and
reads: each rewrite moves every row to another page and bumps its generation. The export must
hold every row exactly once, all of one generation (one snapshot for every chunk), and equal
the table as of that generation, checksum for checksum.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest

from sluiceway.cli.render import plan_text
from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import codec, layout
from sluiceway.common.config import ConfigError, load_text
from sluiceway.common.domain.events import ExportSpec
from sluiceway.common.localnats import LocalNats
from sluiceway.common.sources import SourceError
from sluiceway.common.sources.postgres import PostgresSource
from sluiceway.common.sources.sql import page_predicate
from sluiceway.planner.domain.plan import build_plan
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2_grpc
from tests.support.checksums import checksum, pg_rows
from tests.support.eventually import eventually
from tests.support.faults import terminal_run
from tests.support.localpg import LocalPostgres

pytestmark = pytest.mark.integration

ROWS = 30_000
CREATE = f"""
DROP VIEW IF EXISTS page_view;
DROP TABLE IF EXISTS page_uuid;
DROP TABLE IF EXISTS page_nokey;
CREATE TABLE page_uuid (id uuid PRIMARY KEY, gen int NOT NULL, body text NOT NULL);
INSERT INTO page_uuid
SELECT md5(g::text)::uuid, 0, repeat(chr(65 + g % 26), 20 + g % 200)
FROM generate_series(1, {ROWS}) AS g;
-- no key at all, and every row twice: only the heap tells the copies apart
CREATE TABLE page_nokey (n int, label text);
INSERT INTO page_nokey SELECT g % 5000, 'label ' || (g % 5000)
FROM generate_series(1, 10000) AS g;
CREATE VIEW page_view AS SELECT * FROM page_nokey;
"""
CONFIG = """
sources:
  shop: {{engine: postgres, url_env: PAGES_PG_URL}}
exports:
  - name: {name}
    source: shop
    table: {table}
    mode: chunked
    chunk_by: pages
    chunk_count: {chunks}
    destination: {dest}
"""


@pytest.fixture(scope="module")
def tables(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(CREATE)
    pg.psql_admin("VACUUM ANALYZE page_uuid")
    pg.psql_admin("VACUUM ANALYZE page_nokey")
    return pg


def _spec(url: str, dest: Path, table: str, chunks: int, name: str = "pages") -> ExportSpec:
    text = CONFIG.format(name=name, table=table, chunks=chunks, dest=dest)
    return load_text(text, env={"PAGES_PG_URL": url})[name]


# ---- the source: plans, TID range scans, and what cannot be read by pages --------------------


def test_a_page_range_is_read_by_a_tid_range_scan(tables: LocalPostgres) -> None:
    from sluiceway.common.domain.events import ChunkRange

    where = page_predicate(ChunkRange(start_key="3", end_key="9"))
    assert where == " WHERE ctid >= '(3,0)'::tid AND ctid < '(9,0)'::tid"
    with psycopg.connect(tables.url) as con:
        plan = "\n".join(r[0] for r in con.execute(f"EXPLAIN SELECT * FROM page_uuid{where}"))
    assert "Tid Range Scan" in plan, plan


@pytest.mark.parametrize(
    ("table", "sql"),
    [
        ("public.page_uuid", "SELECT id::text, gen, body FROM page_uuid"),
        ("public.page_nokey", "SELECT n, label FROM page_nokey"),
    ],
    ids=["uuid-key", "no-key"],
)
def test_the_page_chunks_of_a_plan_hold_every_row_once(
    tables: LocalPostgres, tmp_path: Path, table: str, sql: str
) -> None:
    spec = _spec(tables.url, tmp_path, table, chunks=7)
    assert spec.consistent_snapshot, "page ranges turn consistent_snapshot on"
    source = PostgresSource(tables.url)
    try:
        intro = source.introspect(spec)
        plan, _ = build_plan(spec, intro)
        assert plan.chunk_by == "pages" and plan.chunk_column == ""
        assert intro.pages > 7 and plan.key_high == str(intro.pages)
        assert len(plan.chunks) == 7 and plan.chunks[-1].end_key == ""
        read: list[tuple[object, ...]] = []
        for rng in plan.chunks:
            count, batches = source.count_and_read(spec, rng, plan.schema)
            table_ = pa.Table.from_batches(list(batches))
            assert table_.num_rows == count > 0, rng
            read.extend(zip(*(c.to_pylist() for c in table_.columns), strict=True))
    finally:
        source.close()
    expected = pg_rows(tables.url, sql)
    if table.endswith("uuid"):
        read = [(str(i), g, b) for i, g, b in read]
    assert len(read) == len(expected)
    assert checksum(read) == checksum(expected)


def test_a_view_cannot_be_read_by_pages(tables: LocalPostgres, tmp_path: Path) -> None:
    source = PostgresSource(tables.url)
    try:
        with pytest.raises(SourceError, match="page_view is a view: chunk on a key instead"):
            source.introspect(_spec(tables.url, tmp_path, "public.page_view", chunks=2))
    finally:
        source.close()


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ("    consistent_snapshot: false\n", "consistent_snapshot", "needs consistent_snapshot"),
        ("    chunk_column: id\n", "chunk_column", "is for key ranges"),
        ("    chunk_mb: 8\n", "chunk_mb", "one of chunk_mb or chunk_count"),
    ],
)
def test_a_page_export_configured_wrong_names_the_field(
    tmp_path: Path, extra: str, field: str, message: str
) -> None:
    text = CONFIG.format(name="p", table="public.t", chunks=2, dest=tmp_path) + extra
    with pytest.raises(ConfigError, match=message) as caught:
        load_text(text, env={"PAGES_PG_URL": "postgresql://x"})
    assert caught.value.field == field


# ---- through the stack, while every row keeps moving ------------------------------------------


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, tables: LocalPostgres
) -> Iterator[Stack]:
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, "PAGES_PG_URL": tables.url}
    started = start_stack(tmp_path / "state", workers=2, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


class Rewriter:
    """Rewrites every row of page_uuid (gen + 1) in one transaction, over and over, until
    stopped or `max_rounds` (a bounded loop): each round moves every row to new pages."""

    def __init__(self, url: str, max_rounds: int = 400) -> None:
        self.url = url
        self.max_rounds = max_rounds
        self.rounds = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as con:
                while not self.stop.is_set() and self.rounds < self.max_rounds:
                    con.execute("UPDATE page_uuid SET gen = gen + 1")
                    self.rounds += 1
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def __enter__(self) -> Rewriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=30)


async def test_a_page_export_of_a_table_rewritten_throughout_is_one_consistent_cut(
    stack: Stack,
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    tables: LocalPostgres,
    dest: Path,
) -> None:
    control, tracker = stubs
    spec = _spec(tables.url, dest, "public.page_uuid", chunks=12, name="moving")
    message = events_pb2.ExportSpec()
    codec.to_message(spec, message)

    # what `sluiceway plan` shows for it
    preview = await control.PlanRun(control_pb2.PlanRunRequest(spec=message))
    text = plan_text(preview)
    assert "strategy: chunked by heap pages" in text and "pages [0, " in text, text
    assert text.count("pages [") == 12 and "end)" in text, text

    with Rewriter(tables.url) as rewriter:
        await eventually(lambda: rewriter.rounds >= 2, timeout_s=30, what="rewrites are going")
        rounds_at_submit = rewriter.rounds
        reply = await control.SubmitRun(control_pb2.SubmitRunRequest(spec=message))
        run = await eventually(
            lambda: terminal_run(tracker, reply.run_id), timeout_s=120, what="the run ends"
        )
        rounds_during_run = rewriter.rounds - rounds_at_submit
    assert rewriter.error is None, rewriter.error
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    assert rounds_during_run >= 1, "the table was rewritten while the run read it"

    run_dir = layout.run_dir(str(dest), "moving", reply.run_id)
    exported = duckdb.sql(
        f"SELECT id::varchar, gen, body FROM read_parquet('{run_dir}/part-*.parquet')"
    ).fetchall()
    gens = {g for _, g, _ in exported}
    assert len(gens) == 1, f"the chunks read different states of the table: {sorted(gens)}"
    assert len(exported) == ROWS == run.total_rows and run.reconciled
    assert len({i for i, _, _ in exported}) == ROWS, "a row was read twice"
    (gen,) = gens
    # the table as of that generation: every row's body is unchanged, gen is the snapshot's
    now = pg_rows(tables.url, "SELECT id::text, gen, body FROM page_uuid")
    shift = now[0][1] - gen
    assert shift > 0, "no row moved after the snapshot was taken"
    assert checksum(exported) == checksum([(i, g - shift, b) for i, g, b in now])
