"""The tracker's DuckDB projection: idempotent batches, anomalies, journal order, rebuilds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sluiceway.common import codec
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.tracker.adapters.projection import RawMessage, TrackerStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _event(run_id: str, body: ev.Body, i: int) -> ev.RunEvent:
    return ev.RunEvent(
        event_id=event_id(run_id, body),
        run_id=run_id,
        export_name="orders",
        occurred_at=T0 + timedelta(seconds=i),
        body=body,
    )


def run_history(run_id: str, *, complete: bool = True) -> list[ev.RunEvent]:
    spec = ev.ExportSpec(name="orders", mode="chunked", format="parquet", compression="zstd")
    bodies: list[ev.Body] = [
        ev.RunRequested(spec=spec, requested_by="test"),
        ev.PlanResolved(
            plan_id="p1",
            chunks=(ev.ChunkRange(index=0, end_key="10"), ev.ChunkRange(index=1, start_key="10")),
            format="parquet",
            compression="zstd",
        ),
    ]
    for c in (0, 1):
        bodies += [
            ev.ChunkStarted(chunk_index=c, attempt=1),
            ev.FileWritten(
                file_name=f"part-{c}-0.parquet", rows=10, bytes=100, chunk_index=c, attempt=1
            ),
            ev.ChunkCompleted(chunk_index=c, rows=10, files=1, attempt=1),
        ]
    if complete:
        bodies += [
            ev.ValidationResult(passed=True),
            ev.ReconciliationResult(source_count=20, exported_rows=20, matched=True),
            ev.ManifestCommitted(manifest_uri="file:///m.json", row_count=20, part_count=2),
            ev.RunCompleted(status=ev.RunStatus.SUCCEEDED, duration_ms=1234),
        ]
    return [_event(run_id, b, i) for i, b in enumerate(bodies)]


def raw(events: list[ev.RunEvent], first_seq: int = 1) -> list[RawMessage]:
    return [
        RawMessage(seq=first_seq + i, subject=f"t.runs.{e.run_id}.{e.kind}", data=codec.encode(e))
        for i, e in enumerate(events)
    ]


ALL_TABLES = (
    "runs",
    "chunks",
    "parts",
    "events",
    "quality_issues",
    "schema_changes",
    "anomalies",
    "projection_offset",
)


def snapshot(store: TrackerStore) -> dict[str, list[dict[str, object]]]:
    return {t: store.table(t) for t in ALL_TABLES}


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = TrackerStore(tmp_path / "db" / "tracker.duckdb")
    yield s
    s.close()


def test_applying_a_batch_twice_changes_nothing(store: TrackerStore) -> None:
    batch = raw(run_history("r1"))
    assert store.apply(batch) == len(batch)
    before = snapshot(store)
    assert store.apply(batch) == len(batch)
    assert snapshot(store) == before
    assert store.get_run("r1")["status"] == "SUCCEEDED"  # type: ignore[index]


def test_messages_at_or_below_the_offset_are_skipped(store: TrackerStore) -> None:
    batch = raw(run_history("r1"))
    store.apply(batch[:5])
    store.apply(batch[3:])  # overlaps seqs 4 and 5
    assert [row["seq"] for row in store.journal("r1")] == list(range(1, len(batch) + 1))
    assert store.offset() == len(batch)


def test_split_batches_give_the_same_read_model_as_one(tmp_path: Path) -> None:
    batch = raw(run_history("r1") + run_history("r2"))
    one = TrackerStore(tmp_path / "one.duckdb")
    one.apply(batch)
    many = TrackerStore(tmp_path / "many.duckdb")
    for i in range(0, len(batch), 3):
        many.apply(batch[i : i + 3])
    assert snapshot(one) == snapshot(many)


def test_journal_is_in_stream_order(store: TrackerStore) -> None:
    events = run_history("r1")
    store.apply(raw(events))
    journal = store.journal("r1")
    assert [j["kind"] for j in journal] == [e.kind for e in events]
    assert journal[0]["kind"] == "requested" and journal[-1]["kind"] == "completed"
    assert journal[-1]["message"] == "run succeeded"


def test_a_forbidden_event_is_recorded_as_an_anomaly(store: TrackerStore) -> None:
    events = run_history("r1")
    late = _event("r1", ev.ChunkCompleted(chunk_index=0, rows=5, files=1, attempt=2), 99)
    store.apply(raw([*events, late]))
    anomalies = store.anomalies("r1")
    assert len(anomalies) == 1
    assert anomalies[0]["seq"] == len(events) + 1
    assert anomalies[0]["kind"] == "chunk_completed"
    run = store.get_run("r1")
    assert run is not None and run["anomalies"] == 1 and run["total_rows"] == 20


def test_an_undecodable_message_is_an_anomaly_and_the_projection_goes_on(
    store: TrackerStore,
) -> None:
    events = run_history("r1")
    batch = raw(events[:3])
    batch.append(RawMessage(seq=4, subject="t.runs.r1.garbage", data=b"\xff\x00not protobuf"))
    batch += raw(events[3:], first_seq=5)
    store.apply(batch)
    assert [(a["seq"], a["kind"]) for a in store.anomalies()] == [(4, "garbage")]
    assert store.get_run("r1")["status"] == "SUCCEEDED"  # type: ignore[index]


def test_a_restart_resumes_the_fold_of_an_unfinished_run(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    events = run_history("r1")
    first = TrackerStore(path)
    first.apply(raw(events[:6]))
    first.close()
    second = TrackerStore(path)
    second.apply(raw(events[6:], first_seq=7))
    reference = TrackerStore(tmp_path / "ref.duckdb")
    reference.apply(raw(events))
    assert snapshot(second) == snapshot(reference)


def test_a_file_of_another_schema_is_emptied_and_rebuilt_from_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    events = run_history("r1")
    old = TrackerStore(path)
    old.apply(raw(events))
    # as a file written by a version whose tables differed
    old._con.execute("UPDATE projection_schema SET fingerprint = 'older'")
    old._con.execute("ALTER TABLE runs DROP COLUMN status")
    old.close()
    reopened = TrackerStore(path)
    assert reopened.offset() == 0 and reopened.table("runs") == []  # replayed from seq 1
    reopened.apply(raw(events))
    reference = TrackerStore(tmp_path / "ref.duckdb")
    reference.apply(raw(events))
    assert snapshot(reopened) == snapshot(reference)
    reopened.close()
    # the same version reopens its own file as it is
    again = TrackerStore(path)
    assert again.offset() == len(events)


def test_parts_of_a_losing_attempt_are_not_committed(store: TrackerStore) -> None:
    events = run_history("r1", complete=False)
    extra = [
        _event("r1", ev.ChunkStarted(chunk_index=0, attempt=2), 50),
    ]
    # attempt 2 of chunk 0 starts while attempt 1 runs; attempt 1 completes first
    events = [*events[:2], events[2], extra[0], *events[3:]]
    events.append(
        _event(
            "r1",
            ev.FileWritten(
                file_name="part-0-0.a2.parquet", rows=10, bytes=90, chunk_index=0, attempt=2
            ),
            60,
        )
    )
    store.apply(raw(events))
    parts = {p["file_name"]: p["committed"] for p in store.list_parts("r1")}
    assert parts["part-0-0.parquet"] is True
    assert len(store.anomalies("r1")) == 1  # the late file of attempt 2 is fenced off


def test_a_late_event_of_an_ended_run_replaces_its_rows(tmp_path: Path) -> None:
    events = run_history("r1")
    late = _event("r1", ev.ChunkCompleted(chunk_index=0, rows=5, files=1, attempt=2), 99)
    apart = TrackerStore(tmp_path / "apart.duckdb")
    apart.apply(raw(events))
    apart.apply(raw([late], first_seq=len(events) + 1))  # reaches the run after it ended
    together = TrackerStore(tmp_path / "together.duckdb")
    together.apply(raw([*events, late]))
    assert snapshot(apart) == snapshot(together)
    assert [r["run_id"] for r in apart.table("runs")] == ["r1"]  # replaced, not added
    assert apart.get_run("r1")["anomalies"] == 1  # type: ignore[index]


def test_runs_in_flight_are_read_from_the_fold_and_ended_runs_from_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.duckdb"
    done = run_history("r1")
    live = run_history("r2", complete=False)
    store = TrackerStore(path)
    store.apply(raw(done + live))

    # the file's per-run tables hold the ended run only; the journal holds both
    in_file = store._con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()
    assert in_file == [("r1",)]
    assert len(store.journal("r2")) == len(live)
    # every read sees both, the run in flight with its current state
    assert [r["run_id"] for r in store.list_runs()] == ["r2", "r1"]
    assert [r["run_id"] for r in store.list_runs(statuses=["RUNNING"])] == ["r2"]
    assert [r["run_id"] for r in store.list_runs(statuses=["SUCCEEDED"])] == ["r1"]
    run = store.get_run("r2")
    assert run is not None and run["status"] == "RUNNING" and run["chunks_completed"] == 2
    assert [c["status"] for c in store.list_chunks("r2")] == ["COMPLETED", "COMPLETED"]
    assert [p["file_name"] for p in store.list_parts("r2")] == [
        "part-0-0.parquet",
        "part-1-0.parquet",
    ]
    # typed as the file's rows: the same dict whether the run is read live or from the file
    live_row = store.get_run("r2")
    before = snapshot(store)
    store.close()

    reopened = TrackerStore(path)  # the fold of r2 is rebuilt from the journal in the file
    assert snapshot(reopened) == before
    assert reopened.get_run("r2") == live_row
    reopened.apply(raw(run_history("r2")[len(live) :], first_seq=len(done) + len(live) + 1))
    assert reopened.get_run("r2")["status"] == "SUCCEEDED"  # type: ignore[index]
    in_file = reopened._con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()
    assert in_file == [("r1",), ("r2",)]
