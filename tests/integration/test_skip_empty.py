"""`skip_empty` through a real stack: a run that finds no row ends SKIPPED and commits nothing,
so the export's previous commit (its manifest, `_SUCCESS` and the latest pointer) stays valid.
Without it, the same empty table commits a manifest with no parts."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import layout
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import events_pb2, tracker_pb2
from tests.support.sqlitedb import items_db
from tests.support.stackruns import run_export

pytestmark = pytest.mark.integration

CONFIG = """
version: 1
exports:
  - name: items
    source: {{engine: sqlite, path: items.db}}
    table: items
    mode: chunked
    chunk_column: id
    chunk_size: 250
    destination: out
    skip_empty: {skip_empty}
"""


@pytest.fixture
def stack(tmp_path: Path, nats_server: LocalNats, namespace: str) -> Iterator[Stack]:
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace}
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


def _run(stack: Stack, config: Path) -> tracker_pb2.RunSummary:
    return run_export(stack, config, "items", timeout_s=120)


def _empty(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("DELETE FROM items")
    con.commit()
    con.close()


@pytest.mark.parametrize("skip_empty", [True, False])
async def test_a_run_of_zero_rows_with_skip_empty_commits_nothing(
    stack: Stack, tmp_path: Path, skip_empty: bool
) -> None:
    db = items_db(tmp_path / "items.db", 1000)
    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG.format(skip_empty=str(skip_empty).lower()))
    out = str(tmp_path / "out")

    first = await asyncio.to_thread(_run, stack, config)
    assert first.status == events_pb2.RUN_STATUS_SUCCEEDED, first.error_message
    pointer = layout.latest_pointer_path(out, "items").read_bytes()
    success = layout.success_path(out, "items", first.run_id).read_bytes()

    _empty(db)
    second = await asyncio.to_thread(_run, stack, config)
    if not skip_empty:  # the empty table is exported: a manifest of no part, the new latest
        assert second.status == events_pb2.RUN_STATUS_SUCCEEDED, second.error_message
        assert (second.total_rows, second.manifest_parts) == (0, 0)
        assert layout.latest_pointer_path(out, "items").read_bytes() != pointer
        return
    assert second.status == events_pb2.RUN_STATUS_SKIPPED, second.error_message
    assert "skip_empty" in second.skip_reason and second.total_rows == 0
    assert second.reconciled and second.source_count == 0
    assert not layout.manifest_path(out, "items", second.run_id).exists()
    assert not layout.success_path(out, "items", second.run_id).exists()
    run_dir = layout.run_dir(out, "items", second.run_id)
    assert not run_dir.exists() or not any(p.is_file() for p in run_dir.rglob("*"))
    # the previous commit stays the export's latest, and still verifies
    assert layout.latest_pointer_path(out, "items").read_bytes() == pointer
    assert layout.success_path(out, "items", first.run_id).read_bytes() == success
