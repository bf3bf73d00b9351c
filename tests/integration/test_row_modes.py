"""Incremental and time-window exports from PostgreSQL, through a real stack.

Incremental: the first run exports every row; the next only rows whose cursor is strictly after
the cursor the previous run committed; with nothing new the run ends SKIPPED with a reason and
writes nothing. Time window: the rows since midnight UTC `days_window` days ago.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from sluiceway.cli.stack import Stack, start_stack
from sluiceway.common import codec, layout
from sluiceway.common.bus import Bus
from sluiceway.common.config import load_text
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.v1 import control_pb2, control_pb2_grpc, events_pb2, tracker_pb2, tracker_pb2_grpc
from tests.support.eventually import eventually
from tests.support.faults import terminal_run
from tests.support.localpg import LocalPostgres

pytestmark = pytest.mark.integration

CREATE = """
DROP TABLE IF EXISTS changes;
CREATE TABLE changes (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, v text);
INSERT INTO changes
SELECT g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute', 'v' || g
FROM generate_series(1, 1000) AS g;
DROP TABLE IF EXISTS visits;
CREATE TABLE visits (id bigint PRIMARY KEY, at timestamptz NOT NULL, day date NOT NULL);
INSERT INTO visits
SELECT g, now() - g * interval '17 minutes', (now() - g * interval '17 minutes')::date
FROM generate_series(1, 1200) AS g;
"""
CONFIG = """
sources:
  shop: {{engine: postgres, url_env: ROWS_PG_URL}}
exports:
  - name: changes
    source: shop
    table: public.changes
    mode: incremental
    cursor_column: updated_at
    destination: {dest}
  - name: recent_visits
    source: shop
    table: public.visits
    mode: time_window
    time_column: at
    days_window: 3
    destination: {dest}
"""


@pytest.fixture(scope="module")
def tables(pg: LocalPostgres) -> LocalPostgres:
    pg.psql_admin(CREATE)
    return pg


@pytest.fixture
def stack(
    tmp_path: Path, nats_server: LocalNats, namespace: str, tables: LocalPostgres
) -> Iterator[Stack]:
    env = {**os.environ, "SLUICEWAY_NAMESPACE": namespace, "ROWS_PG_URL": tables.url}
    started = start_stack(tmp_path / "state", workers=1, nats_url=nats_server.url, env=env)
    yield started
    started.stop()


async def _run(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    dest: Path,
    export: str,
    url: str,
    text: str = "",
) -> tracker_pb2.RunSummary:
    """Resolve `export` of the config `text` (default CONFIG) as the CLI does, submit it, and
    wait for the run to end."""
    control, tracker = stubs
    spec = load_text(text or CONFIG.format(dest=dest), env={"ROWS_PG_URL": url})[export]
    message = events_pb2.ExportSpec()
    codec.to_message(spec, message)
    reply = await control.SubmitRun(control_pb2.SubmitRunRequest(spec=message))
    return await eventually(
        lambda: terminal_run(tracker, reply.run_id), timeout_s=90, what=f"{export} run ended"
    )


def _manifest(dest: Path, export: str, run_id: str) -> dict[str, object]:
    path = layout.manifest_path(str(dest), export, run_id)
    return json.loads(path.read_bytes())  # type: ignore[no-any-return]


def _ids(dest: Path, export: str, run_id: str) -> list[int]:
    run_dir = layout.run_dir(str(dest), export, run_id)
    rows = duckdb.sql(f"SELECT id FROM read_parquet('{run_dir}/part-*.parquet') ORDER BY id")
    return [r[0] for r in rows.fetchall()]


async def test_incremental_runs_export_only_rows_after_the_committed_cursor(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    tables: LocalPostgres,
    bus: Bus,
    dest: Path,
) -> None:
    # the first run: every row
    first = await _run(stubs, dest, "changes", tables.url)
    assert first.status == events_pb2.RUN_STATUS_SUCCEEDED, first.error_message
    assert _ids(dest, "changes", first.run_id) == list(range(1, 1001))
    committed = await bus.last_commit("changes")
    assert committed is not None and isinstance(committed.body, ev.ManifestCommitted)
    assert committed.run_id == first.run_id and committed.body.cursor_column == "updated_at"
    assert committed.body.cursor_low == ""
    assert datetime.fromisoformat(committed.body.cursor_high) == datetime(
        2026, 1, 1, 16, 40, tzinfo=UTC
    )  # id 1000's updated_at
    source = _manifest(dest, "changes", first.run_id)["source"]
    assert isinstance(source, dict) and source["cursor_column"] == "updated_at"

    # new rows, and old rows updated: exported once more; untouched rows are not
    tables.psql_admin(
        "INSERT INTO changes SELECT g, timestamptz '2026-02-01 00:00:00+00' + g * interval '1 s',"
        " 'new' FROM generate_series(1001, 1200) AS g;"
        "UPDATE changes SET updated_at = timestamptz '2026-03-01 00:00:00+00', v = 'changed'"
        " WHERE id IN (5, 50, 500)"
    )
    second = await _run(stubs, dest, "changes", tables.url)
    assert second.status == events_pb2.RUN_STATUS_SUCCEEDED, second.error_message
    assert _ids(dest, "changes", second.run_id) == [5, 50, 500, *range(1001, 1201)]
    assert second.total_rows == 203 and second.source_count == 203 and second.reconciled
    committed = await bus.last_commit("changes")
    assert committed is not None and isinstance(committed.body, ev.ManifestCommitted)
    assert datetime.fromisoformat(committed.body.cursor_low) == datetime(
        2026, 1, 1, 16, 40, tzinfo=UTC
    )
    assert datetime.fromisoformat(committed.body.cursor_high) == datetime(2026, 3, 1, tzinfo=UTC)

    # nothing new: SKIPPED with a reason, no manifest, the cursor and the latest pointer stay
    third = await _run(stubs, dest, "changes", tables.url)
    assert third.status == events_pb2.RUN_STATUS_SKIPPED
    assert "no new rows since cursor 'updated_at'" in third.skip_reason
    assert not layout.manifest_path(str(dest), "changes", third.run_id).exists()
    latest = json.loads(layout.latest_pointer_path(str(dest), "changes").read_bytes())
    assert latest["run_id"] == second.run_id
    still = await bus.last_commit("changes")
    assert still is not None and still.run_id == second.run_id
    history = [e.body for _, e in await bus.history(third.run_id)]
    assert not any(isinstance(b, ev.ChunkStarted | ev.ManifestCommitted) for b in history)


async def test_a_time_window_exports_the_rows_since_midnight_utc_n_days_ago(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    tables: LocalPostgres,
    dest: Path,
) -> None:
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=3)
    run = await _run(stubs, dest, "recent_visits", tables.url)
    assert run.status == events_pb2.RUN_STATUS_SUCCEEDED, run.error_message
    expected = tables.psql_admin(
        f"SELECT string_agg(id::text, ',' ORDER BY id) FROM visits "
        f"WHERE at >= '{start.isoformat()}'::timestamptz"
    ).strip()
    got = _ids(dest, "recent_visits", run.run_id)
    assert got and ",".join(map(str, got)) == expected
    assert len(got) < 1200  # the window left older rows out


DRIFT = """
sources:
  shop: {{engine: postgres, url_env: ROWS_PG_URL}}
