"""The real worker process against a real nats-server: parts on disk, facts in the log, acks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluiceway.common import fingerprint, layout
from sluiceway.common.bus import Bus
from sluiceway.common.domain import events as ev
from sluiceway.common.localnats import LocalNats
from sluiceway.common.sources.sqlite import SqliteSource
from tests.support.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(10,2), "
        "placed TIMESTAMP)"
    )
    con.executemany(
        "INSERT INTO orders VALUES (?,?,?,?)",
        [(i, f"o{i}", f"{i}.50", f"2024-01-01T00:00:{i % 60:02d}") for i in range(1, 251)],
    )
    con.commit()
    con.close()
    return path


@pytest.fixture
async def worker(nats_server: LocalNats, namespace: str, tmp_path: Path) -> AsyncIterator[Path]:
    ready = tmp_path / "worker.ready"
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "SLUICEWAY_NATS_URL": nats_server.url,
        "SLUICEWAY_NAMESPACE": namespace,
        "SLUICEWAY_READY_FILE": str(ready),
        "SLUICEWAY_WORKER_HEARTBEAT_S": "0.5",
        "SLUICEWAY_INSTANCE": "w1",
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


def _task(
    run_id: str,
    db: Path,
    dest: Path,
    index: int,
    start: str,
    end: str,
    table: str = "orders",
    fmt: str = "parquet",
) -> ev.ChunkTask:
    spec = ev.ExportSpec(
        name="orders",
        source=ev.SourceSpec(engine="sqlite", path=str(db)),
        table=table,
        mode="chunked",
        chunk_column="id",
        format=fmt,
        compression="zstd",
        destination=str(dest),
        batch_size=64,
        max_attempts=3,
        row_group_rows=100,
    )
    return ev.ChunkTask(
        run_id=run_id,
        plan_id="p1",
        spec=spec,
        range=ev.ChunkRange(index=index, start_key=start, end_key=end),
        chunk_count=2,
    )


async def _settled(bus: Bus) -> bool:
    info = await bus.js.consumer_info(bus.names.tasks_stream, "worker-chunks")
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_worker_writes_parts_and_records_them(
    bus: Bus, worker: Path, source_db: Path, dest: Path
) -> None:
    run_id = "run-ok"
    tasks = [
        _task(run_id, source_db, dest, 0, "1", "200"),
        _task(run_id, source_db, dest, 1, "200", ""),
    ]
    for t in tasks:
        await bus.publish_task(t, f"{run_id}/task/{t.range.index}")

    async def completed() -> list[ev.ChunkCompleted]:
        return [
            e.body for _, e in await bus.history(run_id) if isinstance(e.body, ev.ChunkCompleted)
        ]

    done = await eventually(lambda: _two(completed), timeout_s=60, what="two chunks completed")
    assert sorted((c.chunk_index, c.rows, c.files, c.attempt) for c in done) == [
        (0, 199, 1, 1),
        (1, 51, 1, 1),
    ]
    history = [e for _, e in await bus.history(run_id)]
    kinds = [e.kind for e in history]
    for index in (0, 1):
        mine = [e.kind for e in history if getattr(e.body, "chunk_index", None) == index]
        assert mine == ["chunk_started", "file_written", "chunk_completed"]
    assert kinds.count("file_written") == 2
    started = [e for e in history if e.kind == "chunk_started"]
    assert all(e.producer.service == "worker" and e.resources is not None for e in started)

    run_dir = layout.run_dir(str(dest), "orders", run_id)
    files = [e.body for e in history if isinstance(e.body, ev.FileWritten)]
    tables = []
    for f in sorted(files, key=lambda f: f.chunk_index):
        path = run_dir / f.file_name
        assert (f.content_fingerprint, f.bytes) == fingerprint.of_file(path)
        tables.append(pq.read_table(path))
    src = SqliteSource(str(source_db))
    spec = tasks[0].spec
    expected = pa.Table.from_batches(list(src.read(spec, None, ())))
    assert pa.concat_tables(tables).equals(expected)
    await eventually(lambda: _settled(bus), timeout_s=10, what="tasks acked")


async def _two(probe):  # type: ignore[no-untyped-def]
    found = await probe()
    return found if len(found) == 2 else None


async def test_a_missing_table_fails_the_chunk_for_good(
    bus: Bus, worker: Path, source_db: Path, dest: Path
) -> None:
    run_id = "run-missing"
    await bus.publish_task(
        _task(run_id, source_db, dest, 0, "1", "10", table="absent"), f"{run_id}/task/0"
    )

    async def failed() -> list[ev.ChunkFailed]:
        return [e.body for _, e in await bus.history(run_id) if isinstance(e.body, ev.ChunkFailed)]

    (f,) = await eventually(failed, timeout_s=30, what="chunk failed")
    assert not f.retryable and "absent" in f.error and f.attempt == 1
    await eventually(lambda: _settled(bus), timeout_s=10, what="task terminated")
    kinds = [e.kind for _, e in await bus.history(run_id)]
    assert kinds == ["chunk_started", "chunk_failed"]
    assert not layout.run_dir(str(dest), "orders", run_id).exists() or not any(
        layout.run_dir(str(dest), "orders", run_id).iterdir()
    )


async def test_a_poison_task_is_terminated_and_the_worker_keeps_going(
    bus: Bus, worker: Path, source_db: Path, dest: Path
) -> None:
    await bus.js.publish(bus.names.chunk_tasks, b"\xff\xff not a task")
    await eventually(lambda: _settled(bus), timeout_s=10, what="poison terminated")
    run_id = "run-after-poison"
    await bus.publish_task(_task(run_id, source_db, dest, 0, "1", "5", fmt="csv"), "t-after")

    async def completed() -> bool:
        return any(e.kind == "chunk_completed" for _, e in await bus.history(run_id))

    await eventually(completed, timeout_s=30, what="the next task completes")
