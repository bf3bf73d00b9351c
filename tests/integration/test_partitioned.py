"""Hive-partitioned exports from PostgreSQL and MariaDB through a real stack: every row lands
once, in the folder of its value (raw values, with NULL and a value that needs escaping; days
of a timestamp), the manifest lists the partitions, `validate --depth full` passes, a reader
that detects Hive folders still sees the timestamp, and a worker SIGKILLed in the middle of
a chunk leaves no duplicate and no torn part behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import layout
from sluiceway.common.domain.partitioning import parse_directory
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2
from tests.support.localmaria import LocalMariaDB
from tests.support.localpg import LocalPostgres
from tests.support.stackruns import MID_READ, killed_attempt, run_export, with_armed_worker_killed

pytestmark = pytest.mark.integration

ROWS = 60_000
REGIONS = ("eu", "us", "ap", "a/b = c%")  # the last needs escaping; every 7th row is NULL

PG_CREATE = f"""
DROP TABLE IF EXISTS visits;
CREATE TABLE visits (id bigint PRIMARY KEY, region text, at timestamptz NOT NULL, n int);
INSERT INTO visits
SELECT g,
       CASE WHEN g % 7 = 0 THEN NULL ELSE (ARRAY{list(REGIONS)})[1 + g % 4] END,
       timestamptz '2026-03-01 00:00:00+00' + g * interval '17 seconds',
       g % 1000
FROM generate_series(1, {ROWS}) AS g;
"""
MY_CREATE = f"""
DROP TABLE IF EXISTS visits;
CREATE TABLE visits (id bigint PRIMARY KEY, region varchar(20), at timestamp(6) NOT NULL
  DEFAULT '2026-01-01 00:00:00', n int);
INSERT INTO visits
SELECT seq, IF(seq % 7 = 0, NULL, ELT(1 + seq % 4, {", ".join(repr(r) for r in REGIONS)})),
       TIMESTAMP'2026-03-01 00:00:00' + INTERVAL (seq * 17) SECOND, seq % 1000
FROM seq_1_to_{ROWS};
"""
# every row as one line, alike in the source and in DuckDB over the parts, hashed in id order
PG_ROWS = (
    "SELECT concat_ws('|', id, coalesce(region, '<null>'), "
    "(extract(epoch FROM at) * 1000000)::bigint, n) FROM visits ORDER BY id"
)
MY_ROWS = (
    "SET time_zone = '+00:00'; SELECT CONCAT_WS('|', id, COALESCE(region, '<null>'), "
    "CAST(UNIX_TIMESTAMP(at) * 1000000 AS UNSIGNED), n) FROM visits ORDER BY id"
)
DUCK_ROWS = (
    "SELECT string_agg(concat_ws('|', id, coalesce(region, '<null>'), epoch_us(\"at\"), n), "
    "chr(10) ORDER BY id) FROM read_parquet(?, hive_partitioning = false)"
)

CONFIG = """
sources:
  db: {{engine: {engine}, url_env: VISITS_URL}}
exports:
  - name: by_region
    source: db
    table: {table}
    mode: chunked
    chunk_column: id
    chunk_size: 10000
    destination: {dest}
    partition_by: region
    batch_size: 2000
    row_group_rows: 2000
  - name: by_day
    source: db
    table: {table}
    mode: chunked
    chunk_column: id
    chunk_size: 15000
    destination: {dest}
    partition_by: {{column: at, granularity: day}}