exports:
  - name: drifty
    source: shop
    table: public.drifty
    mode: chunked
    chunk_column: id
    chunk_size: 50
    schema_policy: {policy}
    destination: {dest}
"""


async def test_schema_drift_fails_before_any_read_or_warns_and_goes_on(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    tables: LocalPostgres,
    bus: Bus,
    dest: Path,
) -> None:
    tables.psql_admin(
        "DROP TABLE IF EXISTS drifty;"
        "CREATE TABLE drifty (id bigint PRIMARY KEY, v text);"
        "INSERT INTO drifty SELECT g, 'v' || g FROM generate_series(1, 200) AS g"
    )

    async def run(policy: str) -> tracker_pb2.RunSummary:
        text = DRIFT.format(policy=policy, dest=dest)
        return await _run(stubs, dest, "drifty", tables.url, text)

    baseline = await run("fail")  # no committed run yet: no baseline, no drift
    assert baseline.status == events_pb2.RUN_STATUS_SUCCEEDED and not baseline.schema_changed
    tables.psql_admin("ALTER TABLE drifty ADD COLUMN note text; ALTER TABLE drifty DROP COLUMN v")

    failed = await run("fail")
    assert failed.status == events_pb2.RUN_STATUS_FAILED and failed.schema_changed
    assert failed.failure_cause == "schema_drift"
    assert "added note" in failed.error_message and "removed v" in failed.error_message
    history = [e.body for _, e in await bus.history(failed.run_id)]
    assert [type(b).__name__ for b in history] == ["RunRequested", "SchemaChanged", "RunCompleted"]
    assert not layout.run_dir(str(dest), "drifty", failed.run_id).exists()  # nothing written

    warned = await run("warn")
    assert warned.status == events_pb2.RUN_STATUS_SUCCEEDED and warned.schema_changed
    history = [e.body for _, e in await bus.history(warned.run_id)]
    assert any(isinstance(b, ev.Warning) and b.context == "schema" for b in history)
    assert warned.total_rows == 200


QUALITY = """
sources:
  shop: {{engine: postgres, url_env: ROWS_PG_URL}}
