"""Commit decisions and the manifest: given events / then decision, and byte-stable output."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sluiceway.committer.domain.decide import Commit, Fail, Finish, Nothing, decide
from sluiceway.committer.domain.gates import (
    FINGERPRINT_MISMATCH,
    PART_MISSING,
    PART_PATH_INVALID,
    SIZE_MISMATCH,
    count_ranges,
    mismatched_chunks,
    snapshot_reconciliation,
    validate_parts,
)
from sluiceway.committer.domain.manifest import build_manifest, serialize
from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.common.domain.run import fold

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUN = "20260301T120000Z-aabbccdd"
SPEC = ev.ExportSpec(
    name="orders",
    source=ev.SourceSpec(engine="sqlite", path="/data/shop.db"),
    table="orders",
    mode="chunked",
    chunk_column="id",
    chunk_size=10,
    format="parquet",
    compression="zstd",
    destination="/dest",
)
PLAN = ev.PlanResolved(
    plan_id="plan-1",
    strategy="chunked",
    chunks=(
        ev.ChunkRange(0, "1", "11"),
        ev.ChunkRange(1, "11", "20", end_inclusive=True),
    ),
    format="parquet",
    compression="zstd",
    schema=(ev.SchemaField("id", "int64", False),),
    schema_fingerprint="xxh3:0123456789abcdef",
    chunk_column="id",
    key_low="1",
    key_high="20",
    source_engine="sqlite",
    source_table="orders",
)

_clock = iter(range(10_000))


def _e(body: ev.Body) -> ev.RunEvent:
    return ev.RunEvent(
        event_id(RUN, body), RUN, "orders", T0 + timedelta(seconds=next(_clock)), body
    )


def fw(chunk: int, attempt: int = 1, part: int = 0, rows: int = 10) -> ev.FileWritten:
    return ev.FileWritten(
        file_name=f"part-{chunk:05d}-{part:04d}-a{attempt}.parquet",
        rows=rows,
        bytes=100 + chunk,
        part_index=part,
        chunk_index=chunk,
        attempt=attempt,
        content_fingerprint=f"xxh3:{chunk:016x}",
    )


def started(chunk: int, attempt: int = 1) -> ev.ChunkStarted:
    return ev.ChunkStarted(chunk_index=chunk, attempt=attempt)


def done(chunk: int, attempt: int = 1, rows: int = 10) -> ev.ChunkCompleted:
    return ev.ChunkCompleted(chunk_index=chunk, rows=rows, files=1, attempt=attempt)


PLANNED = [ev.RunRequested(spec=SPEC), PLAN]
CHUNK0 = [started(0), fw(0), done(0)]
CHUNK1 = [started(1), fw(1), done(1)]
BOTH = PLANNED + CHUNK0 + CHUNK1


def state_of(bodies: list[ev.Body]):  # type: ignore[no-untyped-def]
    return fold([_e(b) for b in bodies], RUN)


@pytest.mark.parametrize(
    ("bodies", "expected"),
    [
        pytest.param([], Nothing, id="unknown-run"),
        pytest.param(PLANNED[:1], Nothing, id="not-planned"),
        pytest.param(PLANNED + CHUNK0 + [started(1)], Nothing, id="waits-for-every-chunk"),
        pytest.param(
            PLANNED + CHUNK0 + [started(1), ev.ChunkFailed(1, "timeout", 1, retryable=True)],
            Nothing,
            id="a-retryable-failure-waits",
        ),
        pytest.param(
            PLANNED + CHUNK0 + [started(1), ev.ChunkFailed(1, "disk full", 1, retryable=False)],
            Fail,
            id="fails-on-a-final-chunk-failure",
        ),
        pytest.param(BOTH, Commit, id="commits-when-every-chunk-completed"),
        pytest.param(
            [*BOTH, ev.ValidationResult(passed=True), ev.ReconciliationResult(20, 20, True)],
            Commit,
            id="commit-resumes-after-the-gates",
        ),
        pytest.param(
            [*BOTH, ev.ValidationResult(False, (ev.ValidationFailure(PART_MISSING, "p", "x"),))],
            Fail,
            id="a-failed-validation-in-the-log-fails",
        ),
        pytest.param(
            [*BOTH, ev.ValidationResult(True), ev.ReconciliationResult(21, 20, False)],
            Fail,
            id="a-reconciliation-mismatch-fails",
        ),
        pytest.param(
            [*BOTH, ev.ManifestCommitted(manifest_uri="file:///m", row_count=20)],
            Finish,
            id="finish-after-a-crash-between-manifest-and-completion",
        ),
        pytest.param(
            [*BOTH, ev.ManifestCommitted(), ev.RunCompleted(ev.RunStatus.SUCCEEDED)],
            Nothing,
            id="nothing-for-a-succeeded-run",
        ),
        pytest.param(
            [*PLANNED, ev.RunCompleted(ev.RunStatus.CANCELED)], Nothing, id="nothing-for-canceled"
        ),
        pytest.param(
            [*BOTH, ev.CancelRequested(reason="stop")],
            Nothing,
            id="no-commit-once-a-cancel-is-requested",
        ),
        pytest.param(
            [*BOTH, ev.ManifestCommitted(row_count=20), ev.CancelRequested(reason="late")],
            Finish,
            id="a-cancel-after-the-manifest-is-too-late",
        ),
        pytest.param(
            [*PLANNED, ev.RunCompleted(ev.RunStatus.FAILED)], Nothing, id="nothing-for-failed"
        ),
    ],
)
def test_commit_decision(bodies: list[ev.Body], expected: type) -> None:
    assert isinstance(decide(state_of(bodies)), expected)


def test_a_final_chunk_failure_names_the_chunk_and_its_error() -> None:
    state = state_of([*PLANNED, started(1), ev.ChunkFailed(1, "disk full", 3, retryable=False)])
    decision = decide(state)
    assert isinstance(decision, Fail)
    assert decision.error_message == "chunk 1 failed: disk full"


def test_the_manifest_lists_only_the_winning_attempts_files() -> None:
    # chunk 0 ran twice (a redelivery): attempt 2 completed first and wins
    bodies = [
        *PLANNED,
        started(0, 1),
        started(0, 2),
        fw(0, 2),
        fw(0, 1, rows=99),
        done(0, 2),
        fw(0, 1, part=1),
        done(0, 1),  # late facts of the loser: fenced off
        *CHUNK1,
    ]
    state = state_of(bodies)
    assert isinstance(decide(state), Commit)
    manifest = build_manifest(state)
    assert [(p["chunk_index"], p["attempt"]) for p in manifest["parts"]] == [(0, 2), (1, 1)]
    assert manifest["row_count"] == 20


def test_manifest_is_byte_stable_and_its_totals_are_the_sums_of_its_parts() -> None:
    bodies = [
        *PLANNED,
        started(0),
        fw(0),
        fw(0, part=1, rows=5),
        done(0, rows=15),
        *CHUNK1,
        ev.ValidationResult(True),
        ev.ReconciliationResult(25, 25, True),
    ]
    events = [_e(b) for b in bodies]
    first = serialize(build_manifest(fold(events, RUN)))
    second = serialize(build_manifest(fold(events, RUN)))
    assert first == second
    doc = json.loads(first)
    assert doc["row_count"] == sum(p["rows"] for p in doc["parts"]) == 25
    assert doc["part_count"] == len(doc["parts"]) == 3
    assert set(doc) == {
        "manifest_version",
        "run_id",
        "export_name",
        "status",
        "started_at",
        "finished_at",
        "source",
        "destination",
        "format",
        "compression",
        "schema",
        "schema_fingerprint",
        "row_count",
        "part_count",
        "parts",
        "plan_id",
    }
    assert doc["source"] == {
        "engine": "sqlite",
        "table": "orders",
        "strategy": "chunked",
        "cursor_column": "id",
        "cursor_low": "1",
        "cursor_high": "20",
        "source_row_count": 25,
    }
    assert doc["schema"] == [{"name": "id", "type": "int64", "nullable": False}]
    assert doc["started_at"] == events[0].occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert doc["finished_at"] == events[-3].occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert doc["parts"][1]["path"] == "part-00000-0001-a1.parquet"
    assert (
        first.endswith(b"\n") and json.dumps(doc, sort_keys=True, indent=2) + "\n" == first.decode()
    )


def test_validation_reports_stable_codes() -> None:
    files = [fw(0), fw(1), fw(2), fw(3), ev.FileWritten(file_name="../escape.parquet")]
    observed = {
        fw(0).file_name: (fw(0).content_fingerprint, fw(0).bytes),
        fw(1).file_name: None,
        fw(2).file_name: (fw(2).content_fingerprint, 1),
        fw(3).file_name: ("xxh3:ffffffffffffffff", fw(3).bytes),
    }
    result = validate_parts(files, observed)
    assert not result.passed
    assert [f.code for f in result.failures] == [
        PART_MISSING,
        SIZE_MISMATCH,
        FINGERPRINT_MISMATCH,
        PART_PATH_INVALID,
    ]
    assert validate_parts(files[:1], observed).passed


def test_reconciliation_counts_the_key_span_and_the_null_chunk() -> None:
    with_nulls = ev.PlanResolved(
        strategy="chunked",
        key_low="1",
        key_high="9",
        chunks=(ev.ChunkRange(0, "1", "9", True), ev.ChunkRange(1, null_keys=True)),
    )
    assert count_ranges(with_nulls) == (
        ev.ChunkRange(start_key="1", end_key="9", end_inclusive=True),
        ev.ChunkRange(1, null_keys=True),
    )
    assert count_ranges(ev.PlanResolved(strategy="full", chunks=(ev.ChunkRange(),))) == (None,)


def _counted(chunk: int, rows: int, source_rows: int) -> ev.ChunkCompleted:
    return ev.ChunkCompleted(
        chunk_index=chunk,
        rows=rows,
        files=1,
        attempt=1,
        source_rows=source_rows,
        source_counted=True,
    )


def test_snapshot_counts_reconcile_without_a_source_scan() -> None:
    state = state_of(
        [*PLANNED, started(0), fw(0), _counted(0, 10, 10), started(1), fw(1), _counted(1, 10, 10)]
    )
    assert snapshot_reconciliation(state) == ev.ReconciliationResult(20, 20, True)


def test_a_chunk_whose_rows_differ_from_its_snapshot_count_fails_by_name() -> None:
    # totals agree (+1/-1) but each chunk is checked on its own
    state = state_of(
        [
            *PLANNED,
            started(0),
            fw(0, rows=10),
            _counted(0, 10, 11),
            started(1),
            fw(1, rows=10),
            _counted(1, 10, 9),
        ]
    )
    result = snapshot_reconciliation(state)
    assert result is not None and not result.matched
    assert mismatched_chunks(state) == [0, 1]
    state = state_of(
        [
            *PLANNED,
            started(0),
            fw(0),
            _counted(0, 10, 11),
            *CHUNK1,
            ev.ReconciliationResult(21, 20, False),
        ]
    )
    decision = decide(state)
    assert isinstance(decision, Fail) and "(chunks 0 differ)" in decision.error_message


def test_without_every_snapshot_count_the_committer_counts_at_the_source() -> None:
    state = state_of([*PLANNED, started(0), fw(0), _counted(0, 10, 10), *CHUNK1])
    assert snapshot_reconciliation(state) is None
