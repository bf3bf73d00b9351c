"""The pure RunState -> RunSummary mapping, as tables of given-events / then-fields."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import event_id
from sluiceway.common.domain.run import fold
from sluiceway.tracker.domain.summary import journal_message, summarize

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SPEC = ev.ExportSpec(
    name="orders", mode="chunked", format="csv", compression="gzip", batch_size=1000
)
PLAN = ev.PlanResolved(
    plan_id="p1",
    chunks=(ev.ChunkRange(index=0), ev.ChunkRange(index=1)),
    format="parquet",
    compression="zstd",
    batch_size=5000,
    batch_size_memory_mb=64,
    tuning_profile="wide",
    schema_fingerprint="xxh3:aa",
    row_estimate=42,
)


def _e(body: ev.Body, i: int, rss: float = 0.0) -> ev.RunEvent:
    return ev.RunEvent(
        event_id=event_id("r", body),
        run_id="r",
        export_name="orders",
        occurred_at=T0 + timedelta(seconds=i),
        body=body,
        resources=ev.ResourceUsage(rss_mb_after=rss) if rss else None,
    )


def _chunk(c: int, attempt: int = 1, rows: int = 10) -> list[ev.Body]:
    return [
        ev.ChunkStarted(chunk_index=c, attempt=attempt),
        ev.FileWritten(file_name=f"p{c}", rows=rows, bytes=7, chunk_index=c, attempt=attempt),
        ev.ChunkCompleted(chunk_index=c, rows=rows, files=1, attempt=attempt),
    ]


START: list[ev.Body] = [ev.RunRequested(spec=SPEC, options={"force": "yes"}), PLAN]
GATES_OK: list[ev.Body] = [
    ev.ValidationResult(passed=True),
    ev.ReconciliationResult(source_count=20, exported_rows=20, matched=True),
    ev.ManifestCommitted(manifest_uri="file:///m", fingerprint="xxh3:ff", part_count=2),
]

CASES: list[tuple[str, list[ev.Body], dict[str, object]]] = [
    (
        "requested only",
        [ev.RunRequested(spec=SPEC)],
        {
            "status": "REQUESTED",
            "format": "csv",
            "compression": "gzip",
            "batch_size": 1000,
            "mode": "chunked",
            "chunks_total": 0,
            "manifest_verification": "",
            "validated": False,
        },
    ),
    (
        "planned",
        START,
        {
            "status": "PLANNING",
            "format": "parquet",
            "compression": "zstd",
            "batch_size": 5000,
            "batch_size_memory_mb": 64,
            "tuning_profile": "wide",
            "plan_id": "p1",
            "row_estimate": 42,
            "schema_fingerprint": "xxh3:aa",
            "chunks_total": 2,
            "apply_force": True,
        },
    ),
    (
        "succeeded",
        START
        + _chunk(0)
        + _chunk(1)
        + GATES_OK
        + [ev.RunCompleted(status=ev.RunStatus.SUCCEEDED, duration_ms=999)],
        {
            "status": "SUCCEEDED",
            "total_rows": 20,
            "files_produced": 2,
            "bytes_written": 14,
            "files_committed": 2,
            "duration_ms": 999,
            "validated": True,
            "reconciled": True,
            "source_count": 20,
            "manifest_parts": 2,
            "manifest_verification": "verified",
            "manifest_uri": "file:///m",
            "manifest_fingerprint": "xxh3:ff",
            "chunks_completed": 2,
            "quality_passed": True,
            "anomalies": 0,
        },
    ),
    (
        "validation failed",
        START
        + _chunk(0)
        + _chunk(1)
        + [
            ev.ValidationResult(passed=False, failures=(ev.ValidationFailure(code="rows"),)),
            ev.RunCompleted(status=ev.RunStatus.FAILED, error_message="validation failed"),
        ],
        {
            "status": "FAILED",
            "validated": False,
            "manifest_verification": "failed",
            "error_message": "validation failed",
        },
    ),
    (
        "chunk failed with a retry",
        [
            *START,
            ev.ChunkStarted(chunk_index=0, attempt=1),
            ev.ChunkFailed(chunk_index=0, error="boom", attempt=1, retryable=True),
            ev.RetryAttempted(chunk_index=0, attempt=2),
            ev.ChunkStarted(chunk_index=0, attempt=2),
            ev.ChunkFailed(chunk_index=0, error="boom", attempt=2, retryable=False),
        ],
        {"status": "RUNNING", "retries": 1, "chunks_failed": 1, "chunks_completed": 0},
    ),
    (
        "skipped",
        [*START, ev.RunCompleted(status=ev.RunStatus.SKIPPED, skip_reason="no rows")],
        {"status": "SKIPPED", "skip_reason": "no rows", "duration_ms": 2000},
    ),
    (
        "quality and schema",
        START
        + _chunk(0)
        + _chunk(1)
        + [
            ev.QualityIssue(severity=ev.Severity.FAIL, rule="nulls"),
            ev.SchemaChanged(added=("c",)),
        ],
        {"status": "COMMITTING", "quality_passed": False, "schema_changed": True},
    ),
    (
        "a second attempt is fenced off",
        START + _chunk(0) + _chunk(0, attempt=2, rows=99),
        {"total_rows": 10, "files_produced": 1, "anomalies": 3},
    ),
]


@pytest.mark.parametrize(("name", "bodies", "expected"), CASES, ids=[c[0] for c in CASES])
def test_summary_fields(name: str, bodies: list[ev.Body], expected: dict[str, object]) -> None:
    summary = summarize(fold([_e(b, i) for i, b in enumerate(bodies)], run_id="r"), last_seq=7)
    actual = {k: getattr(summary, k) for k in expected}
    assert actual == expected
    assert summary.last_seq == 7


def test_peak_rss_is_the_maximum_over_events() -> None:
    events = [_e(START[0], 0, rss=50.0), _e(START[1], 1, rss=80.5)]
    assert summarize(fold(events)).peak_rss_mb == 80.5


def test_duration_falls_back_to_requested_until_last_event() -> None:
    events = [_e(b, i * 3) for i, b in enumerate(START + _chunk(0))]
    assert summarize(fold(events)).duration_ms == 12_000


def test_every_kind_has_a_journal_message_without_payloads() -> None:
    for cls in ev.KINDS:
        message = journal_message(_e(cls(), 0))
        assert message and "\n" not in message


DOMAIN = Path(__file__).parents[2] / "services/tracker/src/sluiceway/tracker/domain"
FORBIDDEN = {"asyncio", "nats", "grpc", "duckdb", "pyarrow", "google", "opentelemetry"}


def test_the_tracker_domain_imports_no_io() -> None:
    for path in DOMAIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
