"""A composite incremental cursor through a real stack (SQLite and MariaDB): with
`cursor_column: [updated_at, created_at]` a run reads the rows whose COALESCE(updated_at,
created_at) is after the committed cursor: rows never updated count by their creation, so new
rows and updated rows are both picked up, each once."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import layout
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2, tracker_pb2
from tests.support.localmaria import LocalMariaDB
from tests.support.stackruns import run_export

pytestmark = pytest.mark.integration

CONFIG = """
sources:
  db: {source}
exports:
  - name: changes
    source: db
    table: items
    mode: incremental
    cursor_column: [updated_at, created_at]
    destination: {dest}
"""
CREATE = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, "
    "created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NULL)"
)
ROWS = [(i, f"item {i}", f"2026-01-01 00:00:{i:02d}", None) for i in range(1, 21)]


@pytest.fixture(params=["sqlite", "mysql"])
def db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[str, dict[str, str], Callable[[str], object]]:
    """(the source's config, the stack's extra environment, a function running SQL on it)."""
    if request.param == "sqlite":
        path = tmp_path / "items.db"

        def run(sql: str) -> object:
            with sqlite3.connect(path) as con:
                con.executescript(sql)
            return None

        run(CREATE + ";")
        with sqlite3.connect(path) as con:
            con.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", ROWS)
        return f"{{engine: sqlite, path: {path}}}", {}, run
    maria: LocalMariaDB = request.getfixturevalue("maria")
    values = ", ".join(f"({i}, '{n}', '{c}', NULL)" for i, n, c, _ in ROWS)
    maria.sql_admin(
        f"DROP TABLE IF EXISTS items; {CREATE.replace('TEXT', 'varchar(40)')}; "
        f"INSERT INTO items VALUES {values};"
    )
    return "{engine: mysql, url_env: ITEMS_URL}", {"ITEMS_URL": maria.url}, maria.sql_admin


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, db: tuple[str, dict[str, str], object]
) -> Iterator[Stack]:
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, **db[1]}
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


def _run(stack: Stack, config: Path) -> tracker_pb2.RunSummary:
    return run_export(stack, config, "changes", timeout_s=120)


def _ids(out: Path, run: tracker_pb2.RunSummary) -> list[int]:
    manifest = json.loads(layout.manifest_path(str(out), "changes", run.run_id).read_text())
    run_dir = layout.run_dir(str(out), "changes", run.run_id)
    return sorted(
        i
        for p in manifest["parts"]
        for i in pq.read_table(run_dir / p["path"]).column("id").to_pylist()
    )


async def test_a_coalesced_cursor_reads_new_and_updated_rows_once(
    stack: Stack, tmp_path: Path, db: tuple[str, dict[str, str], Callable[[str], object]]
) -> None:
    source, _, sql = db
    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG.format(source=source, dest=tmp_path / "out"))
    out = tmp_path / "out"

    first = await asyncio.to_thread(_run, stack, config)
    assert first.status == events_pb2.RUN_STATUS_SUCCEEDED, first.error_message
    assert _ids(out, first) == list(range(1, 21))
    manifest = json.loads(layout.manifest_path(str(out), "changes", first.run_id).read_text())
    assert manifest["source"]["cursor_column"] == "coalesce(updated_at,created_at)"
    assert manifest["source"]["cursor_high"].startswith("2026-01-01")

    # row 3 updated, rows 21 and 22 created (never updated): all three are after the cursor
    sql(
        "UPDATE items SET updated_at = '2026-02-01 00:00:00' WHERE id = 3; "
        "INSERT INTO items VALUES (21, 'item 21', '2026-01-15 00:00:00', NULL), "
        "(22, 'item 22', '2026-01-16 00:00:00', NULL);"
    )
    second = await asyncio.to_thread(_run, stack, config)
    assert second.status == events_pb2.RUN_STATUS_SUCCEEDED, second.error_message
    assert _ids(out, second) == [3, 21, 22]

    third = await asyncio.to_thread(_run, stack, config)
    assert third.status == events_pb2.RUN_STATUS_SKIPPED
    assert "coalesce(updated_at,created_at)" in third.skip_reason
