"""The committer against a real nats-server: synthetic histories, real part files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sluiceway.committer.main import serve
from sluiceway.common import fingerprint, layout
from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.common.localnats import LocalNats
from sluiceway.common.settings import Settings
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def committer(nats_server: LocalNats, namespace: str, tmp_path: Path) -> AsyncIterator[None]:
    ready = tmp_path / "committer.ready"
    settings = Settings.from_env(
        {
            "SLUICEWAY_NATS_URL": nats_server.url,
            "SLUICEWAY_NAMESPACE": namespace,
            "SLUICEWAY_READY_FILE": str(ready),
            "SLUICEWAY_INSTANCE": "committer-test",
        }
    )
    stop = asyncio.Event()
    # no source: the reconciliation count is the chunks' own tally
    task = asyncio.create_task(serve(settings, stop, source_factory=None))
    await eventually(lambda: ready.exists() or task.done(), timeout_s=20, what="committer ready")
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


def _event(run_id: str, body: ev.Body, t: int) -> ev.RunEvent:
    return ev.RunEvent(
        event_id(run_id, body),
        run_id,
        "orders",
        T0 + timedelta(seconds=t),
        body,
        producer=ev.Producer("test", "t"),
    )


def _planned(run_id: str, dest: Path, chunks: int) -> list[ev.Body]:
    spec = ev.ExportSpec(
        name="orders",
        source=ev.SourceSpec("sqlite", path="/x.db"),
        table="orders",
        mode="chunked",
        chunk_column="id",
        chunk_count=chunks,
        format="csv",
        compression="none",
        destination=str(dest),
    )
    plan = ev.PlanResolved(
        plan_id="plan-abc",
        strategy="chunked",
        format="csv",
        compression="none",
        chunks=tuple(
            ev.ChunkRange(i, str(10 * i), str(10 * i + 10), i == chunks - 1) for i in range(chunks)
        ),
        schema=(ev.SchemaField("id", "int64", False),),
        schema_fingerprint="xxh3:0000000000000001",
        chunk_column="id",
        key_low="0",
        key_high=str(10 * chunks),
        source_engine="sqlite",
        source_table="orders",
    )
    return [ev.RunRequested(spec=spec), plan]


def _chunk(run_id: str, dest: Path, index: int, rows: int, attempt: int = 1) -> list[ev.Body]:
    run_dir = layout.run_dir(str(dest), "orders", run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = layout.part_name(index, 0, attempt, "csv")
    (run_dir / name).write_text("id\n" + "".join(f"{10 * index + k}\n" for k in range(rows)))
    fp, size = fingerprint.of_file(run_dir / name)
    return [
        ev.ChunkStarted(chunk_index=index, attempt=attempt),
        ev.FileWritten(name, rows, size, 0, index, attempt, fp),
        ev.ChunkCompleted(chunk_index=index, rows=rows, files=1, attempt=attempt),
    ]


async def _append_all(bus: Bus, run_id: str, bodies: list[ev.Body]) -> None:
    for t, body in enumerate(bodies):
        await bus.append(_event(run_id, body, t))


async def _completion(bus: Bus, run_id: str) -> ev.RunCompleted:
    async def probe() -> ev.RunCompleted | None:
        for _, e in await bus.history(run_id):
            if isinstance(e.body, ev.RunCompleted):
                return e.body
        return None

    return await eventually(probe, timeout_s=30, what=f"RunCompleted of {run_id}")


@pytest.mark.usefixtures("committer")
async def test_a_completed_run_is_committed_once(bus: Bus, dest: Path) -> None:
    run_id = "20260301T120000Z-00000001"
    bodies = _planned(run_id, dest, 3)
    bodies += _chunk(run_id, dest, 0, 10) + _chunk(run_id, dest, 1, 10)
    await _append_all(bus, run_id, bodies)
    # the last chunk also ran twice: attempt 2 wins, attempt 1's file must stay out
    loser = _chunk(run_id, dest, 2, 4, attempt=1)[:2]
    winner = _chunk(run_id, dest, 2, 5, attempt=2)
    for t, body in enumerate([loser[0], winner[0], loser[1], *winner[1:]], start=len(bodies)):
        await bus.append(_event(run_id, body, t))

    done = await _completion(bus, run_id)
    assert done.status is ev.RunStatus.SUCCEEDED, done.error_message

    history = [e for _, e in await bus.history(run_id)]
    commits = [e.body for e in history if isinstance(e.body, ev.ManifestCommitted)]
    assert len(commits) == 1
    mpath = layout.manifest_path(str(dest), "orders", run_id)
    data = mpath.read_bytes()
    success = layout.success_path(str(dest), "orders", run_id).read_text()
    assert success == fingerprint.of_bytes(data) == commits[0].fingerprint
    assert commits[0].manifest_uri == mpath.resolve().as_uri()
    doc = json.loads(data)
    assert doc["run_id"] == run_id and doc["plan_id"] == "plan-abc"
    assert doc["row_count"] == 25 == commits[0].row_count
    assert [(p["chunk_index"], p["attempt"]) for p in doc["parts"]] == [(0, 1), (1, 1), (2, 2)]
    assert doc["source"]["source_row_count"] == 25
    assert layout.latest_pointer_path(str(dest), "orders").read_bytes() == data
    kinds = [e.kind for e in history]
    assert kinds.index("validation_result") < kinds.index("reconciliation_result")
    assert kinds.index("reconciliation_result") < kinds.index("manifest_committed")
    assert kinds[-1] == "completed"
    # the losing attempt's file was moved aside, not deleted
    quarantined = layout.quarantine_dir(str(dest), "orders", run_id)
    assert (quarantined / layout.part_name(2, 0, 1, "csv")).is_file()


@pytest.mark.usefixtures("committer")
async def test_a_final_chunk_failure_fails_the_run_without_a_manifest(bus: Bus, dest: Path) -> None:
    run_id = "20260301T120000Z-00000002"
    bodies = _planned(run_id, dest, 2) + _chunk(run_id, dest, 0, 10)
    bodies += [
        ev.ChunkStarted(chunk_index=1, attempt=3),
        ev.ChunkFailed(chunk_index=1, error="relation vanished", attempt=3, retryable=False),
    ]
    await _append_all(bus, run_id, bodies)
    done = await _completion(bus, run_id)
    assert done.status is ev.RunStatus.FAILED
    assert done.error_message == "chunk 1 failed: relation vanished"
    assert not layout.manifest_path(str(dest), "orders", run_id).exists()
    assert not layout.success_path(str(dest), "orders", run_id).exists()
    kinds = [e.kind for _, e in await bus.history(run_id)]
    assert "manifest_committed" not in kinds and kinds.count("completed") == 1


async def test_a_restarted_committer_finishes_a_half_committed_run(
    nats_server: LocalNats, namespace: str, bus: Bus, dest: Path, tmp_path: Path
) -> None:
    """A crash between ManifestCommitted and RunCompleted: the next process only finishes."""
    run_id = "20260301T120000Z-00000003"
    bodies = _planned(run_id, dest, 1) + _chunk(run_id, dest, 0, 3)
    bodies += [
        ev.ValidationResult(passed=True),
        ev.ReconciliationResult(3, 3, True),
        ev.ManifestCommitted(manifest_uri="file:///elsewhere", fingerprint="xxh3:1", row_count=3),
    ]
    await _append_all(bus, run_id, bodies)
    settings = Settings.from_env(
        {"SLUICEWAY_NATS_URL": nats_server.url, "SLUICEWAY_NAMESPACE": namespace}
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, source_factory=None))
    try:
        done = await _completion(bus, run_id)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)
    assert done.status is ev.RunStatus.SUCCEEDED
    kinds = [e.kind for _, e in await bus.history(run_id)]
    assert kinds.count("manifest_committed") == 1 and kinds[-1] == "completed"