"""


@pytest.fixture(scope="module", params=["postgres", "mysql"])
def engine(request: pytest.FixtureRequest) -> tuple[str, str, object]:
    """(engine, URL, a function that returns every source row as text, in id order)."""
    if request.param == "postgres":
        pg: LocalPostgres = request.getfixturevalue("pg")
        pg.psql_admin(PG_CREATE)
        return "postgres", pg.url, lambda: pg.psql_admin(PG_ROWS)
    maria: LocalMariaDB = request.getfixturevalue("maria")
    maria.sql_admin(MY_CREATE)
    return "mysql", maria.url, lambda: maria.sql_admin(MY_ROWS)


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, engine: tuple[str, str, object]
) -> Iterator[Stack]:
    env = {
        **os.environ,
        "SLUICEWAY_NAMESPACE": namespace,
        "VISITS_URL": engine[1],
        "SLUICEWAY_WORKER_ACK_WAIT_S": "4",
        "SLUICEWAY_WORKER_HEARTBEAT_S": "1",
    }
    started = start_stack(
        tmp_path / "state", workers=2, nats_url=nats_server.url, env=env, instance_env=MID_READ
    )
    yield started
    started.stop()


def _config(tmp_path: Path, engine: str) -> Path:
    path = tmp_path / "visits.yaml"
    table = "public.visits" if engine == "postgres" else "visits"
    path.write_text(CONFIG.format(engine=engine, table=table, dest=tmp_path / "out"))
    return path


def _md5(lines: str) -> str:
    return hashlib.md5(lines.encode()).hexdigest()


async def test_partitioned_exports_put_every_row_once_in_the_folder_of_its_value(
    stack: Stack, tmp_path: Path, engine: tuple[str, str, object]
) -> None:
    name, _, source_rows = engine
    config = _config(tmp_path, name)
    expected = _md5(source_rows())  # type: ignore[operator]

    # by region, with worker-1 SIGKILLed after the first batch of its first chunk: the chunk
    # is read again by a later attempt, whose parts alone are committed
    by_region = await with_armed_worker_killed(
        stack, lambda: run_export(stack, config, "by_region")
    )
    assert by_region.status == events_pb2.RUN_STATUS_SUCCEEDED, by_region.error_message
    assert by_region.total_rows == ROWS

    out = str(tmp_path / "out")
    for export, run, key in (("by_region", by_region, "region"), ("by_day", None, "at_day")):
        if run is None:
            run = await asyncio.to_thread(run_export, stack, config, export)
            assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
        run_dir = layout.run_dir(out, export, run.run_id)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        paths = [run_dir / p["path"] for p in manifest["parts"]]

        # every row once, equal to the source
        (lines,) = duckdb.execute(DUCK_ROWS, [[str(p) for p in paths]]).fetchone()
        assert _md5(lines) == expected, export

        # each part in its value's folder, and every row of it of that value
        assert manifest["partition_by"]["key"] == key
        listed = {p["path"]: p for p in manifest["partitions"]}
        assert sum(p["rows"] for p in listed.values()) == ROWS
        for part in manifest["parts"]:
            parsed = parse_directory(part["path"])
            assert parsed is not None and parsed[0] == key, part["path"]
            table = pq.read_table(run_dir / part["path"])
            if key == "region":
                assert set(table.column("region").to_pylist()) == {parsed[1]}
            else:
                days = {v.strftime("%Y-%m-%d") for v in table.column("at").to_pylist()}
                assert days == {parsed[1]}
        if key == "region":
            assert {p["value"] for p in listed.values()} == {*REGIONS, None}
            assert "region=a%2Fb%20%3D%20c%25" in listed
            assert "region=__HIVE_DEFAULT_PARTITION__" in listed
        else:  # 60,000 rows 17 s apart from midnight: 12 days
            assert len(listed) == -(-ROWS * 17 // 86_400)
            # a reader that detects Hive folders still sees the timestamp, not the day
            (kind,) = duckdb.execute(
                'SELECT typeof("at") FROM read_parquet(?) LIMIT 1', [[str(paths[0])]]
            ).fetchone()
            assert kind.startswith("TIMESTAMP"), kind

        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "sluiceway.cli.main",
                "validate",
                str(run_dir),
                "--depth",
                "full",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert check.returncode == 0, check.stdout + check.stderr

    # the killed attempt lost: its chunk's parts in the manifest are a later attempt's
    killed = await asyncio.to_thread(killed_attempt, stack, by_region.run_id)
    manifest = json.loads(layout.manifest_path(out, "by_region", by_region.run_id).read_text())
    mine = [p for p in manifest["parts"] if p["chunk_index"] == killed.chunk_index]
    assert mine and all(p["attempt"] > killed.attempt for p in mine)
