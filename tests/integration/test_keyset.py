"""chunk_by keys from PostgreSQL and MariaDB through a real stack: a composite primary key whose
leading column is skewed (one tenant holds most rows) and a uuid key are split into ranges of
equal rows, every row is exported once (an MD5 equal to the source's), and a worker SIGKILLed
in the middle of a range leaves the range to a later attempt alone."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import layout
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2
from tests.support.localmaria import LocalMariaDB
from tests.support.localpg import LocalPostgres
from tests.support.stackruns import MID_READ, killed_attempt, run_export, with_armed_worker_killed

pytestmark = pytest.mark.integration

ROWS = 50_000
CHUNK = 6_000  # 9 ranges: 8 of 6,000 rows and the rest

# tenant 't00' holds 80% of the rows, the others share the rest: integer ranges of the leading
# column could not balance it, ranges of the whole tuple do
PG_CREATE = f"""
DROP TABLE IF EXISTS pairs; DROP TABLE IF EXISTS tokens;
CREATE TABLE pairs (tenant varchar(8) NOT NULL, seq int NOT NULL, v text,
                    PRIMARY KEY (tenant, seq));
INSERT INTO pairs SELECT CASE WHEN g % 5 = 0 THEN 't' || lpad((g % 37)::text, 2, '0')
                              ELSE 't00' END, g, 'v''' || g
FROM generate_series(1, {ROWS}) AS g;
CREATE TABLE tokens (id uuid PRIMARY KEY, v int NOT NULL);
INSERT INTO tokens SELECT md5(g::text)::uuid, g FROM generate_series(1, {ROWS}) AS g;
"""
MY_CREATE = f"""
DROP TABLE IF EXISTS pairs; DROP TABLE IF EXISTS tokens;
CREATE TABLE pairs (tenant varchar(8) NOT NULL, seq int NOT NULL, v text,
                    PRIMARY KEY (tenant, seq));
INSERT INTO pairs SELECT IF(seq % 5 = 0, CONCAT('t', LPAD(seq % 37, 2, '0')), 't00'), seq,
  CONCAT('v''', seq) FROM seq_1_to_{ROWS};
CREATE TABLE tokens (id char(36) NOT NULL PRIMARY KEY, v int NOT NULL);
INSERT INTO tokens SELECT LOWER(INSERT(INSERT(INSERT(INSERT(MD5(seq), 9, 0, '-'), 14, 0, '-'),
  19, 0, '-'), 24, 0, '-')), seq FROM seq_1_to_{ROWS};
"""
SOURCE_ROWS = {
    "pairs": "SELECT CONCAT_WS('|', tenant, seq, v) FROM pairs ORDER BY tenant, seq",
    "tokens": "SELECT CONCAT_WS('|', id, v) FROM tokens ORDER BY id",
}
PARTS_ROWS = {
    "pairs": "SELECT string_agg(concat_ws('|', tenant, seq, v), chr(10) ORDER BY tenant, seq) "
    "FROM read_parquet(?)",
    "tokens": "SELECT string_agg(concat_ws('|', id::varchar, v), chr(10) ORDER BY id::varchar) "
    "FROM read_parquet(?)",
}

CONFIG = """
sources:
  db: {{engine: {engine}, url_env: KEYS_URL}}
exports:
  - name: pairs
    source: db
    table: {prefix}pairs
    mode: chunked
    chunk_by: keys
    chunk_size: {chunk}
    batch_size: 1000
    destination: {dest}
  - name: tokens
    source: db
    table: {prefix}tokens
    mode: chunked
    chunk_by: keys
    chunk_count: 7
    destination: {dest}
"""


@pytest.fixture(scope="module", params=["postgres", "mysql"])
def engine(request: pytest.FixtureRequest) -> tuple[str, str, object]:
    """(engine, URL, a function of a SELECT that returns its rows as text)."""
    if request.param == "postgres":
        pg: LocalPostgres = request.getfixturevalue("pg")
        pg.psql_admin(PG_CREATE)
        return "postgres", pg.url, pg.psql_admin
    maria: LocalMariaDB = request.getfixturevalue("maria")
    maria.sql_admin(MY_CREATE)
    return "mysql", maria.url, maria.sql_admin


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, engine: tuple[str, str, object]
) -> Iterator[Stack]:
    env = {
        **os.environ,
        "SLUICEWAY_NAMESPACE": namespace,
        "KEYS_URL": engine[1],
        "SLUICEWAY_WORKER_ACK_WAIT_S": "4",
        "SLUICEWAY_WORKER_HEARTBEAT_S": "1",
    }
    started = start_stack(
        tmp_path / "state", workers=2, nats_url=nats_server.url, env=env, instance_env=MID_READ
    )
    yield started
    started.stop()


async def test_key_ranges_split_any_key_into_equal_rows_and_survive_a_killed_worker(
    stack: Stack, tmp_path: Path, engine: tuple[str, str, object]
) -> None:
    name, _, admin = engine
    config = tmp_path / "keys.yaml"
    prefix = "public." if name == "postgres" else ""
    config.write_text(CONFIG.format(engine=name, prefix=prefix, chunk=CHUNK, dest=tmp_path / "out"))
    out = str(tmp_path / "out")

    pairs = await with_armed_worker_killed(stack, lambda: run_export(stack, config, "pairs"))
    tokens = await asyncio.to_thread(run_export, stack, config, "tokens")

    for export, run in (("pairs", pairs), ("tokens", tokens)):
        assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
        assert run.total_rows == ROWS and run.reconciled
        manifest = json.loads(layout.manifest_path(out, export, run.run_id).read_text())
        paths = [
            str(layout.run_dir(out, export, run.run_id) / p["path"]) for p in manifest["parts"]
        ]
        (lines,) = duckdb.execute(PARTS_ROWS[export], [paths]).fetchone()
        expected = admin(SOURCE_ROWS[export])  # type: ignore[operator]
        assert hashlib.md5(lines.encode()).hexdigest() == hashlib.md5(expected.encode()).hexdigest()

        # equal rows per range: every range but the last holds exactly its share
        rows = {}
        for part in manifest["parts"]:
            rows[part["chunk_index"]] = rows.get(part["chunk_index"], 0) + part["rows"]
        share = CHUNK if export == "pairs" else -(-ROWS // 7)
        assert [rows.get(i, 0) for i in range(len(rows))][:-1] == [share] * (len(rows) - 1)
        assert len(rows) == -(-ROWS // share)

    # the killed attempt lost: its range's parts are a later attempt's
    killed = await asyncio.to_thread(killed_attempt, stack, pairs.run_id)
    manifest = json.loads(layout.manifest_path(out, "pairs", pairs.run_id).read_text())
    mine = [p for p in manifest["parts"] if p["chunk_index"] == killed.chunk_index]
    assert mine and all(p["attempt"] > killed.attempt for p in mine)