exports:
  - name: checked
    source: shop
    table: public.checked
    mode: chunked
    chunk_column: id
    chunk_size: 40
    quality: {rules}
    destination: {dest}
"""


async def test_quality_rules_warn_or_fail_the_run_before_the_manifest(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    tables: LocalPostgres,
    bus: Bus,
    dest: Path,
) -> None:
    tables.psql_admin(
        "DROP TABLE IF EXISTS checked;"
        "CREATE TABLE checked (id bigint PRIMARY KEY, email text, team int);"
        "INSERT INTO checked SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'u' || g END, g % 7"
        " FROM generate_series(1, 100) AS g"
    )

    async def run(rules: str) -> tracker_pb2.RunSummary:
        text = QUALITY.format(rules=rules, dest=dest)
        return await _run(stubs, dest, "checked", tables.url, text)

    # 10% NULL emails against a 5% limit, and a team column that repeats: warnings only
    warned = await run(
        "{null_ratio_max: {email: 0.05}, unique_columns: [id, team], on_violation: warn}"
    )
    assert warned.status == events_pb2.RUN_STATUS_SUCCEEDED, warned.error_message
    assert warned.quality_passed  # warnings do not fail the run
    issues = [
        e.body for _, e in await bus.history(warned.run_id) if isinstance(e.body, ev.QualityIssue)
    ]
    assert sorted((i.severity, i.rule) for i in issues) == [
        (ev.Severity.WARN, "null_ratio_max"),
        (ev.Severity.WARN, "unique_columns"),
    ]
    assert "'team': 93 repeated value(s)" in next(i.message for i in issues if "team" in i.message)
    assert layout.manifest_path(str(dest), "checked", warned.run_id).exists()

    # a failing rule: the run fails before the manifest, and the exit code says data (3)
    failed = await run("{row_count_min: 1000}")
    assert failed.status == events_pb2.RUN_STATUS_FAILED
    assert failed.failure_cause == "quality" and not failed.quality_passed
    assert "row_count_min" in failed.error_message
    assert not layout.manifest_path(str(dest), "checked", failed.run_id).exists()
    latest = json.loads(layout.latest_pointer_path(str(dest), "checked").read_bytes())
    assert latest["run_id"] == warned.run_id


CHUNKED_INCREMENTAL = """
sources:
  shop: {{engine: postgres, url_env: ROWS_PG_URL}}
exports:
  - name: chunky
    source: shop
    table: public.chunky
    mode: incremental
    cursor_column: updated_at
    chunk_column: id
    chunk_size: 50
    destination: {dest}
"""


async def test_an_incremental_run_can_split_its_new_rows_into_key_ranges(
    stubs: tuple[control_pb2_grpc.ControlStub, tracker_pb2_grpc.TrackerStub],
    tables: LocalPostgres,
    bus: Bus,
    dest: Path,
) -> None:
    tables.psql_admin(
        "DROP TABLE IF EXISTS chunky;"
        "CREATE TABLE chunky (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL);"
        "INSERT INTO chunky SELECT g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 s'"
        " FROM generate_series(1, 300) AS g"
    )

    async def run() -> tracker_pb2.RunSummary:
        text = CHUNKED_INCREMENTAL.format(dest=dest)
        return await _run(stubs, dest, "chunky", tables.url, text)

    async def chunks_of(run_id: str) -> list[ev.ChunkRange]:
        plan = next(
            e.body for _, e in await bus.history(run_id) if isinstance(e.body, ev.PlanResolved)
        )
        return list(plan.chunks)

    first = await run()
    assert first.status == events_pb2.RUN_STATUS_SUCCEEDED, first.error_message
    assert len(await chunks_of(first.run_id)) == 6 and first.total_rows == 300
    tables.psql_admin(
        "INSERT INTO chunky SELECT g, timestamptz '2026-02-01 00:00:00+00' + g * interval '1 s'"
        " FROM generate_series(301, 420) AS g"
    )
    second = await run()
    assert second.status == events_pb2.RUN_STATUS_SUCCEEDED, second.error_message
    # the key ranges cover the new rows' keys only: 301..420 in ranges of 50
    chunks = await chunks_of(second.run_id)
    assert (chunks[0].start_key, chunks[-1].end_key) == ("301", "420") and len(chunks) == 3
    assert _ids(dest, "chunky", second.run_id) == list(range(301, 421))
    assert second.reconciled and second.source_count == 120
