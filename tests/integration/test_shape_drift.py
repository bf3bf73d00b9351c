"""Shape drift through a real stack: when a string column's longest value grows
`shape_drift_ratio`-fold since the export's last commit, the run still commits and carries a
Warning naming the column; below the ratio, or with the check off, it does not."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.client import config_file
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2
from tests.support.sqlitedb import items_db
from tests.support.stackruns import client

pytestmark = pytest.mark.integration

CONFIG = """
version: 1
exports:
  - name: items
    source: {{engine: sqlite, path: items.db}}
    table: items
    destination: out
{extra}"""


@pytest.fixture
def stack(tmp_path: Path, nats_server: LocalNats, namespace: str) -> Iterator[Stack]:
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace}
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


def _shape_warnings(stack: Stack, config: Path) -> tuple[int, list[str]]:
    """Run the export; (its status, the messages of its shape warnings)."""
    with client(stack) as c:
        run = c.wait(c.submit(config_file(config, "items")).run_id, timeout_s=120)
        messages = [
            e.event.warning.message
            for e in c.iter_events(run.run_id)
            if e.kind == "warning" and e.event.warning.context == "shape"
        ]
    return run.status, messages


@pytest.mark.parametrize("ratio", [None, 0])
async def test_a_string_column_grown_tenfold_is_a_warning_unless_turned_off(
    stack: Stack, tmp_path: Path, ratio: int | None
) -> None:
    db = items_db(tmp_path / "items.db", 100)  # names "item 0" .. "item 99": at most 7 bytes
    config = tmp_path / "exports.yaml"
    extra = "" if ratio is None else f"    shape_drift_ratio: {ratio}\n"
    config.write_text(CONFIG.format(extra=extra))
    status, warnings = await asyncio.to_thread(_shape_warnings, stack, config)
    assert status == events_pb2.RUN_STATUS_SUCCEEDED and warnings == []

    with sqlite3.connect(db) as con:  # 69 bytes: under 10x, no warning yet
        con.execute("UPDATE items SET name = printf('%.69c', 'x') WHERE id = 5")
    status, warnings = await asyncio.to_thread(_shape_warnings, stack, config)
    assert status == events_pb2.RUN_STATUS_SUCCEEDED and warnings == []

    with sqlite3.connect(db) as con:  # 700 bytes: 10x the 69 of the last commit
        con.execute("UPDATE items SET name = printf('%.700c', 'y') WHERE id = 6")
    status, warnings = await asyncio.to_thread(_shape_warnings, stack, config)
    assert status == events_pb2.RUN_STATUS_SUCCEEDED
    if ratio == 0:
        assert warnings == []
    else:
        (message,) = warnings
        assert "column 'name'" in message and "700 bytes" in message and "the 69 of run" in message
