"""The summary card, JSON output, event lines and progress, from protobuf messages."""

from __future__ import annotations

import io
import json

from rich.console import Console

from sluiceway.cli import render
from sluiceway.v1 import events_pb2, tracker_pb2


def summary(**kw: object) -> tracker_pb2.RunSummary:
    base: dict[str, object] = dict(
        run_id="r-123",
        export_name="orders",
        status=events_pb2.RUN_STATUS_SUCCEEDED,
        total_rows=1_000_000,
        files_produced=10,
        files_committed=10,
        bytes_written=52_428_800,
        duration_ms=20_000,
        peak_rss_mb=187.25,
        retries=1,
        validated=True,
        reconciled=True,
        source_count=1_000_000,
        manifest_uri="/d/orders/runs/r-123/manifest.json",
        chunks_total=10,
        chunks_completed=10,
        format="parquet",
        compression="zstd",
        mode="chunked",
    )
    base.update(kw)
    return tracker_pb2.RunSummary(**base)  # type: ignore[arg-type]


def test_card_has_every_headline_field() -> None:
    rows = dict(render.summary_rows(summary()))
    assert rows["status"] == "SUCCEEDED"
    assert rows["rows"] == "1,000,000"
    assert rows["files"] == "10"
    assert rows["bytes"] == "50.0 MiB"
    assert rows["duration"] == "20.0s"
    assert rows["rows/s"] == "50,000"
    assert rows["peak RSS"] == "187.2 MB"
    assert rows["retries"] == "1"
    assert rows["validated"] == "yes"
    assert rows["reconciled"].startswith("yes")
    assert rows["manifest"] == "/d/orders/runs/r-123/manifest.json"
    assert "error" not in rows and "skipped" not in rows


def test_card_shows_error_and_skip_reason() -> None:
    failed = dict(
        render.summary_rows(
            summary(
                status=events_pb2.RUN_STATUS_FAILED, error_message="chunk 3: boom", validated=False
            )
        )
    )
    assert failed["status"] == "FAILED" and failed["error"] == "chunk 3: boom"
    assert failed["validated"] == "no"
    skipped = dict(
        render.summary_rows(
            summary(status=events_pb2.RUN_STATUS_SKIPPED, skip_reason="no new rows", duration_ms=0)
        )
    )
    assert skipped["skipped"] == "no new rows" and skipped["rows/s"] == "0"


def test_card_prints_plainly_without_a_terminal() -> None:
    buf = io.StringIO()
    render.print_card(summary(), Console(file=buf, force_terminal=False, width=100))
    text = buf.getvalue()
    assert "status" in text and "SUCCEEDED" in text and "1,000,000" in text
    assert "\x1b[" not in text


def test_card_renders_as_a_panel_on_a_terminal() -> None:
    buf = io.StringIO()
    render.print_card(summary(), Console(file=buf, force_terminal=True, width=100))
    assert "run SUCCEEDED" in buf.getvalue()


def test_json_uses_proto_field_names() -> None:
    data = json.loads(render.summary_json(summary()))
    assert data["status"] == "RUN_STATUS_SUCCEEDED"
    assert data["total_rows"] == "1000000" and data["run_id"] == "r-123"


def test_event_lines_are_short_and_one_line() -> None:
    ev = events_pb2.RunEvent(
        run_id="r",
        chunk_failed=events_pb2.ChunkFailed(chunk_index=3, error="a\nb", attempt=2, retryable=True),
    )
    ev.occurred_at.FromSeconds(0)
    line = render.event_line(tracker_pb2.StoredEvent(seq=42, kind="chunk_failed", event=ev))
    assert "\n" not in line
    assert line.split()[:3] == ["42", "00:00:00.000", "chunk_failed"]
    assert "chunk 3 attempt 2 (will retry): a b" in line


def test_progress_counts_each_chunk_once() -> None:
    buf = io.StringIO()
    p = render.RunProgress("r", Console(file=buf, force_terminal=False), every_s=0, out=buf)

    def stored(seq: int, **body: object) -> tracker_pb2.StoredEvent:
        return tracker_pb2.StoredEvent(seq=seq, event=events_pb2.RunEvent(**body))  # type: ignore[arg-type]

    chunks = [events_pb2.ChunkRange(index=i) for i in range(3)]
    with p:
        p.update(stored(1, plan_resolved=events_pb2.PlanResolved(chunks=chunks)))
        p.update(stored(2, chunk_completed=events_pb2.ChunkCompleted(chunk_index=0, rows=10)))
        p.update(stored(3, chunk_completed=events_pb2.ChunkCompleted(chunk_index=0, rows=10)))
        p.update(stored(4, chunk_completed=events_pb2.ChunkCompleted(chunk_index=2, rows=5)))
    assert (p.total, len(p.done), p.rows) == (3, 2, 15)
    assert buf.getvalue().splitlines()[-1] == "run r: running, chunks 2/3, rows 15"


def test_a_plan_says_when_every_chunk_reads_one_snapshot() -> None:
    from sluiceway.v1 import control_pb2

    resp = control_pb2.PlanRunResponse()
    resp.spec.name = "orders"
    resp.plan.strategy = "chunked"
    assert "snapshot" not in render.plan_text(resp)
    resp.spec.consistent_snapshot = True
    assert "one exported snapshot for every chunk" in render.plan_text(resp)
    event = events_pb2.RunEvent()
    event.plan_resolved.strategy = "chunked"
    event.plan_resolved.snapshot_id = "00000003-0000001B-1"
    assert render.event_message(event).endswith("snapshot 00000003-0000001B-1")
